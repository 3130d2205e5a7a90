#![warn(clippy::undocumented_unsafe_blocks)]
//! The `glassbox` Python package's native module (`glassbox._native`): the model, its hooks and
//! cache with numpy arrays, and every method, each computed by the Rust library with the GIL
//! released. Results cross as plain Python objects made from the library's serde results; the
//! pure-Python layer (`python/glassbox/`) shapes them into the reference tool's API.

use pyo3::prelude::*;

mod arrays;
mod batch;
mod cache;
mod errors;
mod hooks;
mod kwargs;
mod methods;
mod model;
mod sae;
mod tokenizer;
mod weights;

/// The native module.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    // The thread settings glassbox's binaries use (glassbox::threads::candle_env) are set by
    // `glassbox/__init__.py` through os.environ before this module is imported.
    // Freed memory kept for reuse (see glassbox::threads::tune_allocator).
    glassbox::threads::tune_allocator();
    errors::register(m)?;
    m.add_class::<model::Model>()?;
    m.add_class::<model::Config>()?;
    m.add_class::<hooks::HookPoint>()?;
    m.add_class::<hooks::Intervention>()?;
    m.add_class::<cache::ActivationCache>()?;
    m.add_class::<tokenizer::Tokenizer>()?;
    methods::register(m)?;
    sae::register(m)?;
    batch::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
