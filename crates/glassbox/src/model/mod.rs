//! A loaded model: configuration, weights and tokenizer, and the one forward pass.

pub mod config;
pub mod forward;
pub mod hooks;
pub mod kernels;
pub mod load;
pub mod ops;
pub mod tokenizer;
pub mod weights;

use std::path::Path;

use candle_core::DType;

use crate::error::{Error, Result};
pub use config::ModelConfig;
pub use forward::{ActivationCache, Batch, ForwardOutput, Gradients, Start};
pub use hooks::{Action, HookPoint, Hooks, Intervention};
pub use tokenizer::Tokenizer;
pub use weights::Weights;

/// A model ready to run: what it is, its weights, and how it reads text.
#[derive(Clone)]
pub struct Model {
    /// A short name (file stem or folder name).
    pub name: String,
    pub config: ModelConfig,
    pub weights: Weights,
    pub tokenizer: Tokenizer,
}

impl Model {
    pub fn new(name: String, config: ModelConfig, weights: Weights, tokenizer: Tokenizer) -> Result<Self> {
        config.validate()?;
        Ok(Model {
            name,
            config,
            weights,
            tokenizer,
        })
    }

    /// Loads a Hugging Face model folder or a GGUF file.
    pub fn load(path: &Path) -> Result<Self> {
        load::load_path(path)
    }

    /// The same model with every weight in `dtype` (f64 for finite-difference checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Model {
            weights: self.weights.to_dtype(dtype)?,
            ..self.clone()
        })
    }

    /// Token ids of a prompt (with BOS where the model wants it), checked against the
    /// model's context length.
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<u32>> {
        let ids = self.tokenizer.encode(prompt)?;
        if ids.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if ids.len() > self.config.n_ctx {
            return Err(Error::PromptTooLong {
                n_tokens: ids.len(),
                max: self.config.n_ctx,
            });
        }
        Ok(ids)
    }

    /// A padded batch of prompts.
    pub fn batch(&self, prompts: &[&str]) -> Result<Batch> {
        let seqs = prompts
            .iter()
            .map(|p| self.tokenize(p))
            .collect::<Result<Vec<_>>>()?;
        Batch::new(&seqs)
    }

    /// The one token of an answer such as `" Mary"`.
    pub fn answer_token(&self, text: &str) -> Result<u32> {
        self.tokenizer.single_token(text)
    }
}
