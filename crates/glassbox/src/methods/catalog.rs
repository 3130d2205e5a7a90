//! The method catalog: the one list of methods every front end is derived from. Each entry
//! has its name, a one-line summary, the kind of input it takes, its option struct (with a
//! machine-readable schema: `schema::OptionSchema`), the function that runs it, its text report
//! and its picture. The CLI's subcommands and flags, the dashboard's forms and endpoints,
//! dataset runs and the Python functions are all made from `CATALOG`; adding a method is one
//! file under `methods/` and one entry in `CATALOG`.
//!
//! Every run returns one `Envelope`: the method, glassbox's version, the model (name, family,
//! sha256 of the weights, BOS rule), the input (prompts, answers, token strings), the metric,
//! the options with every default filled in, the result, warnings and the seconds it took.

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::inputs::{Contrast, Prompt, TaskPrompt};
use crate::methods::*;
use crate::model::Model;
use crate::plot::{Plot, Svg};
use crate::sae::Sae;
use crate::schema::{parse_options, Field, OptionSchema};
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
            InputKind::ContrastOrTask => &["prompt", "correct", "incorrect", "corrupted", "task", "n", "seed", "corruption"],
            InputKind::Prompt => &["prompt", "correct", "incorrect"],
            InputKind::Text => &["prompt"],
            InputKind::Task => &["task", "n", "seed", "corruption"],
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
        /// A generated prompt set instead of one prompt: the task (ioi).
        pub task: Option<String> = None,
        /// Prompts in the task set.
        pub n: Option<usize> = None,
        /// Seed of the task's generator.
        pub seed: Option<u64> = None,
        /// The task's corruption (ioi: name_swap or abc).
        pub corruption: Option<String> = None,
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
    let is_task = spec.task.is_some();
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
    let t = spec.task_spec();
    let prompts = crate::tasks::generate(model, &t)?;
    Ok(Input::Set(t, prompts))
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

/// The model a result came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// Its name (the file stem or folder name).
    pub name: String,
    /// Its architecture family (`llama`, `gemma3`, ...).
    pub family: String,
    /// The sha256 of its weight files (for a folder: of each weight file in name order, chained).
    pub sha256: Option<String>,
    /// Whether prompts get the BOS token first.
    pub prepend_bos: bool,
}

impl ModelRecord {
    /// The record of `model`.
    pub fn of(model: &Model) -> ModelRecord {
        ModelRecord { name: model.name().to_string(), family: model.config().architecture.clone(), sha256: model.weights_sha256(), prepend_bos: model.tokenizer().bos().is_some() }
    }
}

/// One method's result with what it was run on and how.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Envelope {
    /// The method's name.
    pub method: String,
    /// glassbox's version.
    pub glassbox_version: String,
    /// The model.
    pub model: ModelRecord,
    /// The second model (cross-model methods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_b: Option<ModelRecord>,
    /// The input.
    pub input: InputRecord,
    /// The metric's name, for methods that measure one.
    pub metric: Option<String>,
    /// The options with every default filled in.
    pub options: Value,
    /// The result (the reference tool's key names where it has them).
    pub result: Value,
    /// Figures in the result that may mislead, and why.
    pub warnings: Vec<String>,
    /// Wall-clock seconds of the run.
    pub seconds: f64,
}

/// What a method may need beyond the model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Needs {
    /// A sparse autoencoder or transcoder (`--sae DIR`).
    pub sae: bool,
    /// A second model (`--model-b`).
    pub model_b: bool,
}

/// What a run has besides its input: the model, and what the method needs.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The model.
    pub model: &'a Model,
    /// The SAE, for methods that need one.
    pub sae: Option<&'a Sae>,
    /// The second model, for cross-model methods.
    pub model_b: Option<&'a Model>,
}

impl<'a> Context<'a> {
    /// A context with the model alone.
    pub fn new(model: &'a Model) -> Context<'a> {
        Context { model, sae: None, model_b: None }
    }

    fn sae(&self) -> Result<&'a Sae> {
        self.sae.ok_or_else(|| Error::Invalid("this method needs an SAE or transcoder (--sae DIR; Python: sae=)".into()))
    }

    fn model_b(&self) -> Result<&'a Model> {
        self.model_b.ok_or_else(|| Error::Invalid("this method compares two models; give the second (--model-b; Python: model_b=)".into()))
    }
}

/// One method, as every front end sees it.
pub trait Entry: Sync {
    /// The name (the CLI's subcommand, the dashboard's endpoint, the batch method).
    fn name(&self) -> &'static str;
    /// The Python function's name.
    fn python_name(&self) -> &'static str;
    /// What it does, in one line.
    fn summary(&self) -> &'static str;
    /// What input it reads.
    fn input(&self) -> InputKind;
    /// What it needs beyond the model.
    fn needs(&self) -> Needs;
    /// Its options' schema.
    fn fields(&self) -> Vec<Field>;
    /// The options checked against the schema, with every default filled in.
    fn resolve(&self, options: &Value) -> Result<Value>;
    /// Runs it: the result, the metric's name (when it has one) and warnings.
    fn run(&self, cx: &Context, input: &Input, options: &Value) -> Result<(Value, Option<String>, Vec<String>)>;
    /// Runs it on several contrasts at once where the method batches prompts (`None` where it
    /// does not: run each alone).
    fn run_many(&self, cx: &Context, inputs: &[Contrast], options: &Value) -> Option<Result<Vec<Value>>>;
    /// The result as text, the longest lists cut to `rows`.
    fn report(&self, result: &Value, rows: usize) -> Result<String>;
    /// The result's picture, for methods that draw one.
    fn plot(&self, result: &Value) -> Result<Option<Svg>>;
    /// Whether it draws a picture.
    fn has_plot(&self) -> bool;
}

/// A method's batched runs over several contrasts.
pub type Many<O, R> = fn(&Context, &[Contrast], &O) -> Result<Vec<R>>;

/// A method's definition: what `Entry` is made from.
pub struct Def<O, R> {
    /// The name.
    pub name: &'static str,
    /// The Python function's name.
    pub python: &'static str,
    /// One line.
    pub summary: &'static str,
    /// The input it reads.
    pub input: InputKind,
    /// What it needs.
    pub needs: Needs,
    /// Runs it.
    pub run: fn(&Context, &Input, &O) -> Result<R>,
    /// Its text.
    pub report: fn(&R, usize) -> String,
    /// Whether it has a picture (`R: Plot`).
    pub plot: Option<fn(&R) -> Svg>,
    /// Warnings about its figures.
    pub warnings: fn(&R, &O) -> Vec<String>,
    /// Batched runs over contrasts, where the method has them.
    pub many: Option<Many<O, R>>,
    /// The metric it measures, from its options.
    pub metric: fn(&O) -> Option<String>,
}

fn to_value<T: Serialize>(v: &T) -> Result<Value> {
    crate::check_finite(v)?;
    serde_json::to_value(v).map_err(|e| Error::Invalid(format!("encoding a result: {e}")))
}

fn from_value<T: DeserializeOwned>(v: &Value, name: &str) -> Result<T> {
    serde_json::from_value(v.clone()).map_err(|e| Error::Invalid(format!("this is not a `{name}` result: {e}")))
}

impl<O: OptionSchema + Sync, R: Serialize + DeserializeOwned + Sync> Entry for Def<O, R> {
    fn name(&self) -> &'static str {
        self.name
    }
    fn python_name(&self) -> &'static str {
        self.python
    }
    fn summary(&self) -> &'static str {
        self.summary
    }
    fn input(&self) -> InputKind {
        self.input
    }
    fn needs(&self) -> Needs {
        self.needs
    }
    fn fields(&self) -> Vec<Field> {
        O::fields()
    }
    fn resolve(&self, options: &Value) -> Result<Value> {
        Ok(crate::schema::resolved(&parse_options::<O>(options, self.name)?))
    }
    fn run(&self, cx: &Context, input: &Input, options: &Value) -> Result<(Value, Option<String>, Vec<String>)> {
        let o = parse_options::<O>(options, self.name)?;
        let r = (self.run)(cx, input, &o)?;
        Ok((to_value(&r)?, (self.metric)(&o), (self.warnings)(&r, &o)))
    }
    fn run_many(&self, cx: &Context, inputs: &[Contrast], options: &Value) -> Option<Result<Vec<Value>>> {
        let many = self.many?;
        Some(parse_options::<O>(options, self.name).and_then(|o| many(cx, inputs, &o)?.iter().map(to_value).collect()))
    }
    fn report(&self, result: &Value, rows: usize) -> Result<String> {
        Ok((self.report)(&from_value::<R>(result, self.name)?, rows))
    }
    fn has_plot(&self) -> bool {
        self.plot.is_some()
    }
    fn plot(&self, result: &Value) -> Result<Option<Svg>> {
        match self.plot {
            None => Ok(None),
            Some(f) => Ok(Some(f(&from_value::<R>(result, self.name)?))),
        }
    }
}

fn none<R, O>(_: &R, _: &O) -> Vec<String> {
    Vec::new()
}

fn no_metric<O>(_: &O) -> Option<String> {
    None
}

fn plot_of<R: Plot>(r: &R) -> Svg {
    r.plot()
}

const ONLY_MODEL: Needs = Needs { sae: false, model_b: false };

/// `analyze`'s result: one prompt's analysis, or a prompt set's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(untagged)]
pub enum AnalyzeResult {
    /// A prompt set (tried first: it has `n` and `bootstrap`).
    Set(analyze::SetAnalysis),
    /// One prompt.
    One(analyze::Analysis),
}

static NEXT_TOKENS: Def<next_tokens::NextTokenOptions, next_tokens::NextTokens> = Def {
    name: "run",
    python: "next_tokens",
    summary: "Tokenize a prompt and show the model's most likely next tokens.",
    input: InputKind::Text,
    needs: ONLY_MODEL,
    run: |cx, i, o| next_tokens::next_tokens(cx.model, i.text()?.1, o),
    report: crate::report::next_tokens,
    plot: None,
    warnings: none,
    many: None,
    metric: no_metric,
};

static ANALYZE: Def<analyze::AnalyzeOptions, AnalyzeResult> = Def {
    name: "analyze",
    python: "analyze",
    summary: "Find the circuit behind a prediction, with exact faithfulness figures (one prompt, or a task set with bootstrap intervals).",
    input: InputKind::ContrastOrTask,
    needs: ONLY_MODEL,
    run: |cx, i, o| match i {
        Input::Set(..) => Ok(AnalyzeResult::Set(analyze::analyze_set(cx.model, &i.contrasts()?, o, &mut |d, t, s| crate::controls::step(d, t, s))?)),
        _ => Ok(AnalyzeResult::One(analyze::analyze(cx.model, i.contrast()?, o)?)),
    },
    report: |r, rows| match r {
        AnalyzeResult::Set(s) => crate::report::set_analysis(s, rows),
        AnalyzeResult::One(a) => crate::report::analysis(a, rows),
    },
    plot: Some(|r| match r {
        AnalyzeResult::Set(s) => crate::plot::results::set_analysis(s),
        AnalyzeResult::One(a) => a.plot(),
    }),
    warnings: none,
    many: None,
    metric: |o| Some(o.metric.name().to_string()),
};

static ATTRIBUTION: Def<attribution::AttributionOptions, attribution::Attribution> = Def {
    name: "attribution",
    python: "attribute",
    summary: "Attribution patching (Taylor) or integrated gradients per head, MLP or attention output.",
    input: InputKind::Contrast,
    needs: ONLY_MODEL,
    run: |cx, i, o| attribution::attribute(cx.model, i.contrast()?, o),
    report: crate::report::attribution,
    plot: Some(plot_of),
    warnings: none,
    many: Some(|cx, cs, o| attribution::attribute_many(cx.model, cs, o)),
    metric: |o| Some(o.metric.name().to_string()),
};

static PATCH: Def<patching::PatchingOptions, patching::Patching> = Def {
    name: "patch",
    python: "exact_patching",
    summary: "Exact activation patching of every head and MLP (batched).",
    input: InputKind::Contrast,
    needs: ONLY_MODEL,
    run: |cx, i, o| patching::exact_patching(cx.model, i.contrast()?, o),
    report: crate::report::patching,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: |o| Some(o.metric.name().to_string()),
};

static PATH_PATCH: Def<path_patching::PathPatchingOptions, path_patching::PathPatching> = Def {
    name: "path-patch",
    python: "path_patching",
    summary: "Path patching: the effect of the paths from every earlier head to a receiver.",
    input: InputKind::Contrast,
    needs: ONLY_MODEL,
    run: |cx, i, o| path_patching::path_patching(cx.model, i.contrast()?, o),
    report: crate::report::path_patching,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: |o| Some(o.metric.name().to_string()),
};

static EDGES: Def<edges::EdgeOptions, edges::EdgeAttribution> = Def {
    name: "edges",
    python: "edge_attribution",
    summary: "Edge attribution patching (EAP, or EAP-IG) over every sender → receiver edge.",
    input: InputKind::Contrast,
    needs: ONLY_MODEL,
    run: |cx, i, o| edges::edge_attribution(cx.model, i.contrast()?, o),
    report: crate::report::edges,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: |o| Some(o.metric.name().to_string()),
};

static LOGIT_LENS: Def<logit_lens::LogitLensOptions, logit_lens::LogitLens> = Def {
    name: "logit-lens",
    python: "logit_lens",
    summary: "Logit lens: the logit difference and top tokens after every layer, and per-head direct effects.",
    input: InputKind::Prompt,
    needs: ONLY_MODEL,
    run: |cx, i, o| logit_lens::logit_lens(cx.model, i.prompt()?, o),
    report: crate::report::logit_lens,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: |_| Some("logit_diff".into()),
};

static TOKEN_ATTRIBUTION: Def<token_attribution::TokenAttributionOptions, token_attribution::TokenAttribution> = Def {
    name: "token-attribution",
    python: "token_attribution",
    summary: "Token saliency: gradient × input, or integrated gradients from a baseline.",
    input: InputKind::Prompt,
    needs: ONLY_MODEL,
    run: |cx, i, o| token_attribution::token_attribution(cx.model, i.prompt()?, o),
    report: crate::report::token_attribution,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: |_| Some("logit_diff".into()),
};

static ATTENTION: Def<attention::AttentionOptions, attention::AttentionPatterns> = Def {
    name: "attention",
    python: "attention_patterns",
    summary: "Attention patterns, entropy and head types of a prompt.",
    input: InputKind::Text,
    needs: ONLY_MODEL,
    run: |cx, i, o| attention::attention_patterns(cx.model, i.text()?.1, o),
    report: crate::report::attention,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: no_metric,
};

static STABILITY: Def<stability::StabilityOptions, stability::Stability> = Def {
    name: "stability",
    python: "attribution_stability",
    summary: "Attribution stability across random corruptions (per-head stability, Kendall τ-b).",
    input: InputKind::Prompt,
    needs: ONLY_MODEL,
    run: |cx, i, o| stability::attribution_stability_with_progress(cx.model, i.prompt()?, o, &mut |d, t| crate::controls::step(d, t, "corruptions")),
    report: crate::report::stability,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: |_| Some("logit_diff".into()),
};

static COMPOSITION: Def<composition::CompositionOptions, composition::Composition> = Def {
    name: "composition",
    python: "all_composition_scores",
    summary: "Q/K/V composition scores between heads (Elhage et al. 2021), from the weights alone.",
    input: InputKind::Weights,
    needs: ONLY_MODEL,
    run: |cx, _, o| composition::all_composition_scores(cx.model, &o.heads, o),
    report: crate::report::composition,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: no_metric,
};

static SCRUB: Def<scrubbing::ScrubOptions, scrubbing::Scrubbing> = Def {
    name: "scrub",
    python: "causal_scrubbing",
    summary: "Causal scrubbing of a head → feature hypothesis on a generated prompt set.",
    input: InputKind::Task,
    needs: ONLY_MODEL,
    run: |cx, i, o| scrubbing::causal_scrubbing(cx.model, i.set()?, o),
    report: crate::report::scrubbing,
    plot: None,
    warnings: none,
    many: None,
    metric: |_| Some("logit_diff".into()),
};

static FAITHFULNESS: Def<faithfulness::CircuitFaithfulnessOptions, faithfulness::Faithfulness> = Def {
    name: "faithfulness",
    python: "circuit_faithfulness",
    summary: "The exact faithfulness (sufficiency, comprehensiveness, F1) of a circuit you give.",
    input: InputKind::Contrast,
    needs: ONLY_MODEL,
    run: |cx, i, o| faithfulness::circuit_faithfulness(cx.model, i.contrast()?, o),
    report: crate::report::circuit_faithfulness,
    plot: None,
    warnings: none,
    many: None,
    metric: |o| Some(o.metric.name().to_string()),
};

static SAE_ATTRIBUTE: Def<sae_attribution::SaeAttributionOptions, sae_attribution::SaeAttribution> = Def {
    name: "sae-attribute",
    python: "sae_attribution",
    summary: "Which features of a sparse autoencoder or transcoder drive the prediction.",
    input: InputKind::Prompt,
    needs: Needs { sae: true, model_b: false },
    run: |cx, i, o| sae_attribution::sae_attribution(cx.model, cx.sae()?, i.prompt()?, o),
    report: crate::report::sae_attribution,
    plot: Some(plot_of),
    warnings: none,
    many: None,
    metric: |o| Some(o.metric.name().to_string()),
};

static SAE_CIRCUIT: Def<sae_attribution::CircuitFeatureOptions, sae_attribution::CircuitFeatures> = Def {
    name: "sae-circuit-features",
    python: "sae_circuit_features",
    summary: "Which active SAE features the circuit's heads write to at the answer position (a linear approximation, stated).",
    input: InputKind::Prompt,
    needs: Needs { sae: true, model_b: false },
    run: |cx, i, o| sae_attribution::circuit_features(cx.model, cx.sae()?, i.prompt()?, o),
    report: crate::report::circuit_features,
    plot: None,
    warnings: none,
    many: None,
    metric: |_| Some("logit_diff".into()),
};

static GENERATE: Def<steering::GenerationOptions, steering::GenerationResult> = Def {
    name: "generate",
    python: "generate_text",
    summary: "Continue a prompt (greedy or sampled), optionally steered by a vector at a hook point.",
    input: InputKind::Text,
    needs: ONLY_MODEL,
    run: |cx, i, o| steering::generate(cx.model, i.text()?.0, o),
    report: crate::report::generation,
    plot: None,
    warnings: none,
    many: None,
    metric: no_metric,
};

static ALIGN: Def<alignment::AlignmentOptions, alignment::Alignment> = Def {
    name: "align",
    python: "align",
    summary: "Cross-model circuit alignment (FCAS) of two models' top heads, with a Monte Carlo null.",
    input: InputKind::ContrastOrTask,
    needs: Needs { sae: false, model_b: true },
    run: |cx, i, o| {
        let b = cx.model_b()?;
        // Each model reads the input through its own tokenizer.
        let ca = i.contrasts()?;
        let cb = match i {
            Input::Set(t, _) => crate::tasks::generate(b, t)?.into_iter().map(|p| p.contrast).collect(),
            _ => {
                let c = i.contrast()?;
                let corrupted = (c.corruption == "given").then_some(c.corrupted_prompt.as_str());
                vec![Contrast::new(b, &c.clean_prompt, &c.correct, &c.incorrect, corrupted)?]
            }
        };
        alignment::align_models((cx.model, &ca), (b, &cb), o)
    },
    report: crate::report::alignment,
    plot: None,
    warnings: none,
    many: None,
    metric: |_| Some("logit_diff".into()),
};

/// Every method, in the order front ends list them.
pub static CATALOG: &[&dyn Entry] = &[
    &ANALYZE,
    &ATTRIBUTION,
    &PATCH,
    &PATH_PATCH,
    &EDGES,
    &LOGIT_LENS,
    &TOKEN_ATTRIBUTION,
    &ATTENTION,
    &STABILITY,
    &COMPOSITION,
    &SCRUB,
    &FAITHFULNESS,
    &SAE_ATTRIBUTE,
    &SAE_CIRCUIT,
    &GENERATE,
    &ALIGN,
    &NEXT_TOKENS,
];

/// The entry called `name` (its name or its Python name), or an error listing them.
pub fn entry(name: &str) -> Result<&'static dyn Entry> {
    CATALOG.iter().copied().find(|e| e.name() == name || e.python_name() == name).ok_or_else(|| {
        Error::Invalid(format!(
            "no method `{}`; the methods are: {}",
            crate::error::printable(&name),
            CATALOG.iter().map(|e| e.name()).collect::<Vec<_>>().join(", ")
        ))
    })
}

/// What front ends need to know of an entry, as data (`glassbox methods --json`, the
/// dashboard's `/api/methods`, Python's `glassbox.methods()`).
#[derive(Debug, Clone, Serialize)]
pub struct Description {
    /// The name.
    pub name: &'static str,
    /// The Python function.
    pub python_name: &'static str,
    /// One line.
    pub summary: &'static str,
    /// The input it reads.
    pub input: InputKind,
    /// The input keys it reads, with their schema.
    pub input_fields: Vec<Field>,
    /// What it needs beyond the model.
    pub needs: Needs,
    /// Its options.
    pub options: Vec<Field>,
    /// Whether it draws a picture.
    pub plots: bool,
}

/// The description of every entry.
pub fn describe() -> Vec<Description> {
    let spec = InputSpec::fields();
    CATALOG
        .iter()
        .map(|e| Description {
            name: e.name(),
            python_name: e.python_name(),
            summary: e.summary(),
            input: e.input(),
            input_fields: spec.iter().filter(|f| e.input().keys().contains(&f.name)).cloned().collect(),
            needs: e.needs(),
            options: e.fields(),
            plots: e.has_plot(),
        })
        .collect()
}

/// Runs `entry` on `input` with `options` (a JSON object of named values, or null), with the
/// current `controls` (progress, cancellation): the envelope of its result.
pub fn run(entry: &dyn Entry, cx: &Context, spec: &InputSpec, options: &Value) -> Result<Envelope> {
    let started = std::time::Instant::now();
    entry.resolve(options)?;
    let input = resolve_input(cx.model, entry.input(), spec, entry.name())?;
    run_input(entry, cx, &input, options, started)
}

/// Runs `entry` on an input already resolved against the model (a contrast built from token
/// ids, a prompt set); `started` is when the call began.
pub fn run_input(entry: &dyn Entry, cx: &Context, input: &Input, options: &Value, started: std::time::Instant) -> Result<Envelope> {
    let resolved = entry.resolve(options)?;
    let needs = entry.needs();
    if needs.model_b {
        cx.model_b()?;
    }
    if needs.sae {
        cx.sae()?.check(cx.model)?;
    }
    let fits = match (entry.input(), input) {
        (InputKind::Contrast, Input::Contrast(c)) => c.check(cx.model).is_ok(),
        (InputKind::ContrastOrTask, Input::Contrast(c)) => c.check(cx.model).is_ok(),
        (InputKind::ContrastOrTask | InputKind::Task, Input::Set(..)) => true,
        (InputKind::Prompt, Input::Prompt(p, _)) => p.check(cx.model).is_ok(),
        (InputKind::Text, Input::Text(..)) | (InputKind::Weights, _) => true,
        _ => false,
    };
    if !fits {
        if let Input::Contrast(c) = input {
            c.check(cx.model)?;
        }
        if let Input::Prompt(p, _) = input {
            p.check(cx.model)?;
        }
        return Err(Error::Invalid(format!("`{}` reads {:?} input (its keys: {}); this input is another kind", entry.name(), entry.input(), entry.input().keys().join(", "))));
    }
    let (result, metric, warnings) = entry.run(cx, input, &resolved)?;
    Ok(Envelope {
        method: entry.name().to_string(),
        glassbox_version: env!("CARGO_PKG_VERSION").to_string(),
        model: ModelRecord::of(cx.model),
        model_b: cx.model_b.filter(|_| needs.model_b).map(ModelRecord::of),
        input: InputRecord::of(cx.model, input),
        metric,
        options: resolved,
        result,
        warnings,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Runs the method called `name` (see `run`).
pub fn run_named(name: &str, cx: &Context, spec: &InputSpec, options: &Value) -> Result<Envelope> {
    run(entry(name)?, cx, spec, options)
}

/// Every entry's name and the option keys it takes, as a map (for error messages and docs).
pub fn option_keys() -> BTreeMap<&'static str, Vec<&'static str>> {
    CATALOG.iter().map(|e| (e.name(), e.fields().iter().map(|f| f.name).collect())).collect()
}
