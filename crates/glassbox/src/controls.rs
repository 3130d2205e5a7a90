//! Progress and cancellation of a running method. A front end sets `Controls` for the duration
//! of a call (`with`); the method reports how far it is (`step`) and checks whether it should
//! stop (`check`) between its batches, on the thread that called it. Methods need no extra
//! parameter for either, and a call without controls reports nothing and never stops early.
//!
//! Front ends: the CLI draws a progress bar on a terminal and sets the cancel flag on Ctrl-C;
//! the dashboard publishes the progress on `/api/status`; Python forwards it to a callback (or
//! tqdm) and sets the flag when the interpreter has a pending `KeyboardInterrupt`.

use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How far a run is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// Units done in this stage.
    pub done: usize,
    /// Units in this stage.
    pub total: usize,
    /// What the run is doing (`attribution`, `patching`, ...).
    pub stage: String,
}

/// A function that receives progress.
pub type ProgressFn = Arc<dyn Fn(&Progress) + Send + Sync>;

/// What a front end gives a run: where progress goes, and the flag that stops it.
#[derive(Clone, Default)]
pub struct Controls {
    /// Called at each step.
    pub progress: Option<ProgressFn>,
    /// When set, the run stops at its next check with `Error::Cancelled`.
    pub cancel: Option<Arc<AtomicBool>>,
    /// Called at each check: returns true to stop (e.g. Python's pending signals).
    pub poll: Option<Arc<dyn Fn() -> bool + Send + Sync>>,
}

thread_local! {
    static CURRENT: RefCell<Option<Controls>> = const { RefCell::new(None) };
}

/// Runs `f` with `controls` in effect on this thread (the previous ones back afterwards).
pub fn with<R>(controls: &Controls, f: impl FnOnce() -> R) -> R {
    let previous = CURRENT.with(|c| c.replace(Some(controls.clone())));
    struct Restore(Option<Controls>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let p = self.0.take();
            CURRENT.with(|c| *c.borrow_mut() = p);
        }
    }
    let _restore = Restore(previous);
    f()
}

/// The controls in effect on this thread (the defaults, doing nothing, when none are).
pub fn current() -> Controls {
    CURRENT.with(|c| c.borrow().clone()).unwrap_or_default()
}

/// Reports progress to the current controls, if any.
pub fn step(done: usize, total: usize, stage: &str) {
    let f = CURRENT.with(|c| c.borrow().as_ref().and_then(|c| c.progress.clone()));
    if let Some(f) = f {
        f(&Progress { done, total, stage: stage.to_string() });
    }
}

/// `Err(Error::Cancelled)` when the current controls ask the run to stop.
pub fn check() -> Result<()> {
    let (flag, poll) = CURRENT.with(|c| c.borrow().as_ref().map_or((None, None), |c| (c.cancel.clone(), c.poll.clone())));
    if flag.is_some_and(|f| f.load(Ordering::Relaxed)) || poll.is_some_and(|p| p()) {
        return Err(Error::Cancelled);
    }
    Ok(())
}

/// `step` then `check`: what a method's loop calls after each batch.
pub fn tick(done: usize, total: usize, stage: &str) -> Result<()> {
    step(done, total, stage);
    check()
}
