//! `glassbox sae`: sparse autoencoders and transcoders (SAELens' format, Gemma Scope's
//! parameters) on a model: what one is, and which of its features drive a prediction.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use glassbox::sae::Sae;
use glassbox::HookPoint;

use crate::{finite, print_json};

/// An SAE folder and, for files that name none, its hook point.
#[derive(Args, Clone)]
pub struct SaeArg {
    /// The SAE's folder: SAELens' cfg.json + sae_weights.safetensors, or Gemma Scope's params.npz.
    #[arg(long)]
    pub sae: PathBuf,
    /// The hook point it reads (required for Gemma Scope's files; overrides the config's).
    #[arg(long)]
    pub hook: Option<String>,
}

impl SaeArg {
    pub fn load(&self) -> Result<Sae> {
        let hook = self.hook.as_deref().map(str::parse::<HookPoint>).transpose()?;
        Sae::load(&self.sae, hook).with_context(|| format!("loading the SAE in {}", self.sae.display()))
    }
}

#[derive(Subcommand)]
pub enum SaeCommand {
    /// Train a TopK (or BatchTopK) SAE, or a transcoder with --hook-out, on the model's
    /// activations over a text corpus; writes SAELens' format.
    Train {
        #[command(flatten)]
        model: crate::ModelArg,
        /// Where the SAE reads, e.g. blocks.3.hook_resid_post (a transcoder: blocks.3.ln2.hook_normalized).
        #[arg(long, required_unless_present = "set")]
        hook: Option<String>,
        /// Train a whole transcoder set instead: one transcoder per layer (ln2.hook_normalized →
        /// hook_mlp_out), every layer from the same forward pass (BatchTopK, saved as JumpReLU).
        #[arg(long, conflicts_with_all = ["hook", "hook_out", "batch_topk"])]
        set: bool,
        /// A transcoder's target, e.g. blocks.3.hook_mlp_out.
        #[arg(long)]
        hook_out: Option<String>,
        /// Text files or folders of them (fortune files split into their entries).
        #[arg(long = "corpus", required = true, num_args = 1..)]
        corpus: Vec<PathBuf>,
        /// Leave out corpus files of this name (repeatable; e.g. one held out for `sae eval`).
        #[arg(long)]
        exclude: Vec<String>,
        /// Features.
        #[arg(long, default_value_t = 4096)]
        d_sae: usize,
        /// Active features per token.
        #[arg(long, default_value_t = 32)]
        k: usize,
        /// BatchTopK instead of TopK (saved as JumpReLU with the learned threshold).
        #[arg(long)]
        batch_topk: bool,
        /// Tokens to train on.
        #[arg(long, default_value_t = 200_000)]
        tokens: usize,
        /// Activations per step.
        #[arg(long, default_value_t = 1024)]
        batch_size: usize,
        /// Adam's learning rate (default 2e-4 / √(d_sae / 16384)).
        #[arg(long)]
        lr: Option<f64>,
        /// Tokens per sequence.
        #[arg(long, default_value_t = 128)]
        context: usize,
        /// Rows in the shuffling buffer.
        #[arg(long, default_value_t = 32_768)]
        buffer: usize,
        /// Steps between checkpoints.
        #[arg(long, default_value_t = 100)]
        checkpoint_every: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The output folder.
        #[arg(long)]
        out: PathBuf,
        /// Continue from the checkpoint in --out.
        #[arg(long)]
        resume: bool,
    },
    /// Evaluate an SAE or transcoder on held-out text: explained variance, MSE, L0, dead and
    /// dense features, and the cross-entropy loss recovered when it replaces the activation.
    /// A transcoder set's folder (config.yaml): each layer's explained variance, and the loss
    /// recovered with every MLP replaced at once.
    Eval {
        #[command(flatten)]
        model: crate::ModelArg,
        #[command(flatten)]
        sae: SaeArg,
        /// Text files or folders of them.
        #[arg(long = "corpus", required = true, num_args = 1..)]
        corpus: Vec<PathBuf>,
        /// Tokens to evaluate on (at most).
        #[arg(long, default_value_t = 16_384)]
        tokens: usize,
        #[arg(long, default_value_t = 128)]
        context: usize,
        #[arg(long)]
        json: bool,
    },
    /// What an SAE is: its architecture, sizes, hook points and format.
    Info {
        #[command(flatten)]
        sae: SaeArg,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: &SaeCommand) -> Result<()> {
    match command {
        SaeCommand::Info { sae, json } => {
            let s = sae.load()?;
            if *json {
                return print_json(&s.cfg);
            }
            let c = &s.cfg;
            println!("format        {}", c.format);
            println!("architecture  {:?}", c.architecture);
            println!("features      {} (d_in {}, d_out {})", c.d_sae, c.d_in, c.d_out);
            println!("hook          {}{}", c.hook, c.hook_out.map_or(String::new(), |h| format!(" → {h} (transcoder)")));
            println!("input         b_dec subtracted: {}; normalisation: {:?}{}", c.apply_b_dec_to_input, c.normalize, if c.unapplied_scaling { " (expected_average_only_in: its scaling factor is not in the files and is not applied)" } else { "" });
            if let Some(m) = &c.model_name {
                println!("model         {m}");
            }
            if let Some(id) = &c.neuronpedia_id {
                println!("neuronpedia   {id}");
            }
        }
        SaeCommand::Train { model, hook, set, hook_out, corpus, exclude, d_sae, k, batch_topk, tokens, batch_size, lr, context, buffer, checkpoint_every, seed, out, resume } => {
            use glassbox::sae::train::{train, Sparsity, TrainOptions};
            let m = crate::load_model(model)?;
            let files = glassbox::sae::corpus::corpus_files(corpus, exclude)?;
            let docs = glassbox::sae::corpus::read_documents(&files)?;
            let seqs = glassbox::sae::corpus::sequences(&m, &docs, *context)?;
            let per_seq = context - usize::from(m.tokenizer().bos().is_some());
            eprintln!("corpus: {} files, {} documents, {} sequences of {context} tokens ({} tokens)", files.len(), docs.len(), seqs.len(), seqs.len() * per_seq);
            if *set {
                let opts = glassbox::sae::train_set::SetTrainOptions {
                    d_sae: *d_sae,
                    k: *k,
                    batch_size: *batch_size,
                    lr: *lr,
                    tokens: *tokens,
                    context: *context,
                    buffer: *buffer,
                    checkpoint_every: *checkpoint_every,
                    seed: *seed,
                    ..Default::default()
                };
                return train_set(&m, seqs, &opts, out, *resume);
            }
            let hook_in: HookPoint = hook.as_deref().unwrap_or_default().parse()?;
            let hook_out = hook_out.as_deref().map(str::parse::<HookPoint>).transpose()?;
            let opts = TrainOptions {
                d_sae: *d_sae,
                k: *k,
                sparsity: if *batch_topk { Sparsity::BatchTopK } else { Sparsity::TopK },
                batch_size: *batch_size,
                lr: *lr,
                tokens: *tokens,
                context: *context,
                buffer: *buffer,
                checkpoint_every: *checkpoint_every,
                seed: *seed,
                ..TrainOptions::default()
            };
            let bar = indicatif::ProgressBar::new(0);
            if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} ({elapsed}, ETA {eta})") {
                bar.set_style(style.progress_chars("=> "));
            }
            let stop = crate::stop_flag();
            let mut last = None;
            let result = train(&m, &glassbox::sae::train::Site { hook_in, hook_out, out, resume: *resume }, seqs, &opts, &mut |r| {
                bar.set_length(r.total_steps as u64);
                bar.set_position(r.step as u64);
                bar.set_message(format!("FVU {:.4}  L0 {:.1}  dead {:.1}%  aux {:.3}", r.fvu, r.l0, 100.0 * r.dead_fraction, r.aux_loss));
                last = Some(r.clone());
                !stop.load(std::sync::atomic::Ordering::Relaxed)
            });
            bar.finish_and_clear();
            let dir = result?;
            if let Some(r) = last {
                eprintln!("step {}/{}: {} tokens, FVU {:.4} (explained variance {:.4}), L0 {:.1}, dead {:.1}%", r.step, r.total_steps, r.tokens, r.fvu, 1.0 - r.fvu, r.l0, 100.0 * r.dead_fraction);
            }
            println!("{}", dir.display());
        }
        SaeCommand::Eval { model, sae, corpus, tokens, context, json } => {
            let set_dir = sae.sae.join(glassbox::sae::set::SET_CONFIG).is_file();
            let s = if set_dir { None } else { Some(sae.load()?) };
            let m = crate::load_model(model)?;
            let files = glassbox::sae::corpus::corpus_files(corpus, &[])?;
            let docs = glassbox::sae::corpus::read_documents(&files)?;
            let mut seqs = glassbox::sae::corpus::sequences(&m, &docs, *context)?;
            let per_seq = context.saturating_sub(usize::from(m.tokenizer().bos().is_some())).max(1);
            seqs.truncate(tokens.div_ceil(per_seq).max(1));
            let Some(s) = s else {
                let set = crate::methods::load_transcoders(&sae.sae, &m)?;
                let r = glassbox::sae::eval::evaluate_set(&m, &set, &seqs, 4)?;
                glassbox::check_finite(&r)?;
                if *json {
                    return print_json(&r);
                }
                println!("{} tokens of held-out text, {} transcoders replacing every MLP at once", r.tokens, r.layers.len());
                println!("{:>5} {:>19} {:>7} {:>6}", "layer", "explained variance", "L0", "dead");
                for l in &r.layers {
                    println!("{:>5} {:>19.4} {:>7.2} {:>5.2}%", l.layer, l.explained_variance, l.l0, 100.0 * l.dead_fraction);
                }
                println!("mean explained variance {:.4}", r.mean_explained_variance);
                println!("CE loss              clean {:.4}, replacement model {:.4}, every MLP zero-ablated {:.4}", r.ce_clean, r.ce_replaced, r.ce_zero);
                println!("CE loss recovered    {:.4}", r.ce_loss_recovered);
                return Ok(());
            };
            let r = finite(glassbox::sae::eval::evaluate(&m, &s, &seqs, 4)?)?;
            if *json {
                return print_json(&r);
            }
            println!("{} tokens of held-out text", r.tokens);
            println!("explained variance   {:.4}", r.explained_variance);
            println!("MSE                  {:.6}", r.mse);
            println!("L0                   {:.2}", r.l0);
            println!("dead features        {:.2}%", 100.0 * r.dead_fraction);
            println!("dense features       {:.2}% (active on > 10% of tokens)", 100.0 * r.dense_fraction);
            println!("CE loss              clean {:.4}, with the SAE {:.4}, zero-ablated {:.4}", r.ce_clean, r.ce_sae, r.ce_zero);
            println!("CE loss recovered    {:.4}", r.ce_loss_recovered);
        }
    }
    Ok(())
}

/// `sae train --set`: one transcoder per layer, with a progress bar of the mean figures and a
/// line per layer at the end.
fn train_set(m: &glassbox::Model, seqs: Vec<Vec<u32>>, opts: &glassbox::sae::train_set::SetTrainOptions, out: &std::path::Path, resume: bool) -> Result<()> {
    let bar = indicatif::ProgressBar::new(0);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps {msg} ({elapsed}, ETA {eta})") {
        bar.set_style(style.progress_chars("=> "));
    }
    let stop = crate::stop_flag();
    let mut last = None;
    let log_every = std::env::var("GLASSBOX_TRAIN_LOG_EVERY").ok().and_then(|v| v.parse::<usize>().ok());
    let started = std::time::Instant::now();
    let mean = |v: &[f32]| v.iter().sum::<f32>() / v.len().max(1) as f32;
    let result = glassbox::sae::train_set::train_set(m, seqs, opts, out, resume, &mut |r| {
        bar.set_length(r.total_steps as u64);
        bar.set_position(r.step as u64);
        bar.set_message(format!("mean FVU {:.4}  L0 {:.1}  dead {:.1}%", mean(&r.fvu), mean(&r.l0), 100.0 * mean(&r.dead_fraction)));
        if log_every.is_some_and(|n| n > 0 && r.step % n == 0) {
            eprintln!("step {}/{} tokens {} {:.0}s mean FVU {:.4} L0 {:.1} dead {:.2}% FVU by layer {:?}", r.step, r.total_steps, r.tokens, started.elapsed().as_secs_f64(), mean(&r.fvu), mean(&r.l0), 100.0 * mean(&r.dead_fraction), r.fvu.iter().map(|f| (f * 1000.0).round() / 1000.0).collect::<Vec<_>>());
        }
        last = Some(r.clone());
        !stop.load(std::sync::atomic::Ordering::Relaxed)
    });
    bar.finish_and_clear();
    let dir = result?;
    if let Some(r) = last {
        eprintln!("step {}/{}: {} tokens", r.step, r.total_steps, r.tokens);
        for (l, ((f, l0), d)) in r.fvu.iter().zip(&r.l0).zip(&r.dead_fraction).enumerate() {
            eprintln!("  layer {l:>2}: FVU {f:.4} (explained variance {:.4}), L0 {l0:.1}, dead {:.1}%", 1.0 - f, 100.0 * d);
        }
    }
    println!("{}", dir.display());
    Ok(())
}
