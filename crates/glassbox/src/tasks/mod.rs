//! Prompt sets and generators with counterfactuals. Tasks build inputs (`inputs::Contrast`,
//! `inputs::TaskPrompt`) and import no method.

pub mod arithmetic;
pub mod docstring;
pub mod greater_than;
pub mod induction;
pub mod ioi;
pub mod mcqa;

use crate::error::{Error, Result};
use crate::inputs::{Contrast, TaskPrompt};
use crate::model::Model;
pub use crate::rng::Rng;

crate::options! {
    /// A generated prompt set: which task, how many prompts, the seed and the corruption.
    pub struct TaskSpec {
        /// The task: `ioi`, `arithmetic`, `docstring`, `greater-than`, `induction` or `mcqa`.
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
pub const TASKS: &[(&str, &str)] = &[
    ("ioi", "indirect object identification (Wang et al. 2022): \"When Mary and John went to the store, John gave a drink to\" → \" Mary\""),
    ("arithmetic", "two-operand addition and subtraction (MIB): \"3+4=\" → \"7\", counterfactual operands with another result"),
    ("greater-than", "greater-than (Hanna et al. 2023): \"The war lasted from the year 1732 to the year 17\" → a later decade than an earlier one, counterfactual start year 1701"),
    ("induction", "repeated random tokens (Olsson et al. 2022): \"A B C D … A B\" → \" C\", counterfactual with C changed in the first copy"),
    ("docstring", "docstring argument completion (Heimersheim & Janiak 2023): \"def run(self, load, size, files, last): … :param load: … :param size: … :param\" → \" files\", counterfactual def with other names"),
    ("mcqa", "multiple choice with letter answers (MIB's MCQA): \"The apple is red. What color is the apple?\\nA. blue\\nB. red …\\nAnswer:\" → \" B\", counterfactual with the colour under another letter"),
];

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
        "arithmetic" | "docstring" | "greater-than" | "induction" | "mcqa" if spec.corruption.is_some() => {
            Err(Error::Invalid(format!("the task `{}` has one counterfactual of its own; leave out corruption", spec.task)))
        }
        "arithmetic" => arithmetic::generate(model, spec.n, spec.seed),
        "docstring" => docstring::generate(model, spec.n, spec.seed),
        "greater-than" => greater_than::generate(model, spec.n, spec.seed),
        "induction" => induction::generate(model, spec.n, spec.seed),
        "mcqa" => mcqa::generate(model, spec.n, spec.seed),
        other => Err(Error::Invalid(format!(
            "unknown task `{}`; the tasks are: {}",
            crate::error::printable(&other),
            TASKS.iter().map(|t| t.0).collect::<Vec<_>>().join(", ")
        ))),
    }
}

/// Whether `text` is one token of the model (encoded without BOS).
pub(crate) fn single_token(model: &Model, text: &str) -> bool {
    model.tokenizer().encode_plain(text).is_ok_and(|ids| ids.len() == 1)
}

/// One prompt pair a generator proposes: clean and counterfactual prompts, correct and
/// incorrect answers, features, group.
type Proposal = (String, String, String, String, std::collections::BTreeMap<String, String>, String);

/// `n` prompts from `propose(i)`, each kept when its answers are single tokens and its two
/// prompts tokenize to the same length; a proposal that fails is drawn again (at most 50 times
/// a prompt, then an error naming the task).
pub(crate) fn sample_pairs(model: &Model, n: usize, task: &str, mut propose: impl FnMut(usize) -> Proposal) -> Result<Vec<TaskPrompt>> {
    crate::limits::check_count("the number of prompts", n, crate::limits::N_PROMPTS)?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let mut last = None;
        for _ in 0..50 {
            let (clean, corrupted, correct, incorrect, features, group) = propose(i);
            match Contrast::new(model, &clean, &correct, &incorrect, Some(&corrupted)) {
                Ok(contrast) => {
                    out.push(TaskPrompt { contrast, features, group });
                    last = None;
                    break;
                }
                Err(e) => last = Some(e),
            }
        }
        if let Some(e) = last {
            return Err(Error::Invalid(format!("the task `{task}` finds no prompt pair this model tokenizes as it needs (single-token answers, equal lengths): {e}")));
        }
    }
    Ok(out)
}
