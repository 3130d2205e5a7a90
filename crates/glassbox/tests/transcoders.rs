//! Transcoder sets: a whole set trained from one pass over a corpus (every layer's MLP input
//! and output from the same forward), checkpointed and resumed, written in circuit-tracer's
//! per-layer layout and loaded back.

mod common;

use glassbox::sae::set::TranscoderSet;
use glassbox::sae::train_set::{train_set, SetTrainOptions};
use glassbox::{HookPoint, Model};

use common::{cleared, corpus_seqs, load_tiny};

fn tiny() -> Model {
    load_tiny("tiny-llama")
}

fn small() -> SetTrainOptions {
    SetTrainOptions { d_sae: 64, k: 6, batch_size: 128, tokens: 128 * 40, context: 48, buffer: 1024, checkpoint_every: 0, ..Default::default() }
}

#[test]
fn a_transcoder_set_trains_for_every_layer_at_once_and_loads() {
    let model = tiny();
    let out = cleared("tset-train");
    let seqs = corpus_seqs(&model, 48);
    let mut fvu: Vec<Vec<f32>> = Vec::new();
    train_set(&model, seqs.clone(), &small(), &out, false, &mut |r| {
        assert_eq!(r.fvu.len(), model.config().n_layers);
        fvu.push(r.fvu.clone());
        true
    })
    .unwrap();
    assert_eq!(fvu.len(), 40);
    for l in 0..model.config().n_layers {
        let first: f32 = fvu[..5].iter().map(|f| f[l]).sum::<f32>() / 5.0;
        let last: f32 = fvu[35..].iter().map(|f| f[l]).sum::<f32>() / 5.0;
        assert!(last < 0.8 * first, "layer {l} learns: FVU {first} → {last}");
    }
    let set = TranscoderSet::load(&out).unwrap();
    set.check(&model).unwrap();
    for (l, t) in set.transcoders.iter().enumerate() {
        assert_eq!((t.cfg.hook, t.cfg.hook_out), (HookPoint::Ln2Normalized(l), Some(HookPoint::MlpOut(l))));
        // On the model's own activations the saved transcoder reconstructs about as well as
        // training said: the scaling is folded into the weights.
        let ev = glassbox::sae::eval::evaluate(&model, t, &seqs[..8], 4).unwrap();
        let last = fvu[39][l];
        assert!(ev.explained_variance > 1.0 - 1.6 * last, "layer {l}: {ev:?} after FVU {last}");
    }
}

#[test]
fn a_set_resumes_from_its_checkpoint_and_refuses_other_sizes() {
    let model = tiny();
    let out = cleared("tset-resume");
    let seqs = corpus_seqs(&model, 48);
    let opts = SetTrainOptions { checkpoint_every: 10, ..small() };
    let err = train_set(&model, seqs.clone(), &opts, &out, false, &mut |r| r.step < 15).unwrap_err().to_string();
    assert!(err.contains("stopped at step 15") && err.contains("--resume"), "{err}");
    TranscoderSet::load(&out.join("checkpoint/set")).unwrap().check(&model).unwrap();
    let mut steps = Vec::new();
    train_set(&model, seqs.clone(), &opts, &out, true, &mut |r| {
        steps.push(r.step);
        true
    })
    .unwrap();
    assert_eq!((steps.first(), steps.last()), (Some(&16), Some(&40)));
    assert!(!out.join("checkpoint").exists());
    let _ = train_set(&model, seqs.clone(), &opts, &out, false, &mut |r| r.step < 12);
    let err = train_set(&model, seqs, &SetTrainOptions { d_sae: 32, ..opts }, &out, true, &mut |_| true).unwrap_err().to_string();
    assert!(err.contains("same model and sizes"), "{err}");
}

#[test]
fn a_sets_evaluation_gives_each_layers_figures_as_one_transcoder_would() {
    let model = tiny();
    let set = glassbox::sae::set::TranscoderSet::load(&common::fixtures().join("transcoders/tiny-llama")).unwrap();
    let seqs: Vec<Vec<u32>> = common::corpus_seqs(&model, 48).into_iter().take(8).collect();
    let r = glassbox::sae::eval::evaluate_set(&model, &set, &seqs, 4).unwrap();
    assert_eq!(r.layers.len(), 2);
    for (l, t) in set.transcoders.iter().enumerate() {
        let one = glassbox::sae::eval::evaluate(&model, t, &seqs, 4).unwrap();
        assert!((one.explained_variance - r.layers[l].explained_variance).abs() < 1e-4, "layer {l}: {} against {}", one.explained_variance, r.layers[l].explained_variance);
        assert!((one.l0 - r.layers[l].l0).abs() < 1e-4);
        assert!((one.ce_clean - r.ce_clean).abs() < 1e-5, "the clean loss is the same run's");
    }
    assert!(r.ce_replaced.is_finite() && r.ce_zero.is_finite() && (r.ce_zero - r.ce_clean).abs() > 1e-4);
}
