//! Tensors to numpy arrays and back: one copy out of candle's storage (the vector then moves
//! into the array), one copy in (numpy's buffer into a tensor).

use candle_core::{DType, Device, Tensor};
use numpy::{PyArrayDyn, PyArrayMethods, PyUntypedArrayMethods};
use pyo3::prelude::*;

use crate::errors::{candle, input};

/// A float32 numpy array holding `t` (any float dtype, converted).
pub fn to_numpy<'py>(py: Python<'py>, t: &Tensor) -> PyResult<Bound<'py, PyArrayDyn<f32>>> {
    let dims = t.dims().to_vec();
    let flat: Vec<f32> = t.detach().to_dtype(DType::F32).and_then(|x| x.flatten_all()).and_then(|x| x.to_vec1()).map_err(candle)?;
    numpy::PyArray1::from_vec(py, flat).reshape(dims)
}

/// A tensor from a numpy array of any real dtype (read as float32), with `dims` checked when
/// given. `what` names the array in errors.
pub fn from_numpy(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<Tensor> {
    let np = obj.py().import("numpy")?;
    // Complex values would lose their imaginary part, strings and objects parse or fail by
    // accident: only real numbers (and booleans) are read.
    if let Ok(kind) = obj.getattr("dtype").and_then(|d| d.getattr("kind")).and_then(|k| k.extract::<String>()) {
        if !matches!(kind.as_str(), "f" | "i" | "u" | "b") {
            let dtype = obj.getattr("dtype").map(|d| d.to_string()).unwrap_or_default();
            return Err(input(format!("{what} has dtype {dtype}; give real numbers (float32 is used)")));
        }
    }
    let arr = np.call_method1("ascontiguousarray", (obj, "float32")).map_err(|e| input(format!("{what} is not an array of numbers ({e})")))?;
    let arr = arr.cast_into::<PyArrayDyn<f32>>().map_err(|_| input(format!("{what} is not a numpy array of numbers")))?;
    let ro = arr.readonly();
    let dims = ro.shape().to_vec();
    let data = ro.as_slice().map_err(|e| input(format!("{what}: {e}")))?.to_vec();
    if data.iter().any(|v| !v.is_finite()) {
        return Err(crate::errors::NonFiniteError::new_err(format!("{what} holds NaN or infinite values")));
    }
    Tensor::from_vec(data, dims, &Device::Cpu).map_err(candle)
}

/// Token ids from a Python int sequence or integer array (1-D `[p]` or 2-D `[b, p]`): one
/// row per sequence.
pub fn token_rows(obj: &Bound<'_, PyAny>) -> PyResult<Vec<Vec<u32>>> {
    let np = obj.py().import("numpy")?;
    let arr = np.call_method1("asarray", (obj,))?;
    let kind: String = arr.getattr("dtype")?.getattr("kind")?.extract()?;
    if !matches!(kind.as_str(), "i" | "u") {
        return Err(input("tokens must be integers (a list of ids or an integer array from to_tokens)"));
    }
    let ndim: usize = arr.getattr("ndim")?.extract()?;
    let arr = np.call_method1("ascontiguousarray", (arr, "int64"))?;
    let rows: Vec<Vec<i64>> = match ndim {
        1 => vec![arr.call_method0("tolist")?.extract()?],
        2 => arr.call_method0("tolist")?.extract()?,
        n => return Err(input(format!("tokens must be 1-D [positions] or 2-D [batch, positions], not {n}-D"))),
    };
    rows.into_iter()
        .map(|r| {
            r.into_iter()
                .map(|t| u32::try_from(t).map_err(|_| input(format!("token id {t} is not a vocabulary index"))))
                .collect()
        })
        .collect()
}
