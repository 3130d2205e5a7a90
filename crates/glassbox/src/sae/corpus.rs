//! Text corpora and the model activations they give, for training and evaluating SAEs.
//!
//! A corpus is plain-text files; a file in fortune format (entries separated by lines holding
//! only `%`) splits into its entries, any other file is one document. Documents
//! are tokenized without special tokens, joined (EOS between documents where the model has
//! one) and cut into sequences of `context` tokens, each starting with BOS where the model's
//! tokenizer puts one first.
//!
//! Activations leave out the first position of every sequence and every position holding BOS
//! or an end-of-text token (`excluded_tokens`), as SAELens' `exclude_special_tokens` does.
//! These are attention sinks: in SmolLM2-135M the residual stream at block 15 has a norm of
//! about 170 on ordinary tokens and 13 000–15 600 on `<|endoftext|>` between documents. Kept,
//! a few such rows would make most of the variance, the loss would spend the SAE on them, and
//! the explained variance would read high for the wrong reason.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use crate::error::{Error, Result};
use crate::model::{Batch, HookPoint, Hooks, Model};

/// The most bytes read from one corpus file.
pub const MAX_CORPUS_FILE_BYTES: u64 = 1 << 30;

/// The documents of the corpus files (fortune entries, or whole files), in file order.
pub fn read_documents(paths: &[PathBuf]) -> Result<Vec<String>> {
    if paths.is_empty() {
        return Err(Error::Invalid("give at least one corpus file".into()));
    }
    let mut docs = Vec::new();
    for p in paths {
        let bytes = crate::model::load::read_limited(p, MAX_CORPUS_FILE_BYTES)?;
        let text = String::from_utf8_lossy(&bytes).replace("\r\n", "\n");
        let fortune = text.lines().any(|l| l.trim() == "%");
        let parts: Vec<String> = if fortune { text.split("\n%\n").map(str::to_string).collect() } else { vec![text] };
        docs.extend(parts.into_iter().map(|d| d.trim().to_string()).filter(|d| !d.is_empty() && d != "%"));
    }
    if docs.is_empty() {
        return Err(Error::Invalid("the corpus files hold no text".into()));
    }
    Ok(docs)
}

/// The corpus as model sequences of `context` tokens (BOS first where the model puts one).
pub fn sequences(model: &Model, docs: &[String], context: usize) -> Result<Vec<Vec<u32>>> {
    if context < 2 || context > model.config().n_ctx {
        return Err(Error::Invalid(format!("a context of {context} tokens: give 2 to the model's {}", model.config().n_ctx)));
    }
    let bos = model.tokenizer().bos();
    let eos = model.tokenizer().eos_tokens().first().copied();
    let body = context - usize::from(bos.is_some());
    let mut stream: Vec<u32> = Vec::new();
    for d in docs {
        let ids = model.tokenizer().encode(d)?;
        stream.extend(ids.iter().copied().filter(|t| Some(*t) != bos));
        if let Some(e) = eos {
            stream.push(e);
        }
    }
    Ok(stream
        .chunks_exact(body)
        .map(|c| bos.into_iter().chain(c.iter().copied()).collect())
        .collect())
}

/// Model activations read sequence batch by sequence batch at a list of hook points (for an
/// SAE its input; for a transcoder its input and target; for a transcoder set every layer's
/// pair), all from the same forward pass. BOS and end-of-text positions left out.
pub struct ActivationStream<'a> {
    model: &'a Model,
    seqs: Vec<Vec<u32>>,
    /// The next sequence to read.
    pub position: usize,
    per_forward: usize,
    points: Vec<HookPoint>,
    excluded: Vec<u32>,
}

impl<'a> ActivationStream<'a> {
    /// A stream over `seqs` from sequence `position`, `per_forward` sequences per forward pass,
    /// of `hook_in` (and `hook_out` for a transcoder).
    pub fn new(model: &'a Model, seqs: Vec<Vec<u32>>, position: usize, per_forward: usize, hook_in: HookPoint, hook_out: Option<HookPoint>) -> Result<Self> {
        Self::at_points(model, seqs, position, per_forward, std::iter::once(hook_in).chain(hook_out).collect())
    }

    /// A stream of the activations at every point of `points`, in that order.
    pub fn at_points(model: &'a Model, seqs: Vec<Vec<u32>>, position: usize, per_forward: usize, points: Vec<HookPoint>) -> Result<Self> {
        if points.is_empty() {
            return Err(Error::Invalid("an activation stream needs at least one hook point".into()));
        }
        for p in &points {
            p.check(model.config())?;
        }
        if seqs.is_empty() {
            return Err(Error::Invalid("the corpus is shorter than one sequence; give more text or a shorter --context".into()));
        }
        let excluded = excluded_tokens(model);
        Ok(ActivationStream { model, seqs, position, per_forward: per_forward.max(1), points, excluded })
    }

    /// Sequences in the stream.
    pub fn len(&self) -> usize {
        self.seqs.len()
    }

    /// Whether the stream holds no sequence.
    pub fn is_empty(&self) -> bool {
        self.seqs.is_empty()
    }

    /// The next batch of activations, `([n, d_in], [n, d_out])`, or `None` at the end (for a
    /// stream made by `new`).
    pub fn next_batch(&mut self) -> Result<Option<(Tensor, Option<Tensor>)>> {
        Ok(self.next_points()?.map(|mut v| {
            let y = (v.len() > 1).then(|| v.remove(1));
            (v.remove(0), y)
        }))
    }

    /// The next batch of activations at every point, `[n, width]` each with the same `n`
    /// rows, or `None` at the end.
    pub fn next_points(&mut self) -> Result<Option<Vec<Tensor>>> {
        if self.position >= self.seqs.len() {
            return Ok(None);
        }
        let end = (self.position + self.per_forward).min(self.seqs.len());
        let rows = &self.seqs[self.position..end];
        self.position = end;
        // Only the blocks up to the last hook point read.
        let stop = self.points.iter().map(|p| p.layer().unwrap_or(0)).max().unwrap_or(0);
        let out = self.model.forward(&Batch::new(rows)?, &Hooks::new().cache(self.points.iter().copied()).last_logits_only().stop_after_layer(stop))?;
        let kept = kept_rows(rows, &self.excluded)?;
        let take = |p: HookPoint| -> Result<Tensor> {
            let t = out.cache.get(p)?.to_dtype(DType::F32)?;
            let (b, n) = (t.dim(0)?, t.dim(1)?);
            let t = t.reshape((b * n, ()))?;
            Ok(t.index_select(&kept, 0)?.contiguous()?)
        };
        Ok(Some(self.points.iter().map(|&p| take(p)).collect::<Result<Vec<_>>>()?))
    }
}

/// Tokens whose positions give no activations: the model's BOS and end-of-text tokens.
pub fn excluded_tokens(model: &Model) -> Vec<u32> {
    model.tokenizer().bos_token().into_iter().chain(model.tokenizer().eos_tokens().iter().copied()).collect()
}

/// The row indices (sequence-major, `b * n + position`) of the positions that give
/// activations: all but each sequence's first position and the `excluded` tokens.
pub fn kept_rows(rows: &[Vec<u32>], excluded: &[u32]) -> Result<Tensor> {
    let n = rows.first().map_or(0, Vec::len);
    let kept: Vec<u32> = rows
        .iter()
        .enumerate()
        .flat_map(|(b, row)| row.iter().enumerate().skip(1).filter(|(_, t)| !excluded.contains(t)).map(move |(p, _)| (b * n + p) as u32))
        .collect();
    Ok(Tensor::new(kept, &candle_core::Device::Cpu)?)
}

/// How deep `corpus_files` walks into a corpus folder.
const MAX_CORPUS_DEPTH: usize = 8;

/// The files of corpus folders (walked in sorted order, up to 8 levels deep) and the files
/// given, less those with a name in `exclude`, or under a folder with a name in `exclude`
/// (below a folder given), e.g. a collection held out for evaluation.
pub fn corpus_files(paths: &[PathBuf], exclude: &[String]) -> Result<Vec<PathBuf>> {
    fn walk(dir: &Path, depth: usize, exclude: &[String], out: &mut Vec<PathBuf>) -> Result<()> {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.filter_map(|e| e.ok().map(|e| e.path())).collect();
        entries.sort();
        for e in entries {
            if e.file_name().and_then(|n| n.to_str()).is_some_and(|n| exclude.iter().any(|x| x == n)) {
                continue;
            }
            if e.is_dir() {
                if depth < MAX_CORPUS_DEPTH {
                    walk(&e, depth + 1, exclude, out)?;
                }
            } else if e.is_file() && is_text_name(&e) {
                out.push(e);
            }
        }
        Ok(())
    }
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
        if meta.is_dir() {
            walk(p, 1, exclude, &mut out)?;
        } else {
            out.push(p.clone());
        }
    }
    if out.is_empty() {
        return Err(Error::Invalid("no corpus files left (after --exclude)".into()));
    }
    Ok(out)
}

/// Leaves out fortune's index files (`.dat`) and its UTF-8 copies (`.u8`).
fn is_text_name(p: &Path) -> bool {
    !matches!(p.extension().and_then(|e| e.to_str()), Some("dat" | "u8" | "gz" | "zip"))
}
