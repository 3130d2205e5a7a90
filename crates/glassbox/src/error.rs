//! The library's error type. Every variant says what was wrong and, where it can, what to do.

use std::path::PathBuf;

/// Errors returned by glassbox. The library never panics on user input.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file-system operation on `path` failed (opening, reading, writing or renaming it).
    #[error("cannot read {}: {}", printable(&path.display()), printable(source))]
    Io {
        /// The file or folder the operation was on.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },

    /// `path` is not something glassbox loads (neither a GGUF file nor a Hugging Face model folder, or not a
    /// regular file); `reason` says what to give instead.
    #[error("{} is not a model glassbox can load: {}", printable(&path.display()), printable(reason))]
    NotAModel {
        /// The path given.
        path: PathBuf,
        /// Why it is not a model, and what to give instead.
        reason: String,
    },

    /// The file at `path` is damaged, truncated or malformed; `detail` says where.
    #[error("{} is corrupt or truncated: {}", printable(&path.display()), printable(detail))]
    Corrupt {
        /// The damaged file.
        path: PathBuf,
        /// What is wrong with it, and where.
        detail: String,
    },

    /// The model's architecture `name` (config.json's `model_type` or GGUF's `general.architecture`)
    /// is not one glassbox implements; `supported` lists those it does.
    #[error("unknown architecture `{}`; supported: {supported}", printable(name))]
    UnknownArchitecture {
        /// The architecture the file declares.
        name: String,
        /// The architectures glassbox implements, comma-separated.
        supported: String,
    },

    /// A model file lacks a setting glassbox needs to build the config.
    #[error("the {format} file for architecture `{}` lacks `{}`, which glassbox needs", printable(arch), printable(key))]
    MissingMetadata {
        /// Which kind of file: `"GGUF"` or `"config.json"`.
        format: &'static str,
        /// The architecture the file declares.
        arch: String,
        /// The missing key.
        key: String,
    },

    /// The weight `name`, which the architecture needs, is not in the file.
    #[error("tensor `{}` is missing from the weights", printable(name))]
    MissingTensor {
        /// The tensor's name in the file's naming.
        name: String,
    },

    /// The file holds tensors (`names`, the first eight) that no part of the `arch` model reads, so
    /// loading it would compute another model than the checkpoint.
    #[error("the file holds tensors that no part of the `{}` model reads: {}; glassbox would compute another model than the checkpoint (a variant of the family it does not implement yet)", printable(arch), printable(names))]
    UnusedTensors {
        /// The architecture the model was loaded as.
        arch: String,
        /// The unread tensors' names (the first eight, then how many more).
        names: String,
    },

    /// A weight in the file does not have the shape the model's config implies.
    #[error("tensor `{}` has shape {got:?}; expected {expected:?}", printable(name))]
    TensorShape {
        /// The tensor's name in the file.
        name: String,
        /// The shape the config implies.
        expected: Vec<usize>,
        /// The shape stored in the file.
        got: Vec<usize>,
    },

    /// `name` does not parse as a hook point.
    #[error("unknown hook point `{}`; hook names look like `blocks.3.attn.hook_z` or `hook_embed` (run `glassbox hooks` to list them)", printable(name))]
    UnknownHook {
        /// The name given.
        name: String,
    },

    /// `layer` is beyond the model's `n_layers` layers.
    #[error("layer {layer} is out of range: this model has {n_layers} layers (0..={max})", max = n_layers.saturating_sub(1))]
    LayerOutOfRange {
        /// The layer asked for.
        layer: usize,
        /// The model's layer count.
        n_layers: usize,
    },

    /// An intervention selects a head beyond the head axis of its hook.
    #[error("head {head} is out of range at {point}: it has {n_heads} heads (0..={max})", max = n_heads.saturating_sub(1))]
    HeadOutOfRange {
        /// The head asked for.
        head: usize,
        /// Heads at that hook (key/value heads at `hook_k`, `hook_v`, `hook_rot_k`).
        n_heads: usize,
        /// The hook point's name.
        point: String,
    },

    /// `position` is not below the prompt's `n_positions` tokens.
    #[error("position {position} is out of range: the prompt has {n_positions} tokens (0..={max})", max = n_positions.saturating_sub(1))]
    PositionOutOfRange {
        /// The position asked for.
        position: usize,
        /// The prompt's token count.
        n_positions: usize,
    },

    /// A prompt (or a batch) holds no tokens.
    #[error("the prompt is empty; give at least one token of text")]
    EmptyPrompt,

    /// A prompt of (at least) `n_tokens` tokens exceeds the model's context of `max` positions.
    #[error("the prompt is at least {n_tokens} tokens long, but this model takes at most {max} positions; shorten it")]
    PromptTooLong {
        /// The prompt's tokens (a lower bound when counted before tokenizing).
        n_tokens: usize,
        /// The model's context length `n_ctx`.
        max: usize,
    },

    /// A prompt's text of `bytes` bytes exceeds `MAX_PROMPT_BYTES` (`max`), checked before tokenizing.
    #[error("the prompt is {bytes} bytes of text; glassbox takes at most {max} bytes; shorten it")]
    PromptTooLongText {
        /// The prompt's length in bytes.
        bytes: usize,
        /// `MAX_PROMPT_BYTES`.
        max: usize,
    },

    /// An answer is not exactly one token of the model's vocabulary.
    #[error("{} is {n_tokens} tokens in this model's vocabulary ({}); answers must be one token{}", excerpt(&format!("{text:?}"), 200), excerpt(pieces, 200), excerpt(hint, 200))]
    NotSingleToken {
        /// The answer as given.
        text: String,
        /// How many tokens it encodes to.
        n_tokens: usize,
        /// Its tokens, quoted and joined with ` + `.
        pieces: String,
        /// Appended to the message: the first token to try instead, or a note that the answer is empty.
        hint: String,
    },

    /// The tokenizer failed to encode, or its data in the model file is unusable.
    #[error("tokenizer: {}", printable(.0))]
    Tokenizer(String),

    /// An intervention at hook `point` does not fit it: heads chosen at a hook without a head axis,
    /// or a replacement, addend or closure result whose shape does not fit (`detail`).
    #[error("intervention at {point}: {}", printable(detail))]
    Intervention {
        /// The hook point's name.
        point: String,
        /// What does not fit.
        detail: String,
    },

    /// Pulling registry or Hub model `model` failed, or its cached file is damaged (`detail`).
    #[error("fetching model `{model}` failed: {}", printable(detail))]
    Fetch {
        /// The registry name or Hub id.
        model: String,
        /// What failed, and what to do.
        detail: String,
    },

    /// An argument, input or model setting is out of its domain; the message says which and what to do.
    #[error("{}", printable(.0))]
    Invalid(String),

    /// The run was stopped (Ctrl-C, or the caller's cancel flag) before it finished.
    #[error("stopped before it finished (interrupted); nothing was computed past the last step")]
    Cancelled,

    /// A result holds a NaN or infinite number (logits, a reported figure, a steering vector); the
    /// message says where.
    #[error("{}", printable(.0))]
    NonFinite(String),

    /// A candle tensor operation failed.
    #[error("tensor computation failed: {}", printable(.0))]
    Candle(#[from] candle_core::Error),
}

/// `std::result::Result` with glassbox's `Error`.
pub type Result<T> = std::result::Result<T, Error>;

/// Text for a message with its control characters escaped: messages quote file names,
/// metadata and other libraries' errors, which a damaged file can fill with terminal escapes.
pub fn printable(x: &dyn std::fmt::Display) -> String {
    x.to_string()
        .chars()
        .flat_map(|c| if c.is_control() && c != '\n' { c.escape_debug().collect::<Vec<_>>() } else { vec![c] })
        .collect()
}

/// `printable(x)`, cut to its first `max_chars` characters with a note of the full length when
/// it is longer: a message quoting what a user gave stays readable however long that was.
pub fn excerpt(x: &dyn std::fmt::Display, max_chars: usize) -> String {
    let s = printable(x);
    let n = s.chars().count();
    if n <= max_chars {
        return s;
    }
    format!("{}… ({n} characters in all)", s.chars().take(max_chars).collect::<String>())
}

/// `text` with every run of more than `max_chars` characters without whitespace cut to its
/// first `max_chars` and a note of its length: a message that quotes a user's 20,000-character
/// argument keeps its words and what to do, not the argument.
pub fn shorten_long_words(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(1 << 16));
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        let n = word.chars().count();
        if n > max_chars {
            out.extend(word.chars().take(max_chars));
            out.push_str(&format!("…({n} characters)"));
        } else {
            out.push_str(word);
        }
        word.clear();
    };
    for c in text.chars() {
        if c.is_whitespace() {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}
