//! Activation steering on the default model: the direction from an angry sentence to a kind
//! one at `blocks.3.hook_resid_pre`, added while SmolLM2 continues a prompt.
//!
//! ```text
//! cargo run --release -p glassbox --example steering
//! ```

use glassbox::methods::steering::{steering_hooks, steering_vector};
use glassbox::{registry, GenerateOptions, HookPoint, Hooks, Model};

fn main() -> glassbox::Result<()> {
    let model = Model::load(&registry::resolve(registry::DEFAULT_MODEL, &mut |m| eprintln!("{m}"))?)?;
    let point: HookPoint = "blocks.3.hook_resid_pre".parse()?;
    let kind = "I love you, you are wonderful, I am so happy";
    let angry = "I hate you, you are terrible, I am so angry";
    let vector = steering_vector(&model, point, kind, angry)?;
    let prompt = "I went up to my friend and said";
    let options = GenerateOptions { max_new_tokens: 20, ..GenerateOptions::default() };

    println!("steering at {point}: mean({kind:?}) - mean({angry:?})\n");
    for scale in [0.0f32, 4.0, -4.0] {
        let hooks = if scale == 0.0 { Hooks::new() } else { steering_hooks(&model, point, &vector, scale)? };
        let g = model.generate(prompt, &options, &hooks)?;
        println!("scale {scale:>4}: {prompt}{}", g.text.replace('\n', "\\n"));
    }
    Ok(())
}
