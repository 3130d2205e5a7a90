//! `glassbox generate`: continue a prompt (greedy or sampled), optionally steered by a vector
//! added at a hook point, printed beside the unsteered continuation.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use glassbox::methods::steering::{load_steering_vector, steering_hooks, steering_vector};
use glassbox::{GenerateOptions, Generation, HookPoint, Hooks, Model, Sampling};
use serde::Serialize;

#[derive(Args, Clone)]
pub struct GenerateArgs {
    #[arg(long)]
    pub prompt: String,
    /// The most tokens to add.
    #[arg(long, default_value_t = 32)]
    pub max_new_tokens: usize,
    /// Sample at this temperature instead of taking the most likely token.
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Sample from the K most likely tokens only (implies sampling).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Sample from the most likely tokens up to this total probability (implies sampling).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Seed of the sampling.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Keep going past the model's end-of-sequence token.
    #[arg(long)]
    pub ignore_eos: bool,
    /// Steer at this hook point, e.g. blocks.6.hook_resid_pre; the vector is
    /// mean(--steer-positive) − mean(--steer-negative) there, or --steer-vector
    /// (`--steer HOOK=FILE` is short for `--steer HOOK --steer-vector FILE`).
    #[arg(long, requires = "steer_scale")]
    pub steer: Option<String>,
    /// The prompt whose activations the steering points towards.
    #[arg(long, requires = "steer", requires = "steer_negative", conflicts_with = "steer_vector")]
    pub steer_positive: Option<String>,
    /// The prompt whose activations the steering points away from.
    #[arg(long, requires = "steer_positive")]
    pub steer_negative: Option<String>,
    /// A safetensors file holding the steering vector (one tensor, or one named after the hook).
    #[arg(long, requires = "steer")]
    pub steer_vector: Option<PathBuf>,
    /// Multiplies the steering vector.
    #[arg(long, alias = "scale", allow_hyphen_values = true)]
    pub steer_scale: Option<f32>,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Serialize)]
struct GenerateOut {
    model: String,
    prompt: String,
    options: GenerateOptions,
    /// The steering applied, if any.
    steering: Option<SteeringOut>,
    /// The continuation without steering (when steering, for comparison).
    unsteered: Option<Generation>,
    generation: Generation,
}

#[derive(Serialize)]
struct SteeringOut {
    hook: String,
    source: String,
    scale: f32,
    /// The vector's L2 norm before scaling.
    norm: f32,
}

pub fn run_generate(model: &Model, a: &GenerateArgs) -> Result<()> {
    let sampling = if a.temperature.is_some() || a.top_k.is_some() || a.top_p.is_some() {
        Sampling::Sample { temperature: a.temperature.unwrap_or(1.0), top_k: a.top_k, top_p: a.top_p, seed: a.seed }
    } else {
        Sampling::Greedy
    };
    let options = GenerateOptions { max_new_tokens: a.max_new_tokens, sampling, stop_at_eos: !a.ignore_eos, stop_tokens: Vec::new() };

    let (hooks, steering) = match &a.steer {
        None => (Hooks::new(), None),
        Some(spec) => {
            let (hook, file) = match spec.split_once('=') {
                Some((h, f)) => (h, Some(PathBuf::from(f))),
                None => (spec.as_str(), None),
            };
            if file.is_some() && (a.steer_vector.is_some() || a.steer_positive.is_some()) {
                bail!("--steer HOOK=FILE names the vector already; leave out --steer-vector and --steer-positive/--steer-negative");
            }
            let point: HookPoint = hook.parse()?;
            let scale = a.steer_scale.unwrap_or(1.0);
            let (vector, source) = match (&a.steer_positive, &a.steer_negative, file.as_ref().or(a.steer_vector.as_ref())) {
                (Some(pos), Some(neg), None) => (steering_vector(model, point, pos, neg)?, format!("mean({pos:?}) - mean({neg:?})")),
                (None, None, Some(path)) => (load_steering_vector(path, point)?, path.display().to_string()),
                _ => bail!("--steer needs --steer-positive and --steer-negative (two prompts), or a vector file (--steer-vector FILE or --steer HOOK=FILE)"),
            };
            let norm = vector.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
            let hooks = steering_hooks(model, point, &vector, scale)?;
            (hooks, Some(SteeringOut { hook: point.to_string(), source, scale, norm }))
        }
    };
    let unsteered = match steering {
        Some(_) => Some(model.generate(&a.prompt, &options, &Hooks::new())?),
        None => None,
    };
    let generation = model.generate(&a.prompt, &options, &hooks)?;
    let out = crate::methods::finite(GenerateOut { model: model.name.clone(), prompt: a.prompt.clone(), options, steering, unsteered, generation })?;
    if a.json {
        return crate::methods::print_json(&out);
    }
    println!("model  : {}", out.model);
    println!("prompt : {:?}", out.prompt);
    if let (Some(s), Some(u)) = (&out.steering, &out.unsteered) {
        println!("steer  : {} += {} · ({}), |v| = {:.3}", s.hook, s.scale, s.source, s.norm);
        println!("\nunsteered ({} tokens, {:?}):\n{}{}", u.tokens.len(), u.stop, out.prompt, u.text);
        println!("\nsteered ({} tokens, {:?}):\n{}{}", out.generation.tokens.len(), out.generation.stop, out.prompt, out.generation.text);
    } else {
        let g = &out.generation;
        let mean_lp = g.logprobs.iter().map(|&x| x as f64).sum::<f64>() / g.logprobs.len().max(1) as f64;
        println!("\n{}{}", out.prompt, g.text);
        println!("\n({} tokens, {:?}, mean log-probability {mean_lp:.3})", g.tokens.len(), g.stop);
    }
    Ok(())
}
