//! The library's error type. Every variant says what was wrong and, where it can, what to do.

use std::path::PathBuf;

/// Errors returned by glassbox. The library never panics on user input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {}: {}", printable(&path.display()), printable(source))]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{} is not a model glassbox can load: {}", printable(&path.display()), printable(reason))]
    NotAModel { path: PathBuf, reason: String },

    #[error("{} is corrupt or truncated: {}", printable(&path.display()), printable(detail))]
    Corrupt { path: PathBuf, detail: String },

    #[error("unknown architecture `{}`; supported: {supported}", printable(name))]
    UnknownArchitecture { name: String, supported: String },

    #[error("the {format} file for architecture `{}` lacks `{}`, which glassbox needs", printable(arch), printable(key))]
    MissingMetadata {
        format: &'static str,
        arch: String,
        key: String,
    },

    #[error("tensor `{}` is missing from the weights", printable(name))]
    MissingTensor { name: String },

    #[error("the file holds tensors that no part of the `{}` model reads: {}; glassbox would compute another model than the checkpoint (a variant of the family it does not implement yet)", printable(arch), printable(names))]
    UnusedTensors { arch: String, names: String },

    #[error("tensor `{}` has shape {got:?}; expected {expected:?}", printable(name))]
    TensorShape {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },

    #[error("unknown hook point `{}`; hook names look like `blocks.3.attn.hook_z` or `hook_embed` (run `glassbox hooks` to list them)", printable(name))]
    UnknownHook { name: String },

    #[error("layer {layer} is out of range: this model has {n_layers} layers (0..={max})", max = n_layers.saturating_sub(1))]
    LayerOutOfRange { layer: usize, n_layers: usize },

    #[error("head {head} is out of range at {point}: it has {n_heads} heads (0..={max})", max = n_heads.saturating_sub(1))]
    HeadOutOfRange {
        head: usize,
        n_heads: usize,
        point: String,
    },

    #[error("position {position} is out of range: the prompt has {n_positions} tokens (0..={max})", max = n_positions.saturating_sub(1))]
    PositionOutOfRange { position: usize, n_positions: usize },

    #[error("the prompt is empty; give at least one token of text")]
    EmptyPrompt,

    #[error("the prompt is at least {n_tokens} tokens long, but this model takes at most {max} positions; shorten it")]
    PromptTooLong { n_tokens: usize, max: usize },

    #[error("the prompt is {bytes} bytes of text; glassbox takes at most {max} bytes; shorten it")]
    PromptTooLongText { bytes: usize, max: usize },

    #[error("{text:?} is {n_tokens} tokens in this model's vocabulary ({}); answers must be one token{}", printable(pieces), printable(hint))]
    NotSingleToken {
        text: String,
        n_tokens: usize,
        pieces: String,
        hint: String,
    },

    #[error("tokenizer: {}", printable(.0))]
    Tokenizer(String),

    #[error("intervention at {point}: {}", printable(detail))]
    Intervention { point: String, detail: String },

    #[error("fetching model `{model}` failed: {}", printable(detail))]
    Fetch { model: String, detail: String },

    #[error("{}", printable(.0))]
    Invalid(String),

    #[error("{}", printable(.0))]
    NonFinite(String),

    #[error("tensor computation failed: {}", printable(.0))]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, Error>;

/// Text for a message with its control characters escaped: messages quote file names,
/// metadata and other libraries' errors, which a damaged file can fill with terminal escapes.
pub fn printable(x: &dyn std::fmt::Display) -> String {
    x.to_string()
        .chars()
        .flat_map(|c| if c.is_control() && c != '\n' { c.escape_debug().collect::<Vec<_>>() } else { vec![c] })
        .collect()
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
