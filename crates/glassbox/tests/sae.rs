//! SAEs: loading SAELens' formats (both config layouts, every architecture) and Gemma Scope's
//! parameters, with feature activations equal to sae-lens' `encode` (fixtures written by the
//! real package, scripts/make_fixtures.py --only sae); SAE attribution's identities on a tiny
//! model.

mod common;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use glassbox::methods::sae_attribution::{sae_attribution, SaeAttributionOptions};
use glassbox::methods::Prompt;
use glassbox::sae::{Architecture, Normalize, Sae};
use glassbox::{HookPoint, Model};

use common::{cleared, corpus_seqs, fixtures, scratch};

fn sae_dir(name: &str) -> PathBuf {
    fixtures().join("sae").join(name)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let d = (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap()).unwrap().abs().unwrap();
    d.flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

fn max_abs(a: &Tensor) -> f32 {
    a.to_dtype(DType::F32).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// glassbox's encode and decode of the fixture's inputs against sae-lens'.
fn check_against_sae_lens(dir: &Path, hook: Option<HookPoint>) -> Sae {
    let sae = Sae::load(dir, hook).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let expected = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let x = sae.rows(&expected["x"]).unwrap();
    let enc = sae.encode(&x).unwrap();
    let want = expected["acts"].reshape(enc.acts.dims()).unwrap();
    let tol = 1e-5 * (1.0 + max_abs(&want));
    let d = max_diff(&enc.acts, &want);
    assert!(d <= tol, "{}: activations differ by {d} (tolerance {tol})", dir.display());
    let active = want.ne(0f32).unwrap().to_dtype(DType::F32).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(active > 0.0 && active < want.elem_count() as f32, "{}: the fixture should have some, not all, features active", dir.display());
    let recon = sae.output(&x, &enc).unwrap();
    let want = expected["recon"].reshape(recon.dims()).unwrap();
    let d = max_diff(&recon, &want);
    assert!(d <= 1e-4 * (1.0 + max_abs(&want)), "{}: reconstruction differs by {d}", dir.display());
    sae
}

#[test]
fn every_sae_lens_architecture_encodes_as_sae_lens_does() {
    type Check = fn(&Sae) -> bool;
    let cases: &[(&str, Check)] = &[
        ("standard", |s| s.cfg.architecture == Architecture::Standard && s.cfg.apply_b_dec_to_input && s.cfg.format == "sae-lens 6"),
        ("standard_nobdec", |s| !s.cfg.apply_b_dec_to_input),
        ("layernorm", |s| s.cfg.normalize == Normalize::LayerNorm),
        ("constant_norm_rescale", |s| s.cfg.normalize == Normalize::ConstantNormRescale),
        ("hook_z", |s| s.cfg.reshape_hook_z && s.cfg.hook == HookPoint::Z(1)),
        ("topk", |s| s.cfg.architecture == Architecture::TopK { k: 8, rescale_by_decoder_norm: false }),
        ("topk_rescale", |s| s.cfg.architecture == Architecture::TopK { k: 8, rescale_by_decoder_norm: true }),
        ("jumprelu", |s| s.cfg.architecture == Architecture::JumpRelu && s.threshold.is_some()),
        ("batchtopk", |s| s.cfg.architecture == Architecture::JumpRelu),
        ("gated", |s| s.cfg.architecture == Architecture::Gated),
        ("transcoder", |s| s.cfg.hook_out == Some(HookPoint::MlpOut(1)) && s.cfg.hook == HookPoint::Ln2Normalized(1)),
        ("skip_transcoder", |s| s.w_skip.is_some()),
        ("jumprelu_transcoder", |s| s.cfg.architecture == Architecture::JumpRelu && s.cfg.hook_out.is_some()),
        ("old_standard", |s| s.cfg.format == "sae-lens < 6" && s.cfg.architecture == Architecture::Standard && s.cfg.hook == HookPoint::ResidPost(0)),
        ("old_topk", |s| s.cfg.format == "sae-lens < 6" && s.cfg.architecture == Architecture::TopK { k: 8, rescale_by_decoder_norm: false }),
    ];
    for (name, check) in cases {
        let sae = check_against_sae_lens(&sae_dir(name), None);
        assert!(check(&sae), "{name}: {:?}", sae.cfg);
    }
    let s = Sae::load(&sae_dir("standard"), None).unwrap();
    assert_eq!(s.neuronpedia_url(17).as_deref(), Some("https://www.neuronpedia.org/tiny-llama/0-res-test/17"));
    assert_eq!(Sae::load(&sae_dir("old_standard"), None).unwrap().neuronpedia_url(3).as_deref(), Some("https://www.neuronpedia.org/tiny-llama/0-res-old/3"));
}

#[test]
fn gemma_scope_parameters_load_with_a_hook() {
    let dir = sae_dir("gemma_scope");
    let err = Sae::load(&dir, None).unwrap_err().to_string();
    assert!(err.contains("name no hook point"), "{err}");
    let sae = check_against_sae_lens(&dir, Some(HookPoint::ResidPost(0)));
    assert_eq!((sae.cfg.format.as_str(), sae.cfg.apply_b_dec_to_input), ("gemma-scope", false));
}

#[test]
fn bad_sae_folders_are_errors() {
    let tmp = scratch("sae-bad");
    let copy = |name: &str, cfg: &dyn Fn(&mut serde_json::Value)| -> PathBuf {
        let d = tmp.join(name);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::copy(sae_dir("topk").join("sae_weights.safetensors"), d.join("sae_weights.safetensors")).unwrap();
        let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(sae_dir("topk").join("cfg.json")).unwrap()).unwrap();
        cfg(&mut v);
        std::fs::write(d.join("cfg.json"), v.to_string()).unwrap();
        d
    };
    let cases: Vec<(PathBuf, &str)> = vec![
        (copy("k0", &|v| v["k"] = 0.into()), "k = 0"),
        (copy("kbig", &|v| v["k"] = 1000.into()), "k = 1000"),
        (copy("dsae", &|v| v["d_sae"] = 95.into()), "shape"),
        (copy("arch", &|v| v["architecture"] = "matching_pursuit".into()), "not supported"),
        (copy("hook", &|v| v["metadata"]["hook_name"] = "blocks.0.hook_nothing".into()), "hook_name"),
        (copy("nohook", &|v| { v["metadata"].as_object_mut().unwrap().remove("hook_name"); }), "names no hook point"),
        (copy("norm", &|v| v["normalize_activations"] = "whitening".into()), "normalize_activations"),
        (tmp.join("missing"), "cannot read"),
        (sae_dir("topk").join("cfg.json"), "is a folder"),
    ];
    for (dir, needle) in cases {
        let err = Sae::load(&dir, None).unwrap_err().to_string();
        assert!(err.contains(needle), "{}: `{err}` lacks `{needle}`", dir.display());
    }
    // Truncated weights, and a compressed .npz.
    let d = copy("trunc", &|_| {});
    let bytes = std::fs::read(d.join("sae_weights.safetensors")).unwrap();
    std::fs::write(d.join("sae_weights.safetensors"), &bytes[..bytes.len() / 2]).unwrap();
    assert!(Sae::load(&d, None).unwrap_err().to_string().contains("safetensors"));
    let d = tmp.join("npz");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("params.npz"), b"PK\x03\x04\x14\x00\x00\x00\x08\x00").unwrap();
    let err = Sae::load(&d, Some(HookPoint::ResidPost(0))).unwrap_err().to_string();
    assert!(err.contains("runs past the end") || err.contains("compressed"), "{err}");
    // An SAE for another model's width.
    let model = Model::load(&fixtures().join("tiny-gpt2")).unwrap();
    let sae = Sae::load(&sae_dir("standard"), None).unwrap();
    if model.config().d_model != 64 {
        assert!(sae.check(&model).unwrap_err().to_string().contains("made for another model"));
    }
}

fn tiny() -> (Model, Prompt) {
    let model = Model::load(&fixtures().join("tiny-llama")).unwrap();
    let prompt = Prompt::new(&model, "When Mary and John went to the store, John gave a drink to", " Mary", " John").unwrap();
    (model, prompt)
}

#[test]
fn direct_effects_error_and_rest_decompose_the_logit_difference() {
    let (model, prompt) = tiny();
    for name in ["standard", "layernorm", "constant_norm_rescale", "topk_rescale", "jumprelu"] {
        let sae = Sae::load(&sae_dir(name), None).unwrap();
        let r = sae_attribution(&model, &sae, &prompt, &SaeAttributionOptions { top_k: 1000, n_exact: 0, ..Default::default() }).unwrap();
        let d = r.direct.as_ref().expect("a residual-stream SAE has direct effects");
        assert!(d.decomposition_residual <= 1e-4 * (1.0 + r.clean_ld.abs()), "{name}: residual {} of LD {}", d.decomposition_residual, r.clean_ld);
        let sum: f32 = r.top_features.iter().map(|f| f.direct_effect.unwrap()).sum();
        assert!((sum - d.features).abs() <= 1e-4, "{name}: every active feature listed");
        assert!(d.error.abs() > 1e-6 && d.rest.abs() > 1e-6, "{name}: each part present");
        assert_eq!(r.top_features.len(), r.n_active);
    }
}

#[test]
fn gradient_times_activation_matches_exact_ablation_when_near_linear() {
    let (model, prompt) = tiny();
    for name in ["standard", "hook_z", "transcoder", "topk"] {
        let mut sae = Sae::load(&sae_dir(name), None).unwrap();
        // Small decoder rows: removing one feature is a small step, where first order is exact
        // to within its square.
        sae.w_dec = (&sae.w_dec * 1e-3).unwrap();
        let r = sae_attribution(&model, &sae, &prompt, &SaeAttributionOptions { top_k: 10, n_exact: 10, ..Default::default() }).unwrap();
        assert!(!r.top_features.is_empty());
        for f in &r.top_features {
            let exact = f.exact_effect.unwrap();
            let tol = 2e-2 * exact.abs() + 1e-6;
            assert!((f.ld_contribution - exact).abs() <= tol, "{name} feature {}: gradient × activation {} against exact {exact}", f.feature_id, f.ld_contribution);
        }
        // Sorted by |contribution|, with their directions.
        for w in r.top_features.windows(2) {
            assert!(w[0].ld_contribution.abs() >= w[1].ld_contribution.abs());
        }
        for f in &r.top_features {
            assert_eq!(f.direction, if f.ld_contribution >= 0.0 { "target" } else { "distractor" });
        }
    }
}

#[test]
fn attribution_of_the_unscaled_saes_and_its_errors() {
    let (model, prompt) = tiny();
    let sae = Sae::load(&sae_dir("jumprelu_transcoder"), None).unwrap();
    let r = sae_attribution(&model, &sae, &prompt, &SaeAttributionOptions::default()).unwrap();
    assert_eq!(r.hook_out.as_deref(), Some("blocks.1.hook_mlp_out"));
    assert!(r.direct.is_none(), "a transcoder writes to the MLP output, not the residual stream");
    assert!(r.top_features.iter().take(10).all(|f| f.exact_effect.is_some()));
    let sae = Sae::load(&sae_dir("standard"), None).unwrap();
    let kl = SaeAttributionOptions { metric: glassbox::methods::Metric::parse("kl").unwrap(), ..Default::default() };
    let r = sae_attribution(&model, &sae, &prompt, &kl).unwrap();
    assert!(r.direct.is_none() && r.clean_ld.abs() < 1e-6, "KL of the clean run to itself is 0");
    let bad = SaeAttributionOptions { top_k: 0, ..Default::default() };
    assert!(sae_attribution(&model, &sae, &prompt, &bad).unwrap_err().to_string().contains("top_k"));
    let mut wrong = sae.clone();
    wrong.cfg.hook = HookPoint::ResidPost(7);
    assert!(sae_attribution(&model, &wrong, &prompt, &SaeAttributionOptions::default()).unwrap_err().to_string().contains("out of range"));
}

fn small_options() -> glassbox::sae::train::TrainOptions {
    glassbox::sae::train::TrainOptions { d_sae: 96, k: 6, batch_size: 128, tokens: 128 * 40, context: 48, buffer: 1024, checkpoint_every: 0, ..Default::default() }
}

#[test]
fn a_trained_topk_sae_learns_loads_and_evaluates() {
    use glassbox::sae::train::train;
    let (model, prompt) = tiny();
    let out = cleared("sae-train-topk");
    let seqs = corpus_seqs(&model, 48);
    let mut fvu = Vec::new();
    train(&model, &glassbox::sae::train::Site { hook_in: HookPoint::ResidPost(0), hook_out: None, out: &out, resume: false }, seqs.clone(), &small_options(), &mut |r| {
        fvu.push(r.fvu);
        assert!((r.l0 - 6.0).abs() < 1e-6, "TopK keeps exactly k");
        true
    })
    .unwrap();
    assert_eq!(fvu.len(), 40);
    let first: f32 = fvu[..5].iter().sum::<f32>() / 5.0;
    let last: f32 = fvu[35..].iter().sum::<f32>() / 5.0;
    assert!(last < 0.85 * first, "the reconstruction improves: FVU {first} → {last}");
    let sae = Sae::load(&out, None).unwrap();
    assert_eq!(sae.cfg.architecture, Architecture::TopK { k: 6, rescale_by_decoder_norm: false });
    // On the model's own activations (not rescaled by hand), the saved SAE reconstructs as well
    // as training said: the input scaling is folded into the weights.
    let ev = glassbox::sae::eval::evaluate(&model, &sae, &seqs[..8], 4).unwrap();
    assert!(ev.explained_variance > 1.0 - 1.5 * last && ev.explained_variance > 0.2, "{ev:?} after FVU {last}");
    assert!((ev.l0 - 6.0).abs() < 1e-6 && ev.ce_loss_recovered.is_finite(), "{ev:?}");
    // And it attributes.
    let r = sae_attribution(&model, &sae, &prompt, &SaeAttributionOptions::default()).unwrap();
    assert!(r.direct.unwrap().decomposition_residual < 1e-4);
}

#[test]
fn training_resumes_from_its_checkpoint_and_transcoders_train() {
    use glassbox::sae::train::train;
    let (model, _) = tiny();
    let out = cleared("sae-train-resume");
    let seqs = corpus_seqs(&model, 48);
    let opts = glassbox::sae::train::TrainOptions { checkpoint_every: 10, ..small_options() };
    // Stopped after step 15: a checkpoint is written there.
    let err = train(&model, &glassbox::sae::train::Site { hook_in: HookPoint::ResidPost(0), hook_out: None, out: &out, resume: false }, seqs.clone(), &opts, &mut |r| r.step < 15).unwrap_err().to_string();
    assert!(err.contains("stopped at step 15") && err.contains("--resume"), "{err}");
    assert!(Sae::load(&out.join("checkpoint/sae"), None).is_ok(), "the checkpoint holds a loadable SAE");
    let mut steps = Vec::new();
    train(&model, &glassbox::sae::train::Site { hook_in: HookPoint::ResidPost(0), hook_out: None, out: &out, resume: true }, seqs.clone(), &opts, &mut |r| {
        steps.push(r.step);
        true
    })
    .unwrap();
    assert_eq!(steps.first(), Some(&16), "resumed after the checkpoint's step");
    assert_eq!(steps.last(), Some(&40));
    assert!(!out.join("checkpoint").exists(), "the checkpoint goes once the run is done");
    assert!(Sae::load(&out, None).is_ok());
    // A different size does not resume from another run's checkpoint.
    let _ = train(&model, &glassbox::sae::train::Site { hook_in: HookPoint::ResidPost(0), hook_out: None, out: &out, resume: false }, seqs.clone(), &opts, &mut |r| r.step < 12);
    let other = glassbox::sae::train::TrainOptions { d_sae: 64, ..opts.clone() };
    let err = train(&model, &glassbox::sae::train::Site { hook_in: HookPoint::ResidPost(0), hook_out: None, out: &out, resume: true }, seqs.clone(), &other, &mut |_| true).unwrap_err().to_string();
    assert!(err.contains("same model, hook points and sizes"), "{err}");

    // A transcoder: BatchTopK, saved as a JumpReLU transcoder.
    let tc = cleared("sae-train-transcoder");
    train(&model, &glassbox::sae::train::Site { hook_in: HookPoint::Ln2Normalized(1), hook_out: Some(HookPoint::MlpOut(1)), out: &tc, resume: false }, seqs.clone(), &small_options(), &mut |_| true).unwrap();
    let t = Sae::load(&tc, None).unwrap();
    assert_eq!((t.cfg.architecture, t.cfg.hook_out), (Architecture::JumpRelu, Some(HookPoint::MlpOut(1))));
    let ev = glassbox::sae::eval::evaluate(&model, &t, &seqs[..4], 4).unwrap();
    assert!(ev.l0 > 0.0 && ev.explained_variance.is_finite(), "{ev:?}");
}

#[test]
fn bad_training_arguments_are_errors() {
    use glassbox::sae::train::{train, TrainOptions};
    let (model, _) = tiny();
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("sae-train-bad");
    let seqs = corpus_seqs(&model, 48);
    let cases: Vec<(TrainOptions, &str)> = vec![
        (TrainOptions { k: 0, ..small_options() }, "k"),
        (TrainOptions { k: 97, ..small_options() }, "k"),
        (TrainOptions { buffer: 10, ..small_options() }, "buffer"),
        (TrainOptions { lr: Some(f64::NAN), ..small_options() }, "learning rate"),
        (TrainOptions { d_sae: 1 << 22, ..small_options() }, "d_sae"),
    ];
    for (o, needle) in cases {
        let err = train(&model, &glassbox::sae::train::Site { hook_in: HookPoint::ResidPost(0), hook_out: None, out: &out, resume: false }, seqs.clone(), &o, &mut |_| true).unwrap_err().to_string();
        assert!(err.contains(needle), "`{err}` lacks `{needle}`");
    }
    let err = train(&model, &glassbox::sae::train::Site { hook_in: HookPoint::ResidPost(0), hook_out: None, out: &out, resume: true }, seqs.clone(), &small_options(), &mut |_| true).unwrap_err().to_string();
    assert!(err.contains("no checkpoint to resume"), "{err}");
    assert!(glassbox::sae::corpus::sequences(&model, &["hi".to_string()], 1).is_err());
    assert!(glassbox::sae::corpus::read_documents(&[]).is_err());
}

#[test]
fn circuit_heads_shares_of_a_feature_add_up_with_the_rest() {
    use glassbox::methods::sae_attribution::{circuit_features, CircuitFeatureOptions};
    use glassbox::methods::Head;
    let (model, prompt) = tiny();
    let sae = Sae::load(&sae_dir("standard"), None).unwrap();
    let heads: Vec<Head> = (0..4).map(|h| Head { layer: 0, head: h }).collect();
    let r = circuit_features(&model, &sae, &prompt, &CircuitFeatureOptions { heads: heads.clone(), top_k: 96 }).unwrap();
    // Identity: every layer-0 head's share + the embedding's and MLP 0's projections + b_enc −
    // b_dec·W_enc = the pre-activation (LLaMA: no attention bias, resid_post 0 = embed + heads + MLP).
    let out = model
        .forward(&glassbox::Batch::new(std::slice::from_ref(&prompt.tokens)).unwrap(), &glassbox::Hooks::new().cache([HookPoint::Embed, HookPoint::MlpOut(0)]))
        .unwrap();
    let last = prompt.tokens.len() - 1;
    let rest = (out.cache.get(HookPoint::Embed).unwrap().get(0).unwrap().get(last).unwrap() + out.cache.get(HookPoint::MlpOut(0)).unwrap().get(0).unwrap().get(last).unwrap()).unwrap();
    let rest_proj = (rest.unsqueeze(0).unwrap() - sae.b_dec.unsqueeze(0).unwrap()).unwrap().matmul(&sae.w_enc).unwrap().broadcast_add(&sae.b_enc).unwrap().squeeze(0).unwrap().to_vec1::<f32>().unwrap();
    let first = &r.heads[0].top_features;
    assert!(!first.is_empty());
    for f in first {
        let heads_sum: f32 = r.heads.iter().map(|h| h.top_features.iter().find(|g| g.feature_id == f.feature_id).unwrap().head_contribution).sum();
        let total = heads_sum + rest_proj[f.feature_id];
        assert!((total - f.pre_activation).abs() < 1e-4 * (1.0 + f.pre_activation.abs()), "feature {}: {total} against {}", f.feature_id, f.pre_activation);
    }
    let late = circuit_features(&model, &sae, &prompt, &CircuitFeatureOptions { heads: vec![Head { layer: 1, head: 0 }], top_k: 5 });
    assert!(late.unwrap_err().to_string().contains("writes after the SAE reads"));
}

#[test]
fn a_run_stopped_after_a_layer_caches_what_the_full_run_does() {
    let (model, prompt) = tiny();
    let b = glassbox::Batch::new(std::slice::from_ref(&prompt.tokens)).unwrap();
    let full = model.forward(&b, &glassbox::Hooks::new().cache([HookPoint::ResidPost(0), HookPoint::MlpOut(0)])).unwrap();
    let early = model.forward(&b, &glassbox::Hooks::new().cache([HookPoint::ResidPost(0), HookPoint::MlpOut(0)]).stop_after_layer(0)).unwrap();
    for p in [HookPoint::ResidPost(0), HookPoint::MlpOut(0)] {
        assert_eq!(max_diff(full.cache.get(p).unwrap(), early.cache.get(p).unwrap()), 0.0, "{p}");
    }
    assert_eq!(early.logits.dims(), &[1, 0, 0]);
    assert!(early.cache.get(HookPoint::ResidPost(1)).is_err());
    // Reading logits from it is an error that says why, not an index error.
    for err in [early.last_logits().unwrap_err(), early.logit_diff(&[1], &[2]).unwrap_err()] {
        assert!(err.to_string().contains("stop_after_layer"), "{err}");
    }
}
