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

mod entries;
mod input;

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use entries::{AnalyzeResult, CATALOG};
pub use input::{resolve_input, Input, InputKind, InputRecord, InputSpec};

use crate::error::{Error, Result};
use crate::inputs::Contrast;
use crate::model::Model;
use crate::plot::Svg;
use crate::sae::set::TranscoderSet;
use crate::sae::Sae;
use crate::schema::{parse_options, Field, OptionSchema};

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
    /// A transcoder set, one transcoder per MLP (`--transcoders DIR`).
    #[serde(default)]
    pub transcoders: bool,
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
    /// The transcoder set, for attribution graphs.
    pub transcoders: Option<&'a TranscoderSet>,
}

impl<'a> Context<'a> {
    /// A context with the model alone.
    pub fn new(model: &'a Model) -> Context<'a> {
        Context { model, sae: None, model_b: None, transcoders: None }
    }

    fn transcoders(&self) -> Result<&'a TranscoderSet> {
        self.transcoders.ok_or_else(|| Error::Invalid("this method needs a transcoder set, one transcoder per MLP (--transcoders DIR; Python: transcoders=)".into()))
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
    let (result, metric, mut warnings) = entry.run(cx, input, &resolved)?;
    if let Input::Contrast(c) = input {
        warnings.splice(0..0, crate::methods::warnings::contrast_spacing(cx.model, c));
    }
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
