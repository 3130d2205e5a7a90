//! A loaded model: configuration, weights and tokenizer, and the one forward pass.

pub mod config;
pub mod forward;
pub mod fused;
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
    /// Exact Q4_1 copies of linear weights, by the f32 tensor's id: the products stream these
    /// (a sixth of the bytes) and give the same figures bit for bit. Filled by the GGUF loader
    /// for Q4_1 tensors whose copy dequantizes to exactly the loaded weight; empty otherwise.
    pub quantized: Quantized,
}

/// See `Model::quantized`.
#[derive(Clone, Default)]
pub struct Quantized(pub std::sync::Arc<std::collections::HashMap<candle_core::TensorId, std::sync::Arc<kernels::Q41>>>);

impl Quantized {
    pub fn get(&self, w: &candle_core::Tensor) -> Option<&std::sync::Arc<kernels::Q41>> {
        self.0.get(&w.id())
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// candle parallelises large elementwise ops on a pool of spinning worker threads, separate
/// from the rayon threads its matmul and glassbox's kernels use; on a 2-core machine the
/// spinning workers take cores from the products (path patching ran 1.7× slower with them).
/// Unless the user has set `CANDLE_NUM_THREADS`, glassbox sets it to 1 before candle creates
/// that pool, so elementwise ops run on the calling thread and products get every core.
///
/// candle's matmul also asks for its thread count on every call and, without
/// `RAYON_NUM_THREADS`, counts the physical cores by reading `/proc/cpuinfo` each time (2 % of
/// a Taylor attribution, two products per layer). Unless the user has set it, glassbox sets it
/// to the size rayon's global pool already has, which changes nothing but the reading.
fn configure_candle_threads() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
            std::env::set_var("CANDLE_NUM_THREADS", "1");
        }
        if std::env::var_os("RAYON_NUM_THREADS").is_none() {
            std::env::set_var("RAYON_NUM_THREADS", rayon::current_num_threads().to_string());
        }
    });
}

impl Model {
    pub fn new(name: String, config: ModelConfig, weights: Weights, tokenizer: Tokenizer) -> Result<Self> {
        config.validate()?;
        configure_candle_threads();
        Ok(Model {
            name,
            config,
            weights,
            tokenizer,
            quantized: Quantized::default(),
        })
    }

    /// Loads a Hugging Face model folder or a GGUF file.
    pub fn load(path: &Path) -> Result<Self> {
        configure_candle_threads();
        load::load_path(path)
    }

    /// The same model with every weight in `dtype` (f64 for finite-difference checks).
    pub fn to_dtype(&self, dtype: DType) -> Result<Self> {
        Ok(Model {
            weights: self.weights.to_dtype(dtype)?,
            quantized: Quantized::default(),
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
