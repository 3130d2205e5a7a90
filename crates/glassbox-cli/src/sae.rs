//! `glassbox sae`: sparse autoencoders and transcoders (SAELens' format, Gemma Scope's
//! parameters) on a model: what one is, and which of its features drive a prediction.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use glassbox::methods::sae_attribution::{sae_attribution, SaeAttribution, SaeAttributionOptions};
use glassbox::sae::Sae;
use glassbox::HookPoint;

use crate::methods::{finite, print_json, MetricArg, PromptAnswers};

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
    /// Which SAE features drive the prediction: gradient × activation for every feature,
    /// exact ablation of the top ones, direct effects and the error term.
    Attribute {
        #[command(flatten)]
        model: crate::ModelArg,
        #[command(flatten)]
        sae: SaeArg,
        #[command(flatten)]
        answers: PromptAnswers,
        /// Features listed.
        #[arg(long, default_value_t = 20)]
        top_k: usize,
        /// How many of the top features also get their exact effect (batched ablation runs).
        #[arg(long, default_value_t = 10)]
        n_exact: usize,
        #[arg(long, value_enum, default_value = "logit_diff")]
        metric: MetricArg,
        /// Write the top features' picture to this file (.svg, or .png).
        #[arg(long)]
        plot: Option<PathBuf>,
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
        SaeCommand::Attribute { model, sae, answers, top_k, n_exact, metric, plot, json } => {
            let s = sae.load()?;
            let m = crate::load_model(model)?;
            if let Some(trained) = s.cfg.model_name.as_deref().filter(|n| !m.name.contains(*n) && !n.contains(m.name.as_str())) {
                eprintln!("warning: this SAE was trained on {trained}, and the model is {}; its features mean something only on the model it was trained on", m.name);
            }
            let prompt = answers.prompt(&m)?;
            let opts = SaeAttributionOptions { top_k: *top_k, n_exact: *n_exact, metric: metric.metric() };
            let r = finite(sae_attribution(&m, &s, &prompt, &opts)?)?;
            if let Some(p) = plot {
                crate::plot::write(p, &glassbox::plot::Plot::plot(&r))?;
            }
            if *json {
                return print_json(&r);
            }
            print_attribution(&r);
        }
    }
    Ok(())
}

fn print_attribution(r: &SaeAttribution) {
    println!("SAE at {}{}: {} {:.4}", r.hook, r.hook_out.as_ref().map_or(String::new(), |h| format!(" → {h}")), r.metric, r.clean_ld);
    println!("L0 {:.1} features per position, {} active on the prompt, explained variance {:.3}", r.l0, r.n_active, r.explained_variance);
    println!("error term {:+.4}, decoder bias {:+.4} (gradient × value)", r.error_contribution, r.bias_contribution);
    if let Some(d) = &r.direct {
        println!(
            "direct effects: features {:+.4} + decoder bias {:+.4} + error {:+.4} + rest of the model {:+.4} + constants {:+.4} (identity residual {:.1e})",
            d.features, d.decoder_bias, d.error, d.rest, d.constant, d.decomposition_residual
        );
    }
    println!("\n  {:>7} {:>10} {:>12} {:>10} {:>10}  {:<10} link", "feature", "activation", "grad × act", "exact", "direct", "direction");
    for f in &r.top_features {
        let opt = |v: Option<f32>| v.map_or("-".to_string(), |v| format!("{v:+.4}"));
        println!(
            "  {:>7} {:>10.4} {:>+12.4} {:>10} {:>10}  {:<10} {}",
            f.feature_id,
            f.activation,
            f.ld_contribution,
            opt(f.exact_effect),
            opt(f.direct_effect),
            f.direction,
            f.neuronpedia_url.as_deref().unwrap_or("")
        );
    }
}
