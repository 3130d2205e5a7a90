//! glassbox: mechanistic interpretability for transformer language models.
//!
//! Load a model (`Model::load` for a Hugging Face folder or GGUF file, or
//! `registry::resolve` for a named default model), run it with hooks at every
//! TransformerLens-named point (`HookPoint`), and read activations, interventions and
//! gradients from one forward pass.

pub mod error;
pub mod model;
pub mod registry;

pub use error::{Error, Result};
pub use model::{
    Action, ActivationCache, Batch, ForwardOutput, Gradients, HookPoint, Hooks, Intervention, Model,
    ModelConfig, Start,
};
