//! The method subcommands, made from the library's method catalog: one subcommand per entry,
//! its input flags (`--prompt`, `--correct`, ...) from the entry's input kind, one flag per
//! option field (with the field's help, default and allowed values), and `--json`, `--plot`,
//! `--top-k`. Running one resolves the flags into the entry's input and options, runs it
//! through `catalog::run` and renders the envelope: JSON, or the entry's text report.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, Result};
use clap::builder::{PossibleValue, PossibleValuesParser};
use clap::{Arg, ArgAction, ArgMatches, Command};
use glassbox::controls::{self, Controls};
use glassbox::methods::catalog::{self, Context, Entry, Envelope, InputSpec};
use glassbox::schema::{parse_text, Field, Kind, OptionSchema};
use glassbox::Model;
use serde_json::{Map, Value};

/// How many rows a text report lists when the method has no `top_k` option of its own.
const DEFAULT_ROWS: usize = 15;

/// Where a flag's value goes.
#[derive(Clone)]
struct Target {
    kind: Kind,
    input: bool,
    option: bool,
}

/// The flags of `entry` in order (the input's, then the options'): name (snake_case) and where
/// its value goes.
fn targets(entry: &dyn Entry) -> Vec<(&'static str, Target)> {
    let mut t: Vec<(&'static str, Target)> = Vec::new();
    for f in InputSpec::fields().into_iter().filter(|f| entry.input().keys().contains(&f.name)) {
        t.push((f.name, Target { kind: f.kind, input: true, option: false }));
    }
    for f in entry.fields() {
        match t.iter_mut().find(|(n, _)| *n == f.name) {
            Some((_, x)) => x.option = true,
            None => t.push((f.name, Target { kind: f.kind, input: false, option: true })),
        }
    }
    t
}

fn flag(name: &str) -> String {
    name.replace('_', "-")
}

/// The help of a field, with its default.
fn help(f: &Field) -> String {
    let default = match &f.default {
        Value::Null => String::new(),
        Value::Array(a) if a.is_empty() => String::new(),
        Value::String(s) => format!(" [default: {s}]"),
        v => format!(" [default: {v}]"),
    };
    format!("{}{default}", f.help)
}

/// A list, also when optional (`Option<Vec<Head>>`): the flag repeats.
fn list_kind(kind: &Kind) -> Option<&Kind> {
    match kind {
        Kind::List { .. } => Some(kind),
        Kind::Optional { value } if matches!(value.as_ref(), Kind::List { .. }) => Some(value),
        _ => None,
    }
}

fn value_arg(id: &'static str, kind: &Kind, help_text: String) -> Arg {
    let mut a = Arg::new(id).long(flag(id)).help(help_text);
    if let (Some(_), Some(one)) = (list_kind(kind), id.strip_suffix('s')) {
        // A repeatable flag reads in the singular too: `--head L9H6 --head L10H7`.
        a = a.visible_alias(flag(one));
    }
    let kind = list_kind(kind).unwrap_or(kind);
    match kind {
        Kind::Boolean => a.num_args(0..=1).default_missing_value("true").value_name("BOOL").value_parser(["true", "false"]),
        Kind::Choice { values } => a.value_parser(choice_parser(values)).ignore_case(false),
        Kind::List { items } => {
            let a = a.action(ArgAction::Append).value_name(value_name(items));
            match items.as_ref() {
                Kind::Choice { values } => a.value_parser(choice_parser(values)),
                _ => a.allow_hyphen_values(true),
            }
        }
        Kind::Optional { value } => match value.as_ref() {
            Kind::Choice { values } => a.value_parser(choice_parser(values)),
            Kind::Boolean => a.value_parser(["true", "false"]),
            k => a.value_name(value_name(k)).allow_hyphen_values(true),
        },
        k => a.value_name(value_name(k)).allow_hyphen_values(true),
    }
}

fn choice_parser(values: &[glassbox::schema::Choice]) -> PossibleValuesParser {
    PossibleValuesParser::new(values.iter().map(|c| PossibleValue::new(c.name).aliases(c.aliases.clone()).help(c.help)))
}

fn value_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Integer { .. } => "N",
        Kind::Number => "X",
        Kind::Text { format: Some(f) } if f.starts_with("a head") => "HEAD",
        Kind::Text { format: Some(f) } if f.starts_with("a file") => "FILE",
        Kind::Text { format: Some(f) } if f.starts_with("a hook") => "HOOK",
        _ => "VALUE",
    }
}

/// The subcommand of `entry`.
pub fn command(entry: &'static dyn Entry) -> Command {
    let mut c = Command::new(entry.name()).about(entry.summary()).arg(
        Arg::new("model")
            .long("model")
            .visible_alias("model-a")
            .default_value(glassbox::registry::DEFAULT_MODEL)
            .help("A registry model name (see `glassbox models list`), a GGUF file or a Hugging Face model folder."),
    );
    c = c.arg(Arg::new("prepend_bos").long("prepend-bos").value_parser(clap::value_parser!(bool)).help(
        "Put the BOS token first (true) or not (false); by default as `transformers` does for the model's format (TransformerLens' prepend_bos).",
    ));
    let needs = entry.needs();
    if needs.model_b {
        c = c.arg(Arg::new("model_b").long("model-b").required(true).help("The second model (registry name, GGUF file or model folder)."));
    }
    if needs.sae {
        c = c
            .arg(Arg::new("sae").long("sae").required(true).value_parser(clap::value_parser!(PathBuf)).help("The SAE's folder: SAELens' cfg.json + sae_weights.safetensors, or Gemma Scope's params.npz."))
            .arg(Arg::new("sae_hook").long("hook").help("The hook point the SAE reads (required for Gemma Scope's files; overrides the config's)."));
    }
    if needs.transcoders {
        c = c.arg(Arg::new("transcoders").long("transcoders").required(true).value_parser(clap::value_parser!(PathBuf)).help(
            "A transcoder set's folder: config.yaml in circuit-tracer's layout and one file per layer (as `glassbox sae train --set` writes it).",
        ));
    }
    let spec_fields = InputSpec::fields();
    let option_fields = entry.fields();
    for (name, t) in targets(entry) {
        let field = |fs: &[Field]| fs.iter().find(|f| f.name == name).cloned();
        let text = match (field(&spec_fields).filter(|_| t.input), field(&option_fields).filter(|_| t.option)) {
            (Some(i), Some(o)) => format!("{} Also: {}", i.help, help(&o)),
            (Some(i), None) => i.help,
            (None, Some(o)) => help(&o),
            (None, None) => String::new(),
        };
        let required = t.input && !t.option && matches!(entry.input(), catalog::InputKind::Contrast | catalog::InputKind::Prompt | catalog::InputKind::Text) && ["prompt", "correct", "incorrect"].contains(&name);
        let mut a = value_arg(name, &t.kind, text);
        if required {
            a = a.required(true);
        }
        if name == "task" || name == "prompts" {
            a = a.conflicts_with_all(["prompt", "correct", "incorrect", "corrupted"]);
        }
        if name == "prompts" && t.input {
            a = a.conflicts_with("task");
        }
        if matches!(entry.input(), catalog::InputKind::ContrastOrTask) && ["prompt", "correct", "incorrect"].contains(&name) {
            a = a.required_unless_present_any(["task", "prompts"]);
        }
        c = c.arg(a);
    }
    if !option_fields.iter().any(|f| f.name == "top_k") {
        c = c.arg(Arg::new("top_k").long("top-k").value_parser(clap::value_parser!(usize)).help(format!("Rows of the text report's longest lists [default: {DEFAULT_ROWS}]")));
    }
    if entry.has_plot() {
        c = c.arg(Arg::new("plot").long("plot").value_parser(clap::value_parser!(PathBuf)).help("Write the result's picture to this file (.svg, or .png rendered at twice the size)."));
    }
    c = c.arg(Arg::new("out").long("out").value_parser(clap::value_parser!(PathBuf)).help(
        "Also write the result itself (the envelope's `result`, e.g. a graph in the attribution-graph frontend's JSON) to this file.",
    ));
    c.arg(Arg::new("json").long("json").action(ArgAction::SetTrue).help("Print the result's envelope as JSON instead of text."))
}

/// The values given on the command line for `id`, each converted to JSON by `kind`.
fn given(m: &ArgMatches, id: &str, kind: &Kind) -> Result<Option<Value>> {
    if m.value_source(id) != Some(clap::parser::ValueSource::CommandLine) {
        return Ok(None);
    }
    let raw: Vec<String> = m.get_raw(id).map(|v| v.map(|s| s.to_string_lossy().into_owned()).collect()).unwrap_or_default();
    let bad = |e: String| anyhow::anyhow!("--{}: {e}", flag(id));
    let value = match list_kind(kind) {
        Some(list) => {
            let mut all = Vec::new();
            for r in &raw {
                match parse_text(list, r).map_err(bad)? {
                    Value::Array(v) => all.extend(v),
                    other => all.push(other),
                }
            }
            Value::Array(all)
        }
        None => parse_text(kind, raw.last().map(String::as_str).unwrap_or("true")).map_err(bad)?,
    };
    Ok(Some(value))
}

/// The input and options the flags give.
fn collect(entry: &dyn Entry, m: &ArgMatches) -> Result<(InputSpec, Value)> {
    let (mut input, mut options) = (Map::new(), Map::new());
    for (name, t) in targets(entry) {
        if let Some(v) = given(m, name, &t.kind)? {
            if t.input {
                input.insert(name.to_string(), v.clone());
            }
            if t.option {
                options.insert(name.to_string(), v);
            }
        }
    }
    let spec: InputSpec = serde_json::from_value(Value::Object(input)).context("reading the input flags")?;
    Ok((spec, Value::Object(options)))
}

/// A progress bar on stderr when it is a terminal and the output is not JSON; hidden otherwise.
pub fn progress_bar(json: bool) -> indicatif::ProgressBar {
    if json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{msg:>20} [{bar:30}] {pos}/{len} ({elapsed})") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

/// Runs `f` with a progress bar and Ctrl-C wired to the library's controls.
pub fn with_controls<R>(json: bool, f: impl FnOnce() -> R) -> R {
    let bar = progress_bar(json);
    let b = bar.clone();
    let controls = Controls {
        progress: Some(Arc::new(move |p: &controls::Progress| {
            b.set_length(p.total as u64);
            b.set_position(p.done.min(p.total) as u64);
            b.set_message(p.stage.clone());
        })),
        cancel: Some(crate::stop_flag()),
        poll: None,
    };
    let r = controls::with(&controls, f);
    bar.finish_and_clear();
    r
}

/// Runs the method subcommand `entry` with its flags `m`.
pub fn run(entry: &'static dyn Entry, m: &ArgMatches) -> Result<()> {
    let json = m.get_flag("json");
    let plot_path = if entry.has_plot() { m.get_one::<PathBuf>("plot").cloned() } else { None };
    let out_path = m.get_one::<PathBuf>("out").cloned();
    if let Some(p) = &plot_path {
        // Before the computation: a path that cannot be written fails now, not after.
        crate::plot::check_path(p)?;
    }
    let (spec, options) = collect(entry, m)?;
    entry.resolve(&options)?;
    let model = load(m.get_one::<String>("model").map(String::as_str).unwrap_or(glassbox::registry::DEFAULT_MODEL), m.get_one::<bool>("prepend_bos").copied())?;
    let model_b = match m.try_get_one::<String>("model_b").ok().flatten() {
        Some(b) => Some(load(b, m.get_one::<bool>("prepend_bos").copied())?),
        None => None,
    };
    let sae = match m.try_get_one::<PathBuf>("sae").ok().flatten() {
        Some(dir) => {
            let hook = m.get_one::<String>("sae_hook").map(|h| h.parse::<glassbox::HookPoint>()).transpose()?;
            let s = glassbox::sae::Sae::load(dir, hook).with_context(|| format!("loading the SAE in {}", dir.display()))?;
            if let Some(trained) = s.cfg.model_name.as_deref().filter(|n| !model.name().contains(*n) && !n.contains(model.name())) {
                eprintln!("warning: this SAE was trained on {trained}, and the model is {}; its features mean something only on the model it was trained on", model.name());
            }
            Some(s)
        }
        None => None,
    };
    let transcoders = match m.try_get_one::<PathBuf>("transcoders").ok().flatten() {
        Some(dir) => Some(load_transcoders(dir, &model)?),
        None => None,
    };
    let cx = Context { model: &model, sae: sae.as_ref(), model_b: model_b.as_ref(), transcoders: transcoders.as_ref() };
    let envelope = with_controls(json, || catalog::run(entry, &cx, &spec, &options))?;
    if let Some(p) = &plot_path {
        if let Some(svg) = entry.plot(&envelope.result)? {
            crate::plot::write(p, &svg)?;
        }
    }
    if let Some(p) = &out_path {
        let text = serde_json::to_string(&envelope.result)?;
        glassbox::files::write_atomically(p, |tmp| std::fs::write(tmp, &text).map_err(|source| glassbox::Error::Io { path: tmp.to_path_buf(), source })).with_context(|| format!("writing {}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&envelope)?);
        return Ok(());
    }
    let rows = m
        .try_get_one::<usize>("top_k")
        .ok()
        .flatten()
        .copied()
        .or_else(|| envelope.options.get("top_k").and_then(Value::as_u64).map(|v| v as usize))
        .unwrap_or(DEFAULT_ROWS);
    print!("{}", render(entry, &envelope, rows)?);
    Ok(())
}

/// The envelope as text: what ran on what, the entry's report, the warnings.
pub fn render(entry: &dyn Entry, e: &Envelope, rows: usize) -> Result<String> {
    let mut o = String::new();
    let sha = e.model.sha256.as_deref().map(|s| format!(", sha256 {}…", &s[..s.len().min(12)])).unwrap_or_default();
    o.push_str(&format!("model     : {} ({}{sha})\n", e.model.name, e.model.family));
    if let Some(b) = &e.model_b {
        o.push_str(&format!("model B   : {} ({})\n", b.name, b.family));
    }
    let i = &e.input;
    if let Some(p) = &i.prompt {
        o.push_str(&format!("prompt    : {p:?} ({} tokens)\n", i.tokens.len()));
    }
    if let Some(c) = &i.corrupted_prompt {
        o.push_str(&format!("corrupted : {c:?}\n"));
    }
    if let (Some(c), Some(n)) = (&i.correct, &i.incorrect) {
        o.push_str(&format!("answers   : {c:?} vs {n:?}\n"));
    }
    if let Some(t) = &i.task {
        o.push_str(&format!("task      : {} ({} prompts, seed {}{})\n", t.task, t.n, t.seed, t.corruption.as_ref().map(|c| format!(", {c}")).unwrap_or_default()));
    }
    o.push('\n');
    o.push_str(&entry.report(&e.result, rows)?);
    if !e.warnings.is_empty() {
        o.push_str("\nwarnings:\n");
        for w in &e.warnings {
            o.push_str(&format!("  - {w}\n"));
        }
    }
    o.push_str(&format!("\n({:.2} s)\n", e.seconds));
    Ok(o)
}

/// Loads a model by registry name, GGUF file or folder.
pub fn load(name: &str, prepend_bos: Option<bool>) -> Result<Model> {
    crate::load_model(&crate::ModelArg { model: name.to_string(), prepend_bos })
}

/// `glassbox methods`: every method, its input and options.
pub fn list(json: bool) -> Result<()> {
    let all = catalog::describe();
    if json {
        println!("{}", serde_json::to_string_pretty(&all)?);
        return Ok(());
    }
    for d in &all {
        println!("{:<18} {}", d.name, d.summary);
        let opts: Vec<String> = d.options.iter().map(|f| format!("--{}", flag(f.name))).collect();
        println!("{:<18} input: {:?}{}; options: {}", "", d.input, if d.needs.sae { " + an SAE" } else if d.needs.model_b { " + a second model" } else { "" }, if opts.is_empty() { "none".into() } else { opts.join(" ") });
    }
    Ok(())
}

/// A transcoder set's folder, with a warning when it was trained on another model.
pub fn load_transcoders(dir: &std::path::Path, model: &glassbox::Model) -> Result<glassbox::sae::set::TranscoderSet> {
    let set = glassbox::sae::set::TranscoderSet::load(dir).with_context(|| format!("loading the transcoder set in {}", dir.display()))?;
    if let Some(trained) = set.model_name.as_deref().filter(|n| !model.name().contains(*n) && !n.contains(model.name())) {
        eprintln!("warning: this transcoder set was trained on {trained}, and the model is {}; its features mean something only on the model it was trained on", model.name());
    }
    Ok(set)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every flag of every method has help text, taken from the option struct's docs.
    #[test]
    fn every_flag_has_help() {
        for e in catalog::CATALOG {
            for a in command(*e).get_arguments() {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                assert!(!help.trim().is_empty(), "`{}` --{} has no help", e.name(), a.get_id());
            }
        }
    }
}

