//! Keyword arguments read by name from `**kwargs`, for the functions whose Python signatures
//! take many of them (TransformerLens' `generate`, dataset runs): each is taken once, with its
//! type checked, and a key that no one took is an error that lists the accepted ones.

use pyo3::conversion::FromPyObjectOwned;
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::input;

/// The keyword arguments of one call.
pub struct Kwargs<'py> {
    dict: Option<Bound<'py, PyDict>>,
    taken: Vec<&'static str>,
    what: &'static str,
}

impl<'py> Kwargs<'py> {
    /// The keyword arguments of `what` (a function's name, for messages).
    pub fn new(dict: Option<&Bound<'py, PyDict>>, what: &'static str) -> Self {
        Kwargs { dict: dict.cloned(), taken: Vec::new(), what }
    }

    /// The argument `name` (`None` when absent or `None`).
    pub fn get<T: FromPyObjectOwned<'py>>(&mut self, name: &'static str) -> PyResult<Option<T>> {
        self.taken.push(name);
        let Some(d) = &self.dict else { return Ok(None) };
        match d.get_item(name)? {
            Some(v) if !v.is_none() => v.extract::<T>().map(Some).map_err(|e| input(format!("{}: `{name}`: {}", self.what, Into::<PyErr>::into(e)))),
            _ => Ok(None),
        }
    }

    /// The argument `name`, or `default`.
    pub fn or<T: FromPyObjectOwned<'py>>(&mut self, name: &'static str, default: T) -> PyResult<T> {
        Ok(self.get(name)?.unwrap_or(default))
    }

    /// The argument `name` as a Python object (`None` when absent or `None`).
    pub fn object(&mut self, name: &'static str) -> PyResult<Option<Bound<'py, PyAny>>> {
        self.taken.push(name);
        let Some(d) = &self.dict else { return Ok(None) };
        Ok(d.get_item(name)?.filter(|v| !v.is_none()))
    }

    /// Error unless every keyword given was taken.
    pub fn finish(self) -> PyResult<()> {
        let Some(d) = self.dict else { return Ok(()) };
        for k in d.keys() {
            let k: String = k.extract()?;
            if !self.taken.contains(&k.as_str()) {
                return Err(input(format!("{}() got an unexpected keyword argument `{k}`; it takes: {}", self.what, self.taken.join(", "))));
            }
        }
        Ok(())
    }
}
