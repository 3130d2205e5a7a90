//! Prompt sets and generators with counterfactuals. Tasks build inputs (`inputs::Contrast`,
//! `inputs::TaskPrompt`) and import no method.

pub mod ioi;

use crate::error::{Error, Result};
use crate::inputs::TaskPrompt;
use crate::model::Model;
pub use crate::rng::Rng;

crate::options! {
    /// A generated prompt set: which task, how many prompts, the seed and the corruption.
    pub struct TaskSpec {
        /// The task: `ioi`.
        pub task: String = "ioi".to_string(),
        /// Prompts in the set.
        pub n: usize = 64,
        /// Seed of the generator.
        pub seed: u64 = 0,
        /// The task's corruption (`ioi`: name_swap or abc); the task's own default when absent.
        pub corruption: Option<String> = None,
    }
}

/// The tasks, with what each one is.
pub const TASKS: &[(&str, &str)] = &[("ioi", "indirect object identification (Wang et al. 2022): \"When Mary and John went to the store, John gave a drink to\" → \" Mary\"")];

/// The prompts of a task set, with their features and groups.
pub fn generate(model: &Model, spec: &TaskSpec) -> Result<Vec<TaskPrompt>> {
    match spec.task.as_str() {
        "ioi" => {
            let corruption = match spec.corruption.as_deref() {
                None => ioi::Corruption::NameSwap,
                Some(c) => c.parse()?,
            };
            let prompts = ioi::generate(model, spec.n, spec.seed, corruption)?;
            ioi::scrub_prompts(model, &prompts)
        }
        other => Err(Error::Invalid(format!(
            "unknown task `{}`; the tasks are: {}",
            crate::error::printable(&other),
            TASKS.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
        ))),
    }
}
