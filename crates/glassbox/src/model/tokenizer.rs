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
    inner: tokenizers::Tokenizer,
    /// Prepended by `encode` (GGUF files say so in `tokenizer.ggml.add_bos_token`).
    prepend_bos: Option<u32>,
}

fn tk_err(e: impl std::fmt::Display) -> Error {
    Error::Tokenizer(e.to_string())
}

/// llama.cpp's `tokenizer.ggml.pre` names and the Hugging Face pre-tokenizers they stand for.
fn pre_tokenizer(pre: &str) -> Result<PreTokenizerWrapper> {
    let byte_level = ByteLevel::new(false, true, true);
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level.into(),
        // SmolLM: every digit on its own, then GPT-2's byte-level split.
        "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        other => {
            return Err(Error::Tokenizer(format!(
                "the GGUF pre-tokenizer `{other}` is not supported yet (supported: default, gpt2, smollm)"
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
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Corrupt {
            path: path.to_path_buf(),
            detail: format!("not a tokenizer.json ({e})"),
        })?;
        Ok(Tokenizer {
            inner,
            prepend_bos: None,
        })
    }

    /// Builds the tokenizer stored in a GGUF file's `tokenizer.ggml.*` metadata.
    pub fn from_gguf(content: &Content) -> Result<Self> {
        let model = match content.metadata.get("tokenizer.ggml.model") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(Error::Tokenizer("the GGUF file has no `tokenizer.ggml.model`".into())),
        };
        if model != "gpt2" {
            return Err(Error::Tokenizer(format!(
                "GGUF tokenizer model `{model}` is not supported yet (supported: gpt2)"
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
        // BOS rule: glassbox prepends the file's BOS token, as `transformers` does when it
        // loads a GGUF file (the reference the parity tests use), whatever
        // `tokenizer.ggml.add_bos_token` says (llama.cpp honours that key; SmolLM2's file sets
        // it false). A fixed first token also gives every prompt the same attention sink.
        Ok(Tokenizer {
            inner,
            prepend_bos: meta_u32(content, "tokenizer.ggml.bos_token_id"),
        })
    }

    /// Token ids of `text`, with the special tokens the model expects (e.g. BOS).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let add_special = self.prepend_bos.is_none();
        let enc = self.inner.encode(text, add_special).map_err(tk_err)?;
        let mut ids = Vec::with_capacity(enc.len() + 1);
        ids.extend(self.prepend_bos);
        ids.extend_from_slice(enc.get_ids());
        Ok(ids)
    }

    /// Token ids of `text` with nothing added (for answers and other continuations).
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self.inner.encode(text, false).map_err(tk_err)?;
        Ok(enc.get_ids().to_vec())
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

    /// The text of one token.
    pub fn token_str(&self, id: u32) -> String {
        self.inner.decode(&[id], false).unwrap_or_else(|_| format!("<{id}>"))
    }

    /// The BOS token `encode` prepends, if it prepends one.
    pub fn bos(&self) -> Option<u32> {
        self.prepend_bos
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
