#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
//! glassbox: mechanistic interpretability for transformer language models.
//!
//! Load a model (`Model::load` for a Hugging Face folder or GGUF file, or
//! `registry::resolve` for a named default model), run it with hooks at every
//! TransformerLens-named point (`HookPoint`), and read activations, interventions and
//! gradients from one forward pass.
//!
//! Hook points print and parse as TransformerLens names; an unknown name is an error:
//!
//! ```
//! use glassbox::HookPoint;
//! let p: HookPoint = "blocks.9.attn.hook_z".parse().unwrap();
//! assert_eq!(p, HookPoint::Z(9));
//! assert_eq!(p.to_string(), "blocks.9.attn.hook_z");
//! assert!("blocks.9.attn.hook_scores".parse::<HookPoint>().is_err());
//! ```

pub mod batch;
#[cfg(feature = "bench")]
pub mod bench;
pub mod controls;
pub mod error;
pub mod files;
pub mod finite;
pub mod inputs;
pub mod limits;
pub mod methods;
pub mod model;
pub mod plot;
pub mod registry;
pub mod report;
pub mod rng;
pub mod sae;
pub mod schema;
pub mod tasks;
pub mod threads;

pub use error::{Error, Result};
pub use finite::check_finite;
pub use model::{
    Action, ActivationCache, Batch, Decompose, ForwardOutput, Gradients, HookPoint, Hooks, Intervention, Model,
    GenerateOptions, Generation, KvCache, ModelConfig, Sampling, StopReason, Stack, StackNorm, Start,
};
