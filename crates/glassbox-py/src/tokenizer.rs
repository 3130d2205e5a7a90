//! `model.tokenizer`: the model's tokenizer as TransformerLens code reaches it (the calls a
//! Hugging Face tokenizer answers that such code makes), on glassbox's own tokenizer.

use std::sync::Arc;

use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyString};

use crate::errors::{input, IntoPy};

/// The model's tokenizer: `encode`, `decode`, `tokenizer(text)["input_ids"]`,
/// `convert_ids_to_tokens`, `bos_token_id`, `eos_token_id`, `vocab_size`.
#[pyclass(module = "glassbox._native", frozen, name = "Tokenizer")]
pub struct Tokenizer {
    pub model: Arc<glassbox::Model>,
}

impl Tokenizer {
    fn ids(&self, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        let t = self.model.tokenizer();
        if text.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids: Vec<u32> = if add_special_tokens { t.bos().into_iter().collect() } else { Vec::new() };
        ids.extend(t.encode_plain(text).py_err()?);
        Ok(ids)
    }
}

#[pymethods]
impl Tokenizer {
    /// Token ids of `text`; with `add_special_tokens` the BOS token where the model puts one.
    #[pyo3(signature = (text, add_special_tokens=true))]
    fn encode(&self, text: &str, add_special_tokens: bool) -> PyResult<Vec<u32>> {
        self.ids(text, add_special_tokens)
    }

    /// The text of token ids.
    #[pyo3(signature = (ids, skip_special_tokens=false))]
    fn decode(&self, ids: Vec<i64>, skip_special_tokens: bool) -> PyResult<String> {
        let v = self.model.config().d_vocab;
        let bos = self.model.tokenizer().bos_token();
        let ids: Vec<u32> = ids
            .into_iter()
            .map(|i| u32::try_from(i).ok().filter(|&i| (i as usize) < v).ok_or_else(|| input(format!("token id {i} is outside the vocabulary of {v} tokens"))))
            .collect::<PyResult<_>>()?;
        let kept: Vec<u32> = ids.into_iter().filter(|&i| !(skip_special_tokens && Some(i) == bos)).collect();
        Ok(self.model.tokenizer().decode(&kept))
    }

    /// Each id's token text.
    fn convert_ids_to_tokens(&self, ids: Vec<u32>) -> Vec<String> {
        ids.iter().map(|&i| self.model.tokenizer().token_str(i)).collect()
    }

    /// `{"input_ids": ids}` of a text, or of each text of a list (a Hugging Face tokenizer's call).
    #[pyo3(signature = (text, add_special_tokens=true))]
    fn __call__<'py>(&self, py: Python<'py>, text: &Bound<'py, PyAny>, add_special_tokens: bool) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        if let Ok(s) = text.cast::<PyString>() {
            d.set_item("input_ids", self.ids(&s.to_cow()?, add_special_tokens)?)?;
            return Ok(d);
        }
        let texts: Vec<String> = text.extract().map_err(|_| pyo3::exceptions::PyTypeError::new_err("give a text (str) or a list of texts"))?;
        let rows = texts.iter().map(|t| self.ids(t, add_special_tokens)).collect::<PyResult<Vec<_>>>()?;
        d.set_item("input_ids", PyList::new(py, rows)?)?;
        Ok(d)
    }

    /// The BOS token's id (None when the model's files name none).
    #[getter]
    fn bos_token_id(&self) -> Option<u32> {
        self.model.tokenizer().bos_token()
    }

    /// The first end-of-text token's id (None when the model's files name none).
    #[getter]
    fn eos_token_id(&self) -> Option<u32> {
        self.model.tokenizer().eos_tokens().first().copied()
    }

    /// The tokenizer's vocabulary size.
    #[getter]
    fn vocab_size(&self) -> usize {
        self.model.tokenizer().vocab_size()
    }

    fn __len__(&self) -> usize {
        self.model.tokenizer().vocab_size()
    }

    fn __repr__(&self) -> String {
        format!("Tokenizer({:?}, {} tokens)", self.model.name(), self.model.tokenizer().vocab_size())
    }
}
