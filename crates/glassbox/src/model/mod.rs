//! A loaded model: configuration, weights and tokenizer, and the one forward pass.

pub mod cache;
pub mod compute;
pub mod config;
pub mod forward;
pub(crate) mod fused;
pub mod generate;
pub mod hooks;
pub(crate) mod kernels;
pub mod load;
pub mod readout;
pub mod rope;
pub(crate) mod ops;
pub mod quant;
pub mod tokenizer;
pub mod weights;

use std::path::Path;

use candle_core::DType;

use crate::error::{Error, Result};
pub use config::ModelConfig;
pub use cache::{ActivationCache, Decompose, Stack, StackNorm};
pub use generate::{GenerateOptions, Generation, Sampling, StopReason};
pub use forward::{Batch, ForwardOutput, Gradients, KvCache, Start};
pub use hooks::{Action, HookPoint, Hooks, Intervention};
pub use tokenizer::Tokenizer;
pub use weights::Weights;

/// Whether this CPU runs glassbox's own product kernels (x86-64 with AVX2, FMA and F16C, and
/// not switched off with `GLASSBOX_KERNELS=portable`): GGUF weights then stay quantized.
pub fn kernels_available() -> bool {
    kernels::available()
}

/// The longest prompt text accepted, in bytes (before the model's own limit in tokens).
pub const MAX_PROMPT_BYTES: usize = 1 << 20;

/// A model ready to run: what it is, its weights, and how it reads text.
#[derive(Clone)]
pub struct Model {
    /// A short name (file stem or folder name).
    name: String,
    /// Shapes and components: everything the forward pass reads about the model.
    config: ModelConfig,
    /// Every weight, in the one layout of `weights`.
    weights: Weights,
    /// Text to token ids and back (with BOS where the model wants it).
    tokenizer: Tokenizer,
    /// The sha256 of the weight files it was loaded from (computed while they were read).
    sha256: Option<String>,
}

impl Model {
    /// A model from its parts (no Q4_1 copies); errors when the config is invalid or the tokenizer's
    /// vocabulary is empty or larger than the embedding.
    pub fn new(name: String, config: ModelConfig, weights: Weights, tokenizer: Tokenizer) -> Result<Self> {
        config.validate()?;
        match tokenizer.vocab_size() {
            0 => return Err(Error::Invalid("the tokenizer's vocabulary is empty; the model's tokenizer file is damaged".into())),
            n if n > config.d_vocab => {
                return Err(Error::Invalid(format!(
                    "the tokenizer has {n} tokens but the embedding only {} rows; the tokenizer does not belong to these weights",
                    config.d_vocab
                )))
            }
            _ => {}
        }
        Ok(Model {
            name,
            config,
            weights,
            tokenizer,
            sha256: None,
        })
    }

    /// A short name (the file stem or folder name).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Shapes and components: everything the forward pass reads about the model.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// Every weight, in the one layout of `weights`.
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    /// Text to token ids and back (with BOS where the model wants it).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The same model under another name (e.g. the registry's).
    pub fn with_name(mut self, name: impl Into<String>) -> Model {
        self.name = name.into();
        self
    }

    /// The same model, recording the sha256 of the weights it was loaded from.
    pub fn with_weights_sha256(mut self, sha256: String) -> Model {
        self.sha256 = Some(sha256);
        self
    }

    /// The sha256 (lowercase hex) of the weight file it was loaded from (for a model folder, of
    /// its weight files one after the other in name order); `None` for a model built in memory.
    pub fn weights_sha256(&self) -> Option<String> {
        self.sha256.clone()
    }

    /// Loads a Hugging Face model folder or a GGUF file.
    pub fn load(path: &Path) -> Result<Self> {
        load::load_path(path)
    }

    /// The same architecture and tokenizer with other weights (of the same shapes; checked at
    /// the first forward pass). It records no weights hash: these weights were not read from files.
    pub fn with_weights(&self, weights: Weights) -> Model {
        Model { weights, sha256: None, ..self.clone() }
    }

    /// The same model with every weight in `dtype` (f64 for finite-difference checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Model {
            weights: self.weights.to_dtype(dtype)?,
            ..self.clone()
        })
    }

    /// The number of weight matrices kept quantized (GGUF files on CPUs with the kernels).
    pub fn quantized_matrices(&self) -> usize {
        let w = &self.weights;
        let mut n = usize::from(w.embed.quantized().is_some()) + usize::from(!w.unembed.same_as(&w.embed) && w.unembed.quantized().is_some());
        for l in &w.layers {
            let (a, m) = (&l.attn, &l.mlp);
            n += [Some(&a.w_q), Some(&a.w_k), Some(&a.w_v), Some(&a.w_o), Some(&m.w_in), Some(&m.w_out), m.w_gate.as_ref()]
                .into_iter()
                .flatten()
                .filter(|w| w.quantized().is_some())
                .count();
        }
        n
    }

    /// Sets whether prompts get the BOS token first (TransformerLens' `prepend_bos`): `None`
    /// for the default of the model's format, as `transformers` does when it loads the same
    /// files (a tokenizer.json's post-processor; for GGUF files LLaMA and Gemma yes, Qwen no).
    pub fn set_prepend_bos(&mut self, prepend: Option<bool>) -> Result<()> {
        self.tokenizer.set_prepend_bos(prepend)
    }

    /// Token ids of a prompt (with BOS where the model wants it), checked against the
    /// model's context length.
    pub fn tokenize(&self, prompt: &str) -> Result<Vec<u32>> {
        if prompt.len() > MAX_PROMPT_BYTES {
            return Err(Error::PromptTooLongText { bytes: prompt.len(), max: MAX_PROMPT_BYTES });
        }
        if let Some(n) = self.tokenizer.min_tokens(prompt).filter(|&n| n > self.config.n_ctx) {
            return Err(Error::PromptTooLong { n_tokens: n, max: self.config.n_ctx });
        }
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

    /// The text of each token (TransformerLens' `to_str_tokens`).
    pub fn to_str_tokens(&self, tokens: &[u32]) -> Vec<String> {
        tokens.iter().map(|&t| self.tokenizer.token_str(t)).collect()
    }

    /// The text of a token sequence (TransformerLens' `to_string`).
    pub fn to_string(&self, tokens: &[u32]) -> String {
        self.tokenizer.decode(tokens)
    }

    /// The one token of an answer such as `" Mary"`.
    pub fn answer_token(&self, text: &str) -> Result<u32> {
        self.tokenizer.single_token(text)
    }
}
