//! A method's input: what front ends give (`InputSpec`), resolved against a model
//! (`Input`: tokenized and checked), and what the envelope records of it (`InputRecord`).

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::inputs::{Contrast, Prompt, TaskPrompt};
use crate::model::Model;
use crate::tasks::TaskSpec;

/// What a method reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputKind {
    /// A clean prompt, a corrupted one of the same length (by default the answers' words
    /// swapped) and two one-token answers.
    Contrast,
    /// A contrast, or a generated prompt set (`task`).
    ContrastOrTask,
    /// A prompt and two one-token answers.
    Prompt,
    /// A prompt (text) alone.
    Text,
    /// A generated prompt set with features (`task`).
    Task,
    /// Nothing but the weights.
    Weights,
}

impl InputKind {
    /// The input keys this kind reads (a subset of `InputSpec`'s fields).
    pub fn keys(self) -> &'static [&'static str] {
        match self {
            InputKind::Contrast => &["prompt", "correct", "incorrect", "corrupted"],
            InputKind::ContrastOrTask => &["prompt", "correct", "incorrect", "corrupted", "task", "n", "seed", "corruption", "prompts"],
            InputKind::Prompt => &["prompt", "correct", "incorrect"],
            InputKind::Text => &["prompt"],
            InputKind::Task => &["task", "n", "seed", "corruption", "prompts"],
            InputKind::Weights => &[],
        }
    }

    /// Whether one row of a dataset (a prompt with its answers) is this kind of input.
    pub fn per_prompt(self) -> bool {
        matches!(self, InputKind::Contrast | InputKind::ContrastOrTask | InputKind::Prompt | InputKind::Text)
    }
}

crate::options! {
    /// What a front end sends as a method's input; each method reads the keys of its
    /// `InputKind`.
    pub struct InputSpec {
        /// The prompt.
        pub prompt: Option<String> = None,
        /// The answer the model should give, e.g. " Mary" (one token, usually with its leading space).
        pub correct: Option<String> = None,
        /// The competing answer, e.g. " John" (one token).
        pub incorrect: Option<String> = None,
        /// The corrupted prompt (as many tokens as the prompt); by default the two answers' words swapped.
        pub corrupted: Option<String> = None,
        /// A generated prompt set instead of one prompt: the task (ioi, arithmetic, docstring, greater-than, induction, mcqa).
        pub task: Option<String> = None,
        /// Prompts in the task set.
        pub n: Option<usize> = None,
        /// Seed of the task's generator.
        pub seed: Option<u64> = None,
        /// The task's corruption (ioi: name_swap or abc).
        pub corruption: Option<String> = None,
        /// A prompt set from a JSONL file instead of a generated task: one object per line with
        /// `prompt`, `correct`, `incorrect`, optionally `corrupted`, `id` and `group` (batch's format).
        pub prompts: Option<String> = None,
    }
}

impl InputSpec {
    /// A contrast's input.
    pub fn contrast(prompt: &str, correct: &str, incorrect: &str, corrupted: Option<&str>) -> InputSpec {
        InputSpec { prompt: Some(prompt.into()), correct: Some(correct.into()), incorrect: Some(incorrect.into()), corrupted: corrupted.map(Into::into), ..Default::default() }
    }

    /// A generated task set's input.
    pub fn task(task: &str, n: usize, seed: u64) -> InputSpec {
        InputSpec { task: Some(task.into()), n: Some(n), seed: Some(seed), ..Default::default() }
    }

    fn text<'a>(&'a self, v: &'a Option<String>, key: &str, method: &str) -> Result<&'a str> {
        v.as_deref().ok_or_else(|| Error::Invalid(format!("`{method}` needs `{key}` in its input (the --{key} flag)")))
    }

    fn task_spec(&self) -> TaskSpec {
        let d = TaskSpec::default();
        TaskSpec { task: self.task.clone().unwrap_or(d.task), n: self.n.unwrap_or(d.n), seed: self.seed.unwrap_or(d.seed), corruption: self.corruption.clone() }
    }
}

/// A method's input, resolved against a model (tokenized and checked).
#[derive(Debug, Clone)]
pub enum Input {
    /// A contrast.
    Contrast(Contrast),
    /// A prompt with its answers (and its text).
    Prompt(Prompt, String),
    /// A prompt's text and tokens.
    Text(String, Vec<u32>),
    /// A generated prompt set.
    Set(TaskSpec, Vec<TaskPrompt>),
    /// Nothing (the weights).
    Weights,
}

impl Input {
    /// The contrast, or an error saying the method needs one.
    pub fn contrast(&self) -> Result<&Contrast> {
        match self {
            Input::Contrast(c) => Ok(c),
            _ => Err(Error::Invalid("this method needs a contrast: a prompt, two answers and optionally a corrupted prompt".into())),
        }
    }

    /// The prompt with its answers.
    pub fn prompt(&self) -> Result<&Prompt> {
        match self {
            Input::Prompt(p, _) => Ok(p),
            _ => Err(Error::Invalid("this method needs a prompt and two answers".into())),
        }
    }

    /// The prompt's text and tokens.
    pub fn text(&self) -> Result<(&str, &[u32])> {
        match self {
            Input::Text(t, ids) => Ok((t, ids)),
            _ => Err(Error::Invalid("this method needs a prompt".into())),
        }
    }

    /// The task set's prompts.
    pub fn set(&self) -> Result<&[TaskPrompt]> {
        match self {
            Input::Set(_, p) => Ok(p),
            _ => Err(Error::Invalid("this method needs a generated prompt set (--task)".into())),
        }
    }

    /// The contrasts of a task set, or the one contrast.
    pub fn contrasts(&self) -> Result<Vec<Contrast>> {
        match self {
            Input::Contrast(c) => Ok(vec![c.clone()]),
            Input::Set(_, p) => Ok(p.iter().map(|t| t.contrast.clone()).collect()),
            _ => Err(Error::Invalid("this method needs a contrast or a prompt set".into())),
        }
    }
}

/// Resolves `spec` into `kind`'s input for `model`: tokenized and checked. Keys the kind does
/// not read are an error naming them.
pub fn resolve_input(model: &Model, kind: InputKind, spec: &InputSpec, method: &str) -> Result<Input> {
    let given = serde_json::to_value(spec).map_err(|e| Error::Invalid(e.to_string()))?;
    if let Value::Object(m) = &given {
        let extra: Vec<&String> = m.iter().filter(|(k, v)| !v.is_null() && !kind.keys().contains(&k.as_str())).map(|(k, _)| k).collect();
        if !extra.is_empty() {
            let takes = if kind.keys().is_empty() { "no input".to_string() } else { kind.keys().join(", ") };
            return Err(Error::Invalid(format!(
                "`{method}` does not read {} from its input; it takes {takes}",
                extra.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            )));
        }
    }
    let is_task = spec.task.is_some() || spec.prompts.is_some();
    Ok(match kind {
        InputKind::Contrast => contrast_input(model, spec, method)?,
        InputKind::ContrastOrTask if is_task => task_input(model, spec)?,
        InputKind::ContrastOrTask => contrast_input(model, spec, method)?,
        InputKind::Task => task_input(model, spec)?,
        InputKind::Prompt => {
            let (p, c, i) = (spec.text(&spec.prompt, "prompt", method)?, spec.text(&spec.correct, "correct", method)?, spec.text(&spec.incorrect, "incorrect", method)?);
            let prompt = Prompt::new(model, p, c, i)?;
            prompt.check(model)?;
            Input::Prompt(prompt, p.to_string())
        }
        InputKind::Text => {
            let p = spec.text(&spec.prompt, "prompt", method)?;
            Input::Text(p.to_string(), model.tokenize(p)?)
        }
        InputKind::Weights => Input::Weights,
    })
}

fn contrast_input(model: &Model, spec: &InputSpec, method: &str) -> Result<Input> {
    let (p, c, i) = (spec.text(&spec.prompt, "prompt", method)?, spec.text(&spec.correct, "correct", method)?, spec.text(&spec.incorrect, "incorrect", method)?);
    let corrupted = spec.corrupted.as_deref().filter(|s| !s.is_empty());
    Ok(Input::Contrast(Contrast::new(model, p, c, i, corrupted)?))
}

fn task_input(model: &Model, spec: &InputSpec) -> Result<Input> {
    if let Some(path) = &spec.prompts {
        if spec.task.is_some() || spec.n.is_some() || spec.corruption.is_some() {
            return Err(Error::Invalid("give either a prompts file or a generated task (task, n, corruption), not both".into()));
        }
        let prompts = prompts_file(model, std::path::Path::new(path))?;
        let t = TaskSpec { task: "given".into(), n: prompts.len(), seed: 0, corruption: None };
        return Ok(Input::Set(t, prompts));
    }
    let t = spec.task_spec();
    let prompts = crate::tasks::generate(model, &t)?;
    Ok(Input::Set(t, prompts))
}

/// The contrasts of a JSONL prompt file (`batch::read_jsonl`'s format), each tokenized and
/// checked; any line left out is an error naming it.
fn prompts_file(model: &Model, path: &std::path::Path) -> Result<Vec<TaskPrompt>> {
    let (items, errors) = crate::batch::read_jsonl(path)?;
    if let Some(e) = errors.first() {
        return Err(Error::Invalid(format!("{} line {}: {} ({} lines left out in all)", path.display(), e.line, e.message, errors.len())));
    }
    if items.is_empty() {
        return Err(Error::Invalid(format!("{} holds no prompts", path.display())));
    }
    items
        .iter()
        .map(|it| {
            let at = |e: Error| Error::Invalid(format!("{} line {}: {e}", path.display(), it.line));
            let contrast = Contrast::new(model, &it.prompt, &it.correct, &it.incorrect, it.corrupted.as_deref()).map_err(at)?;
            contrast.check(model).map_err(at)?;
            Ok(TaskPrompt { contrast, features: Default::default(), group: it.group.clone().unwrap_or_default() })
        })
        .collect()
}

/// What the input was, as the envelope records it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InputRecord {
    /// The prompt (one-prompt inputs).
    pub prompt: Option<String>,
    /// The corrupted prompt (contrasts).
    pub corrupted_prompt: Option<String>,
    /// The correct answer.
    pub correct: Option<String>,
    /// The incorrect answer.
    pub incorrect: Option<String>,
    /// The prompt's tokens as text (one-prompt inputs).
    pub tokens: Vec<String>,
    /// The generated set (task inputs).
    pub task: Option<TaskSpec>,
}

impl InputRecord {
    /// The record of a resolved input.
    pub fn of(model: &Model, input: &Input) -> InputRecord {
        let text = |id: u32| model.to_string(&[id]);
        match input {
            Input::Contrast(c) => InputRecord {
                prompt: Some(c.clean_prompt.clone()),
                corrupted_prompt: Some(c.corrupted_prompt.clone()),
                correct: Some(c.correct.clone()),
                incorrect: Some(c.incorrect.clone()),
                tokens: model.to_str_tokens(&c.clean),
                task: None,
            },
            Input::Prompt(p, t) => InputRecord {
                prompt: Some(t.clone()),
                correct: Some(text(p.correct)),
                incorrect: Some(text(p.incorrect)),
                tokens: model.to_str_tokens(&p.tokens),
                ..Default::default()
            },
            Input::Text(t, ids) => InputRecord { prompt: Some(t.clone()), tokens: model.to_str_tokens(ids), ..Default::default() },
            Input::Set(t, _) => InputRecord { task: Some(t.clone()), ..Default::default() },
            Input::Weights => InputRecord::default(),
        }
    }
}
