//! Prompt sets and generators.

pub mod ioi;

pub use crate::rng::Rng;
