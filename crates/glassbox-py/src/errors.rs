//! glassbox's errors as Python exceptions: `GlassboxError` and its subclasses, each raised with
//! the library's message (which says what was wrong and how to fix it).

use glassbox::Error;
use pyo3::create_exception;
use pyo3::exceptions::PyException;
use pyo3::prelude::*;

create_exception!(glassbox, GlassboxError, PyException, "Any error glassbox reports.");
create_exception!(glassbox, ModelLoadError, GlassboxError, "A model could not be found, fetched or read (a missing, corrupt or unsupported file).");
create_exception!(glassbox, InputError, GlassboxError, "An input was wrong: a prompt, an answer, a hook name, a layer or head, an array's shape, an option.");
create_exception!(glassbox, NonFiniteError, GlassboxError, "A computation gave NaN or infinity (e.g. an intervention pushed activations beyond float range).");

/// Adds the exception classes to the module.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("GlassboxError", py.get_type::<GlassboxError>())?;
    m.add("ModelLoadError", py.get_type::<ModelLoadError>())?;
    m.add("InputError", py.get_type::<InputError>())?;
    m.add("NonFiniteError", py.get_type::<NonFiniteError>())?;
    Ok(())
}

/// The Python exception for a library error, with its (printable) message.
pub fn to_py(e: Error) -> PyErr {
    let msg = glassbox::error::printable(&e);
    match e {
        Error::Io { .. }
        | Error::NotAModel { .. }
        | Error::Corrupt { .. }
        | Error::UnknownArchitecture { .. }
        | Error::MissingMetadata { .. }
        | Error::MissingTensor { .. }
        | Error::UnusedTensors { .. }
        | Error::TensorShape { .. }
        | Error::Fetch { .. } => ModelLoadError::new_err(msg),
        Error::UnknownHook { .. }
        | Error::LayerOutOfRange { .. }
        | Error::HeadOutOfRange { .. }
        | Error::PositionOutOfRange { .. }
        | Error::EmptyPrompt
        | Error::PromptTooLong { .. }
        | Error::PromptTooLongText { .. }
        | Error::NotSingleToken { .. }
        | Error::Tokenizer(_)
        | Error::Intervention { .. }
        | Error::Invalid(_) => InputError::new_err(msg),
        Error::NonFinite(_) => NonFiniteError::new_err(msg),
        Error::Cancelled => pyo3::exceptions::PyKeyboardInterrupt::new_err(msg),
        _ => GlassboxError::new_err(msg),
    }
}

/// `Result<T, glassbox::Error>` → `PyResult<T>`.
pub trait IntoPy<T> {
    /// The value, or the error as its Python exception.
    fn py_err(self) -> PyResult<T>;
}

impl<T> IntoPy<T> for glassbox::Result<T> {
    fn py_err(self) -> PyResult<T> {
        self.map_err(to_py)
    }
}

/// An `InputError` with `msg`.
pub fn input(msg: impl Into<String>) -> PyErr {
    InputError::new_err(msg.into())
}

/// A candle error (a shape the library did not expect) as a `GlassboxError`.
pub fn candle(e: candle_core::Error) -> PyErr {
    to_py(Error::Candle(e))
}
