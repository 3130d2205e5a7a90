//! `glassbox batch`: a method over a JSONL prompt set into Parquet (resumable), its summary,
//! and generated prompt sets as JSONL.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use glassbox::batch::summary::{summarize, Summary, SummaryOptions};
use glassbox::batch::{self, BatchOptions, Item, LineError, RunSpec, Settings};
use glassbox::methods::catalog;
use serde_json::Value;

use crate::{finite, print_json};
use crate::ModelArg;

/// `glassbox batch`.
#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BatchArgs {
    #[command(subcommand)]
    pub command: Option<BatchCommand>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// `glassbox batch` without a subcommand: the run.
#[derive(Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub model: ModelArg,
    /// The prompts: one JSON object per line, {"id", "prompt", "correct", "incorrect",
    /// "corrupted"?, "group"?} (or give --task).
    #[arg(long, required_unless_present = "task")]
    pub input: Option<PathBuf>,
    /// Generate the prompts instead: a task (`glassbox methods` lists them; written beside the output as OUT.prompts.jsonl).
    #[arg(long, conflicts_with = "input")]
    pub task: Option<String>,
    /// Prompts the task generates.
    #[arg(long, default_value_t = 256)]
    pub n: usize,
    /// Seed of the task's prompts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// The method: any method that reads one prompt per row (`glassbox methods` lists them).
    #[arg(long, default_value = "attribution")]
    pub method: String,
    /// The method's options as JSON, with the names of its flags, e.g.
    /// '{"method": "integrated_gradients", "n_steps": 10}' (`glassbox methods --json` lists them).
    #[arg(long)]
    pub options: Option<String>,
    /// The SAE folder, for sae-attribute.
    #[arg(long)]
    pub sae: Option<PathBuf>,
    /// The transcoder set's folder, for graph.
    #[arg(long)]
    pub transcoders: Option<PathBuf>,
    /// The result file (Parquet).
    #[arg(long, required_unless_present = "task")]
    pub out: Option<PathBuf>,
    /// Prompts per group, sorted by length (one padded batch where the method allows).
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Rows per Parquet row group (each flushed to disk as it completes).
    #[arg(long, default_value_t = 64)]
    pub row_group: usize,
    /// Continue an interrupted run (or add new ids to a finished one): ids already in the
    /// output are skipped.
    #[arg(long)]
    pub resume: bool,
    /// Stop at the first bad line or failed prompt instead of reporting it and going on.
    #[arg(long)]
    pub strict: bool,
    /// Print the run's report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum BatchCommand {
    /// Summarise a result file: means with bootstrap intervals, the circuit over the set, per group.
    Summarize {
        /// The result file of `glassbox batch`.
        file: PathBuf,
        /// Bootstrap resamples.
        #[arg(long, default_value_t = 1000)]
        n_boot: usize,
        /// Cells listed per [layer][unit] column.
        #[arg(long, default_value_t = 10)]
        top_k: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Everything as JSON (every figure, every group).
        #[arg(long)]
        json: bool,
        /// Each group's summary too (groups of fewer than 5 rows show means without intervals).
        #[arg(long)]
        by_group: bool,
        /// Every figure, not one screen: each value of a per-head map, each group.
        #[arg(long)]
        full: bool,
    },
    /// Write a generated prompt set as JSONL (the input of `glassbox batch`).
    Prompts {
        #[command(flatten)]
        model: ModelArg,
        /// The task: ioi.
        #[arg(long)]
        task: String,
        #[arg(long, default_value_t = 256)]
        n: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The file to write (default: standard output).
        #[arg(long)]
        out: Option<PathBuf>,
    },
}

/// The items of a generated task set (ids `{task}-00000`, groups from the task).
fn task_items(model: &glassbox::Model, task: &str, n: usize, seed: u64) -> Result<Vec<Item>> {
    let spec = glassbox::tasks::TaskSpec { task: task.to_string(), n, seed, corruption: None };
    Ok(batch::task_items(model, &spec)?)
}

fn write_jsonl(items: &[Item], w: &mut dyn Write) -> Result<()> {
    for it in items {
        let mut v = serde_json::json!({"id": it.id, "prompt": it.prompt, "correct": it.correct, "incorrect": it.incorrect});
        if let Some(c) = &it.corrupted {
            v["corrupted"] = Value::String(c.clone());
        }
        if let Some(g) = &it.group {
            v["group"] = Value::String(g.clone());
        }
        writeln!(w, "{v}")?;
    }
    Ok(())
}

fn report_lines(errors: &[LineError], strict: bool, what: &str) -> Result<()> {
    for e in errors {
        eprintln!("line {}{}: {}", e.line, e.id.as_ref().map(|i| format!(" (id {i})")).unwrap_or_default(), e.message);
    }
    if strict && !errors.is_empty() {
        bail!("{} {what} (--strict stops at the first; leave it out to skip them)", errors.len());
    }
    Ok(())
}

pub fn run(args: &BatchArgs) -> Result<()> {
    match &args.command {
        Some(BatchCommand::Summarize { file, n_boot, top_k, seed, json, by_group, full }) => {
            let s = finite(summarize(file, &SummaryOptions { n_boot: *n_boot, top_k: *top_k, seed: *seed, ..Default::default() })?)?;
            if *json {
                return print_json(&s);
            }
            print!("{}", summary_text(&s, *top_k, *by_group || *full, *full));
            Ok(())
        }
        Some(BatchCommand::Prompts { model, task, n, seed, out }) => {
            let m = crate::load_model(model)?;
            let items = task_items(&m, task, *n, *seed)?;
            match out {
                Some(p) => {
                    let mut f = std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?);
                    write_jsonl(&items, &mut f)?;
                    f.flush()?;
                }
                None => write_jsonl(&items, &mut std::io::stdout().lock())?,
            }
            Ok(())
        }
        None => run_batch(&args.run),
    }
}

fn run_batch(a: &RunArgs) -> Result<()> {
    let entry = batch::method(&a.method)?;
    let options: Value = match &a.options {
        Some(s) => serde_json::from_str(s).with_context(|| format!("--options is not valid JSON: {s}"))?,
        None => Value::Null,
    };
    entry.resolve(&options)?;
    let sae = match &a.sae {
        Some(dir) => Some(glassbox::sae::Sae::load(dir, None)?),
        None if entry.needs().sae => bail!("--method {} needs --sae DIR", entry.name()),
        None => None,
    };
    let m = crate::load_model(&a.model)?;
    let transcoders = match &a.transcoders {
        Some(dir) => Some(crate::methods::load_transcoders(dir, &m)?),
        None if entry.needs().transcoders => bail!("--method {} needs --transcoders DIR", entry.name()),
        None => None,
    };
    let out = match (&a.out, &a.task) {
        (Some(o), _) => o.clone(),
        (None, Some(t)) => PathBuf::from(format!("{t}-{}.parquet", entry.name())),
        (None, None) => bail!("give --out FILE.parquet"),
    };
    let (items, mut bad) = match (&a.input, &a.task) {
        (Some(input), _) => batch::read_jsonl(input)?,
        (None, Some(task)) => {
            let items = task_items(&m, task, a.n, a.seed)?;
            let mut prompts_file = out.as_os_str().to_owned();
            prompts_file.push(".prompts.jsonl");
            let mut f = std::io::BufWriter::new(std::fs::File::create(&prompts_file)?);
            write_jsonl(&items, &mut f)?;
            f.flush()?;
            eprintln!("prompts: {}", Path::new(&prompts_file).display());
            (items, Vec::new())
        }
        (None, None) => bail!("give --input FILE.jsonl or --task ioi"),
    };
    let n_lines = items.len() + bad.len();
    let (prepared, unfit) = batch::prepare(&m, items, entry);
    bad.extend(unfit);
    bad.sort_by_key(|e| e.line);
    report_lines(&bad, a.strict, "lines left out")?;
    if prepared.is_empty() {
        bail!("none of the {n_lines} lines can run");
    }
    let settings = Settings::new(&m, entry, &options, sae.as_ref())?;
    let opts = BatchOptions { method: entry.name().to_string(), options, batch_size: a.batch_size, row_group: a.row_group };
    let bar = indicatif::ProgressBar::new(prepared.len() as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} prompts {msg} ({per_sec}, ETA {eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    if a.json {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let stop = crate::stop_flag();
    let strict_stop = std::sync::atomic::AtomicBool::new(false);
    let both = StopEither(&stop, &strict_stop);
    let t0 = std::time::Instant::now();
    let cx = catalog::Context { model: &m, sae: sae.as_ref(), model_b: None, transcoders: transcoders.as_ref() };
    let spec = RunSpec { options: &opts, settings: &settings, out: &out, resume: a.resume };
    let report = batch::run(&cx, &prepared, &spec, both.flag(), &mut |p| {
        bar.set_length(p.total as u64);
        bar.set_position(p.done as u64);
        if p.failed > 0 {
            bar.set_message(format!("{} failed", p.failed));
        }
        if a.strict && p.failed > 0 {
            strict_stop.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        both.sync();
    })?;
    bar.finish_and_clear();
    report_lines(&report.failed, false, "prompts failed")?;
    let mut sidecar = out.as_os_str().to_owned();
    sidecar.push(".json");
    let meta = serde_json::json!({
        "settings": settings,
        "input": a.input.as_ref().map(|p| p.display().to_string()),
        "task": a.task.as_ref().map(|t| serde_json::json!({"task": t, "n": a.n, "seed": a.seed})),
        "rows": report.rows,
        "written": report.written,
        "skipped_done": report.skipped,
        "lines_left_out": bad,
        "failed": report.failed,
        "interrupted": report.interrupted,
        "seconds": t0.elapsed().as_secs_f64(),
    });
    glassbox::files::write_bytes(Path::new(&sidecar), &serde_json::to_vec_pretty(&meta)?)?;
    if a.json {
        print_json(&meta)?;
    } else {
        let rate = report.written as f64 / t0.elapsed().as_secs_f64().max(1e-9);
        println!("{}: {} rows ({} written now, {:.2} prompts/s; {} already there; {} lines left out; {} failed)", out.display(), report.rows, report.written, rate, report.skipped, bad.len(), report.failed.len());
        println!("settings: {}", Path::new(&sidecar).display());
    }
    if report.rows == 0 && !report.interrupted {
        bail!("no rows: every prompt failed (see the messages above)");
    }
    if report.interrupted {
        bail!("stopped early: {} holds the {} rows done so far; run the same command with --resume to finish", out.display(), report.rows);
    }
    if a.strict && !report.failed.is_empty() {
        bail!("{} prompts failed (--strict)", report.failed.len());
    }
    Ok(())
}

/// Ctrl-C or a --strict failure: either stops the run.
struct StopEither<'a>(&'a std::sync::atomic::AtomicBool, &'a std::sync::atomic::AtomicBool);

impl StopEither<'_> {
    /// The flag the run reads: Ctrl-C's, with a --strict failure copied into it.
    fn flag(&self) -> &std::sync::atomic::AtomicBool {
        self.0
    }
    fn sync(&self) {
        if self.1.load(std::sync::atomic::Ordering::Relaxed) {
            self.0.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A map's entries (`attributions.L00H00`, ...) of more than this many values are shown as
/// their largest ones unless `--full`.
const MAP_SHOWN: usize = 12;

/// Groups of fewer rows show means without intervals.
const GROUP_INTERVAL_ROWS: usize = 5;

/// The summary as text: one screen by default (the scalar figures with intervals, each large
/// map's `top_k` entries of largest |mean|, the circuit over the set), each group with
/// `by_group`, every value with `full`.
fn summary_text(s: &Summary, top_k: usize, by_group: bool, full: bool) -> String {
    use std::fmt::Write;
    let mut o = String::new();
    let set_text = |o: &mut String, set: &glassbox::batch::summary::SetSummary, indent: &str, intervals: bool| {
        let line = |o: &mut String, name: &str, i: &glassbox::methods::bootstrap::Interval| {
            let _ = match intervals {
                true => writeln!(o, "{indent}{name:<34} {:>10.4}  [{:.4}, {:.4}]", i.mean, i.ci_lo, i.ci_hi),
                false => writeln!(o, "{indent}{name:<34} {:>10.4}", i.mean),
            };
        };
        // Figures by the map they belong to (`faithfulness.f1` → `faithfulness`).
        let mut maps: std::collections::BTreeMap<&str, Vec<(&String, &glassbox::methods::bootstrap::Interval)>> = Default::default();
        for (name, i) in &set.figures {
            maps.entry(name.split_once('.').map_or(name.as_str(), |(m, _)| m)).or_default().push((name, i));
        }
        for (map, mut entries) in maps {
            if full || entries.len() <= MAP_SHOWN {
                for (name, i) in entries {
                    line(o, name, i);
                }
                continue;
            }
            entries.sort_by(|a, b| b.1.mean.abs().total_cmp(&a.1.mean.abs()));
            let _ = writeln!(o, "{indent}{map}: {} values; the {} of largest |mean| (--full lists all)", entries.len(), top_k.min(entries.len()));
            for (name, i) in entries.into_iter().take(top_k) {
                line(o, &format!("  {name}"), i);
            }
        }
        for (name, cells) in &set.top_cells {
            let _ = writeln!(o, "{indent}{name}: largest mean cells");
            for c in cells.iter().take(if full { usize::MAX } else { top_k }) {
                line(o, &format!("  {}", c.name), &c.interval);
            }
        }
        if !set.circuit_frequency.is_empty() {
            let heads: Vec<String> = set.circuit.iter().map(|h| h.to_string()).collect();
            let _ = writeln!(o, "{indent}circuit over the set (heads in ≥ 50 % of the prompts' circuits): {}", if heads.is_empty() { "(none)".into() } else { heads.join(" ") });
            for c in set.circuit_frequency.iter().take(if full { usize::MAX } else { 5 }) {
                let _ = writeln!(o, "{indent}  {:<8} in {:.0} % of the prompts' circuits", c.head.to_string(), 100.0 * c.frequency);
            }
        }
    };
    let _ = writeln!(o, "{} rows{}; mean [{:.0} % bootstrap interval over prompts, {} resamples]", s.all.n, s.method.as_ref().map(|m| format!(" of {m}")).unwrap_or_default(), 100.0 * (1.0 - s.options.alpha), s.options.n_boot);
    set_text(&mut o, &s.all, "  ", true);
    if s.groups.is_empty() {
        return o;
    }
    if by_group {
        for (g, set) in &s.groups {
            let few = set.n < GROUP_INTERVAL_ROWS;
            let _ = writeln!(o, "\ngroup {g} ({} row{}{})", set.n, if set.n == 1 { "" } else { "s" }, if few { format!("; means only: an interval needs {GROUP_INTERVAL_ROWS} rows or more") } else { String::new() });
            set_text(&mut o, set, "  ", !few);
        }
    } else {
        let sizes: Vec<usize> = s.groups.values().map(|g| g.n).collect();
        let (lo, hi) = (sizes.iter().min().copied().unwrap_or(0), sizes.iter().max().copied().unwrap_or(0));
        let _ = writeln!(o, "\n{} groups of {lo}–{hi} rows: --by-group summarises each, --full lists every figure, --json gives everything", s.groups.len());
    }
    o
}
