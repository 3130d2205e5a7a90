//! Tokenizers: a Hugging Face `tokenizer.json`, or the vocabulary inside a GGUF file
//! (byte-level BPE with the model's pre-tokenizer and BOS rule).

use std::path::Path;

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::AddedToken;

use crate::error::{Error, Result};

/// A model's tokenizer. `encode` adds what the model expects (e.g. BOS) itself.
#[derive(Clone)]
pub struct Tokenizer {
    inner: Backend,
    /// The model's BOS token, where its files name one (GGUF metadata; for a tokenizer.json,
    /// the token its post-processor puts first, else config.json's `bos_token_id`).
    bos_id: Option<u32>,
    /// What `encode` adds by default: as `transformers` does for this format.
    default: DefaultBos,
    /// The user's choice (`Model::set_prepend_bos`, TransformerLens' `prepend_bos`): the BOS
    /// token first and the text with nothing else added, or the text alone.
    forced: Option<bool>,
    /// The tokens that end a generation: the files' EOS (and GGUF end-of-turn) tokens.
    eos_ids: Vec<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum DefaultBos {
    /// A tokenizer.json: its post-processor decides (`post_bos`: the token it puts first).
    PostProcessor { post_bos: Option<u32> },
    /// A GGUF file: the architecture's rule (`load::gguf::GgufFamily::bos`).
    Gguf { bos: bool },
}

#[derive(Clone)]
enum Backend {
    /// Hugging Face tokenizers (tokenizer.json, or byte-level BPE from a GGUF vocabulary).
    Hf(Box<tokenizers::Tokenizer>),
    /// SentencePiece BPE with scores, as llama.cpp runs it (GGUF `tokenizer.ggml.model = llama`).
    Spm(Box<SpmBpe>),
}

/// llama.cpp's SentencePiece-BPE rule: spaces become `▁` (no prefix space unless the file asks),
/// start from characters, repeatedly merge the adjacent pair whose joined piece is in the
/// vocabulary with the highest score (the leftmost on ties), and spell what is left that is not
/// in the vocabulary as byte tokens `<0xXX>`. Control tokens written in the text (`<bos>`,
/// `<start_of_turn>`, ...) are matched whole first.
#[derive(Clone)]
pub struct SpmBpe {
    tokens: Vec<String>,
    scores: Vec<f32>,
    ids: std::collections::HashMap<String, u32>,
    bytes: [Option<u32>; 256],
    specials: Vec<(String, u32)>,
    add_space_prefix: bool,
    /// The longest piece in characters: no token covers more of the text.
    max_piece_chars: usize,
}

impl SpmBpe {
    fn piece_id(&self, s: &str) -> Option<u32> {
        self.ids.get(s).copied()
    }

    /// llama.cpp's merge loop with a priority queue over adjacent pairs (O(n log n)): the
    /// highest-scoring pair whose joined piece is in the vocabulary merges first, the leftmost
    /// on ties; a queued pair whose sides have changed since is skipped.
    fn encode_text(&self, text: &str, out: &mut Vec<u32>) -> Result<()> {
        use std::cmp::Reverse;
        use std::collections::BinaryHeap;
        if text.is_empty() {
            return Ok(());
        }
        let mut t = text.replace(' ', "\u{2581}");
        if self.add_space_prefix {
            t.insert(0, '\u{2581}');
        }
        // Symbols as byte ranges of `t`; `next`/`prev` link the live ones.
        let starts: Vec<usize> = t.char_indices().map(|(i, _)| i).collect();
        let n = starts.len();
        let mut end: Vec<usize> = (0..n).map(|i| starts.get(i + 1).copied().unwrap_or(t.len())).collect();
        let mut next: Vec<Option<usize>> = (0..n).map(|i| (i + 1 < n).then_some(i + 1)).collect();
        let mut prev: Vec<Option<usize>> = (0..n).map(|i| i.checked_sub(1)).collect();
        let mut alive = vec![true; n];
        // (score, leftmost first, left symbol, right symbol, joined length in bytes)
        let mut heap: BinaryHeap<(OrdF32, Reverse<usize>, usize, usize, usize)> = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<_>, l: usize, r: usize, end: &[usize]| {
            if let Some(id) = self.piece_id(&t[starts[l]..end[r]]) {
                let score = self.scores.get(id as usize).copied().unwrap_or(f32::MIN);
                heap.push((OrdF32(score), Reverse(starts[l]), l, r, end[r] - starts[l]));
            }
        };
        for i in 0..n.saturating_sub(1) {
            push(&mut heap, i, i + 1, &end);
        }
        while let Some((_, _, l, r, len)) = heap.pop() {
            if !alive[l] || !alive[r] || next[l] != Some(r) || end[r] - starts[l] != len {
                continue;
            }
            end[l] = end[r];
            alive[r] = false;
            next[l] = next[r];
            if let Some(nr) = next[r] {
                prev[nr] = Some(l);
            }
            if let Some(p) = prev[l] {
                push(&mut heap, p, l, &end);
            }
            if let Some(nx) = next[l] {
                push(&mut heap, l, nx, &end);
            }
        }
        let mut i = Some(0);
        while let Some(k) = i {
            let sym = &t[starts[k]..end[k]];
            match self.piece_id(sym) {
                Some(id) => out.push(id),
                None => {
                    for b in sym.as_bytes() {
                        out.push(self.bytes[*b as usize].ok_or_else(|| {
                            Error::Tokenizer(format!("byte 0x{b:02X} has no <0x{b:02X}> token in this vocabulary"))
                        })?);
                    }
                }
            }
            i = next[k];
        }
        Ok(())
    }

    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let mut out = Vec::new();
        let mut rest = text;
        while !rest.is_empty() {
            let hit = self
                .specials
                .iter()
                .filter_map(|(s, id)| rest.find(s.as_str()).map(|at| (at, s.len(), *id)))
                .min_by_key(|&(at, len, _)| (at, std::cmp::Reverse(len)));
            match hit {
                Some((at, len, id)) => {
                    self.encode_text(&rest[..at], &mut out)?;
                    out.push(id);
                    rest = &rest[at + len..];
                }
                None => {
                    self.encode_text(rest, &mut out)?;
                    break;
                }
            }
        }
        Ok(out)
    }

    fn token_str(&self, id: u32) -> String {
        let Some(t) = self.tokens.get(id as usize) else { return format!("<{id}>") };
        if let Some(hex) = t.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')) {
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                return String::from_utf8_lossy(&[b]).into_owned();
            }
        }
        t.replace('\u{2581}', " ")
    }
}

/// An f32 ordered by `total_cmp`, for the merge queue.
#[derive(Clone, Copy, PartialEq)]
struct OrdF32(f32);
impl Eq for OrdF32 {}
impl PartialOrd for OrdF32 {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for OrdF32 {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&o.0)
    }
}

/// The largest tokenizer.json read (real ones are up to about 35 MB).
const MAX_TOKENIZER_JSON_BYTES: u64 = 512 << 20;

fn tk_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// The tokenizers crate's ids of `text`; a panic inside it (it `expect`s on some inconsistent
/// documents) is an error, not a crash.
fn hf_encode(t: &tokenizers::Tokenizer, text: &str, special: bool) -> Result<Vec<u32>> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| t.encode(text, special).map(|e| e.get_ids().to_vec())))
        .map_err(|_| Error::Tokenizer("the tokenizer failed on this text (its tokenizer.json is inconsistent)".into()))?
        .map_err(tk_err)
}

/// Every `Precompiled` normalizer in a tokenizer.json reads as one (the tokenizers crate
/// would panic on a damaged one).
fn check_precompiled(v: &serde_json::Value) -> std::result::Result<(), String> {
    match v {
        serde_json::Value::Object(m) => {
            if m.get("type").and_then(|t| t.as_str()) == Some("Precompiled") {
                serde_json::from_value::<tokenizers::normalizers::precompiled::Precompiled>(v.clone()).map_err(|e| format!("a damaged Precompiled normalizer: {e}"))?;
            }
            m.values().try_for_each(check_precompiled)
        }
        serde_json::Value::Array(a) => a.iter().try_for_each(check_precompiled),
        _ => Ok(()),
    }
}

const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// llama.cpp's `tokenizer.ggml.pre` names and the Hugging Face pre-tokenizers they stand for.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = ByteLevel::new(false, true, true);
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level.into(),
        // SmolLM: every digit on its own, then GPT-2's byte-level split.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        // Qwen2's split (as in its tokenizer.json), then byte-level without its own regex.
        "qwen2" => Sequence::new(vec![
            tokenizers::pre_tokenizers::split::Split::new(
                tokenizers::pre_tokenizers::split::SplitPattern::Regex(QWEN2_SPLIT.into()),
                tokenizers::SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(tk_err)?
            .into(),
            ByteLevel::new(false, false, false).into(),
        ])
        .into(),
        other => {
            return Err(Error::Tokenizer(format!(
                "the GGUF pre-tokenizer `{other}` is not supported yet (supported: default, gpt2, smollm, qwen2)"
            )))
        }
    })
}

fn meta_u32(content: &Content, key: &str) -> Option<u32> {
    match content.metadata.get(key)? {
        Value::U32(x) => Some(*x),
        Value::I32(x) => u32::try_from(*x).ok(),
        Value::U64(x) => u32::try_from(*x).ok(),
        Value::I64(x) => u32::try_from(*x).ok(),
        _ => None,
    }
}

fn meta_strings(content: &Content, key: &str) -> Result<Vec<String>> {
    let arr = match content.metadata.get(key) {
        Some(Value::Array(a)) => a,
        _ => return Err(Error::Tokenizer(format!("the GGUF file has no `{key}` array"))),
    };
    arr.iter()
        .map(|v| match v {
            Value::String(s) => Ok(s.clone()),
            _ => Err(Error::Tokenizer(format!("`{key}` holds a non-string"))),
        })
        .collect()
}

impl Tokenizer {
    /// Loads a Hugging Face `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::NotAModel {
                path: path.to_path_buf(),
                reason: "tokenizer.json is missing from the model folder".into(),
            });
        }
        let text = crate::model::load::read_json_text(path, MAX_TOKENIZER_JSON_BYTES)?;
        let corrupt = |e: &dyn std::fmt::Display| Error::Corrupt {
            path: path.to_path_buf(),
            detail: format!("not a tokenizer.json ({e})"),
        };
        // The tokenizers crate panics (`expect`) on some malformed documents: invalid JSON
        // inside a decoder, a damaged precompiled normalizer. Those are caught here first; a
        // panic it still raises becomes this error too.
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| corrupt(&e))?;
        check_precompiled(&json).map_err(|e| corrupt(&e))?;
        let inner = std::panic::catch_unwind(|| serde_json::from_value::<tokenizers::Tokenizer>(json))
            .map_err(|_| corrupt(&"the tokenizers library could not read it"))?
            .map_err(|e| corrupt(&e))?;
        // The token the post-processor puts first, if it adds one before the text. A
        // post-processor naming a special token the vocabulary lacks panics in the tokenizers
        // crate on every encode: refused here, at load.
        let probe = |special: bool| std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.encode("a", special).map(|e| e.get_ids().to_vec()).unwrap_or_default()));
        let (with, without) = match (probe(true), probe(false)) {
            (Ok(w), Ok(wo)) => (w, wo),
            _ => return Err(corrupt(&"its post-processor or vocabulary is inconsistent (encoding a word fails)")),
        };
        let post_bos = (with.len() > without.len() && with.first() != without.first()).then(|| with[0]);
        Ok(Tokenizer { inner: Backend::Hf(Box::new(inner)), bos_id: post_bos, default: DefaultBos::PostProcessor { post_bos }, forced: None, eos_ids: Vec::new() })
    }

    /// Builds the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata; `bos`: whether
    /// the architecture's rule puts the file's BOS token first.
    pub fn from_gguf(content: &Content, bos: bool) -> Result<Self> {
        let model = match content.metadata.get("tokenizer.ggml.model") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(Error::Tokenizer("the GGUF file has no `tokenizer.ggml.model`".into())),
        };
        if model == "llama" {
            return Self::spm_from_gguf(content, bos);
        }
        if model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "GGUF tokenizer model `{model}` is not supported yet (supported: gpt2, llama)"
            )));
        }
        let tokens = meta_strings(content, "tokenizer.ggml.tokens")?;
        let merges = meta_strings(content, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .ok_or_else(|| Error::Tokenizer(format!("malformed merge `{m}`")))
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: tokenizers::models::bpe::Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(tk_err)?;
        let mut inner = tokenizers::Tokenizer::new(bpe);
        let pre = match content.metadata.get("tokenizer.ggml.pre") {
            Some(Value::String(s)) => s.clone(),
            _ => "default".to_string(),
        };
        inner.with_pre_tokenizer(Some(pre_tokenizer(&pre)?));
        inner.with_decoder(Some(tokenizers::decoders::byte_level::ByteLevel::default()));
        // Control and user-defined tokens (types 3 and 4) are matched whole in the text.
        if let Some(Value::Array(types)) = content.metadata.get("tokenizer.ggml.token_type") {
            let specials: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| matches!(t, Value::I32(3) | Value::I32(4) | Value::U32(3) | Value::U32(4)))
                .map(|(_, tok)| AddedToken::from(tok.clone(), true))
                .collect();
            inner.add_special_tokens(specials).map_err(tk_err)?;
        }
        Ok(Tokenizer::gguf(Backend::Hf(Box::new(inner)), content, bos))
    }

    /// A GGUF tokenizer with the architecture's BOS rule (see `load::gguf::GgufFamily::bos`;
    /// llama.cpp reads `tokenizer.ggml.add_bos_token` instead, which SmolLM2's file sets false).
    fn gguf(inner: Backend, content: &Content, bos: bool) -> Tokenizer {
        let bos_id = meta_u32(content, "tokenizer.ggml.bos_token_id");
        let mut eos_ids = Vec::new();
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            if let Some(id) = meta_u32(content, key).filter(|id| !eos_ids.contains(id)) {
                eos_ids.push(id);
            }
        }
        Tokenizer { inner, bos_id, default: DefaultBos::Gguf { bos }, forced: None, eos_ids }
    }

    /// Names the tokens that end a generation (config.json's `eos_token_id`).
    pub(crate) fn with_eos_tokens(mut self, ids: Vec<u32>) -> Self {
        if self.eos_ids.is_empty() {
            self.eos_ids = ids;
        }
        self
    }

    /// The tokens that end a generation by default: the model files' EOS token(s), and a GGUF
    /// file's end-of-turn token.
    pub fn eos_tokens(&self) -> &[u32] {
        &self.eos_ids
    }

    /// Names the model's BOS token where the tokenizer itself does not (a tokenizer.json
    /// whose post-processor adds none: config.json's `bos_token_id`), for `prepend_bos`.
    pub(crate) fn with_bos_token(mut self, id: Option<u32>) -> Self {
        if self.bos_id.is_none() {
            self.bos_id = id;
        }
        self
    }

    fn spm_from_gguf(content: &Content, bos: bool) -> Result<Self> {
        let tokens = meta_strings(content, "tokenizer.ggml.tokens")?;
        let scores: Vec<f32> = match content.metadata.get("tokenizer.ggml.scores") {
            Some(Value::Array(a)) => a.iter().map(|v| if let Value::F32(x) = v { *x } else { 0.0 }).collect(),
            _ => return Err(Error::Tokenizer("the GGUF file has no `tokenizer.ggml.scores` array".into())),
        };
        let types: Vec<i64> = match content.metadata.get("tokenizer.ggml.token_type") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| match v {
                    Value::I32(x) => *x as i64,
                    Value::U32(x) => *x as i64,
                    _ => 1,
                })
                .collect(),
            _ => vec![1; tokens.len()],
        };
        let mut bytes = [None; 256];
        let mut specials = Vec::new();
        let mut ids = std::collections::HashMap::with_capacity(tokens.len());
        for (i, t) in tokens.iter().enumerate() {
            let ty = types.get(i).copied().unwrap_or(1);
            if ty == 6 {
                if let Some(b) = t.strip_prefix("<0x").and_then(|h| h.strip_suffix('>')).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    bytes[b as usize] = Some(i as u32);
                }
                continue;
            }
            // Control and user-defined tokens spelled like tags are matched whole in the text.
            if (ty == 3 || ty == 4) && t.len() > 2 && t.starts_with('<') && t.ends_with('>') {
                specials.push((t.clone(), i as u32));
            }
            ids.entry(t.clone()).or_insert(i as u32);
        }
        let add_space_prefix = matches!(content.metadata.get("tokenizer.ggml.add_space_prefix"), Some(Value::Bool(true)));
        let max_piece_chars = tokens.iter().map(|t| t.chars().count()).max().unwrap_or(0).max(1);
        let spm = SpmBpe { tokens, scores, ids, bytes, specials, add_space_prefix, max_piece_chars };
        Ok(Tokenizer::gguf(Backend::Spm(Box::new(spm)), content, bos))
    }

    /// Token ids of `text`, with the special tokens the model expects (e.g. BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if let (None, DefaultBos::PostProcessor { .. }, Backend::Hf(t)) = (self.forced, self.default, &self.inner) {
            return hf_encode(t, text, true);
        }
        let mut ids: Vec<u32> = self.bos().into_iter().collect();
        ids.extend(self.encode_plain(text)?);
        Ok(ids)
    }

    /// Token ids of `text` with nothing added (for answers and other continuations).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        match &self.inner {
            Backend::Hf(t) => hf_encode(t, text, false),
            Backend::Spm(t) => t.encode(text),
        }
    }

    /// The single token of an answer such as `" Mary"`; a clear error when it is several.
    pub fn single_token(&self, text: &str) -> Result<u32> {
        let ids = self.encode_plain(text)?;
        if ids.len() == 1 {
            return Ok(ids[0]);
        }
        let pieces = ids
            .iter()
            .map(|&i| format!("{:?}", self.token_str(i)))
            .collect::<Vec<_>>()
            .join(" + ");
        let hint = match ids.first() {
            Some(&first) => format!(" (try {:?})", self.token_str(first)),
            None => " (it is empty)".to_string(),
        };
        Err(Error::NotSingleToken {
            text: text.to_string(),
            n_tokens: ids.len(),
            pieces,
            hint,
        })
    }

    /// The text of a token sequence (byte tokens joined before they are read as UTF-8).
    pub fn decode(&self, ids: &[u32]) -> String {
        match &self.inner {
            Backend::Hf(t) => t.decode(ids, false).unwrap_or_else(|_| ids.iter().map(|&i| self.token_str(i)).collect()),
            Backend::Spm(t) => {
                let mut bytes = Vec::new();
                for &id in ids {
                    match t.tokens.get(id as usize).and_then(|s| s.strip_prefix("<0x")).and_then(|h| h.strip_suffix('>')).and_then(|h| u8::from_str_radix(h, 16).ok()) {
                        Some(b) => bytes.push(b),
                        None => bytes.extend(t.token_str(id).into_bytes()),
                    }
                }
                String::from_utf8_lossy(&bytes).into_owned()
            }
        }
    }

    /// The text of one token.
    pub fn token_str(&self, id: u32) -> String {
        match &self.inner {
            Backend::Hf(t) => t.decode(&[id], false).unwrap_or_else(|_| format!("<{id}>")),
            Backend::Spm(t) => t.token_str(id),
        }
    }

    /// The BOS token `encode` puts first, if it puts one first.
    pub fn bos(&self) -> Option<u32> {
        match (self.forced, self.default) {
            (Some(true), _) => self.bos_id,
            (Some(false), _) => None,
            (None, DefaultBos::PostProcessor { post_bos }) => post_bos,
            (None, DefaultBos::Gguf { bos }) => self.bos_id.filter(|_| bos),
        }
    }

    /// The model's BOS token, whether or not `encode` adds it.
    pub fn bos_token(&self) -> Option<u32> {
        self.bos_id
    }

    /// Sets whether `encode` puts the BOS token first (`None`: the format's default rule, as
    /// `transformers` does). Forcing it on needs a BOS token the model's files name.
    pub fn set_prepend_bos(&mut self, prepend: Option<bool>) -> Result<()> {
        if prepend == Some(true) && self.bos_id.is_none() {
            return Err(Error::Invalid("this model's files name no BOS token, so none can be prepended; use prepend_bos false or the default".into()));
        }
        self.forced = prepend;
        Ok(())
    }

    /// A lower bound on the tokens `encode` gives for `text`, where one is known without
    /// tokenizing (SentencePiece: no piece covers more characters than the longest in the
    /// vocabulary), so an overlong text is refused before the work.
    pub fn min_tokens(&self, text: &str) -> Option<usize> {
        match &self.inner {
            Backend::Hf(_) => None,
            Backend::Spm(t) => Some(text.chars().count().div_ceil(t.max_piece_chars)),
        }
    }

    /// The number of tokens in the vocabulary (added tokens included).
    pub fn vocab_size(&self) -> usize {
        match &self.inner {
            Backend::Hf(t) => t.get_vocab_size(true),
            Backend::Spm(t) => t.tokens.len(),
        }
    }
}
