//! A set's files: checkpoints (weights, Adam moments, counters, the run's state) and the
//! finished set in circuit-tracer's per-layer layout.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use super::{plt_hooks, Layer, SetTrainOptions, State, NAMES};
use crate::error::{Error, Result};
use crate::model::{HookPoint, Model};
use crate::sae::set::{TranscoderSet, SET_CONFIG};
use crate::sae::train::{read_checkpoint_state, write_checkpoint_dir};

fn tensor(v: &[f32], shape: &[usize]) -> Result<Tensor> {
    Ok(Tensor::from_slice(v, shape, &Device::Cpu)?)
}

pub(super) fn save_checkpoint(dir: &Path, layers: &[Layer], state: &State, model: &Model) -> Result<()> {
    write_checkpoint_dir(dir, state, |tmp| {
        let o = &state.options;
        for (l, layer) in layers.iter().enumerate() {
            let shapes = layer_shapes(o.d_sae, layer.w_enc.len() / o.d_sae, layer.b_dec.len());
            let mut t: HashMap<String, Tensor> = HashMap::new();
            for (i, name) in NAMES.iter().enumerate() {
                t.insert(name.to_string(), tensor(layer.params()[i], &shapes[i])?);
                t.insert(format!("adam_m.{name}"), tensor(&layer.m[i], &shapes[i])?);
                t.insert(format!("adam_v.{name}"), tensor(&layer.v[i], &shapes[i])?);
            }
            let fired: Vec<f64> = layer.last_fired.iter().map(|&x| x as f64).collect();
            t.insert("last_fired".into(), Tensor::from_vec(fired, o.d_sae, &Device::Cpu)?);
            candle_core::safetensors::save(&t, tmp.join(format!("layer_{l}.safetensors")))?;
        }
        // The set as it stands, loadable on its own.
        write_set(&tmp.join("set"), layers, state, model)
    })
}

fn layer_shapes(n: usize, di: usize, d_out: usize) -> [Vec<usize>; 4] {
    [vec![n, di], vec![n], vec![n, d_out], vec![d_out]]
}

pub(super) fn load_checkpoint(dir: &Path, model: &Model, opts: &SetTrainOptions, di: usize, d_out: usize) -> Result<(Vec<Layer>, State)> {
    let state: State = read_checkpoint_state(dir)?;
    let o = &state.options;
    if state.model != model.name() || state.n_layers != model.config().n_layers || o.d_sae != opts.d_sae || o.k != opts.k || o.batch_size != opts.batch_size || o.context != opts.context {
        return Err(Error::Invalid(format!(
            "the checkpoint in {} was made for {} ({} layers) with d_sae {}, k {}, batch {}, context {}; resume with the same model and sizes",
            crate::error::printable(&dir.display()),
            state.model,
            state.n_layers,
            o.d_sae,
            o.k,
            o.batch_size,
            o.context
        )));
    }
    let n_layers = state.n_layers;
    if [state.scale_in.len(), state.scale_out.len(), state.threshold.len()].iter().any(|&l| l != n_layers) {
        return Err(Error::Corrupt { path: dir.join("trainer_state.json"), detail: "per-layer lists of the wrong length".into() });
    }
    let shapes = layer_shapes(o.d_sae, di, d_out);
    let mut layers = Vec::with_capacity(n_layers);
    for l in 0..n_layers {
        let path = dir.join(format!("layer_{l}.safetensors"));
        let t = crate::model::load::read_small_safetensors(&path)?;
        let get = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let v = t.get(name).ok_or_else(|| Error::Corrupt { path: path.clone(), detail: format!("no `{name}` in the checkpoint") })?;
            if v.dims() != shape {
                return Err(Error::Corrupt { path: path.clone(), detail: format!("`{name}` has shape {:?}, not {shape:?}", v.dims()) });
            }
            Ok(v.to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?)
        };
        let p: Vec<Vec<f32>> = NAMES.iter().zip(&shapes).map(|(nm, sh)| get(nm, sh)).collect::<Result<_>>()?;
        let m: Vec<Vec<f32>> = NAMES.iter().zip(&shapes).map(|(nm, sh)| get(&format!("adam_m.{nm}"), sh)).collect::<Result<_>>()?;
        let v: Vec<Vec<f32>> = NAMES.iter().zip(&shapes).map(|(nm, sh)| get(&format!("adam_v.{nm}"), sh)).collect::<Result<_>>()?;
        let fired = t.get("last_fired").ok_or_else(|| Error::Corrupt { path: path.clone(), detail: "no `last_fired`".into() })?;
        let last_fired: Vec<u64> = fired.to_vec1::<f64>()?.into_iter().map(|x| x.max(0.0) as u64).collect();
        if last_fired.len() != o.d_sae {
            return Err(Error::Corrupt { path, detail: "last_fired's length does not match d_sae".into() });
        }
        let [w_enc, b_enc, w_dec, b_dec]: [Vec<f32>; 4] = p.try_into().map_err(|_| Error::Invalid("four parameters".into()))?;
        let m: [Vec<f32>; 4] = m.try_into().map_err(|_| Error::Invalid("four moments".into()))?;
        let v: [Vec<f32>; 4] = v.try_into().map_err(|_| Error::Invalid("four moments".into()))?;
        layers.push(Layer { w_enc, b_enc, w_dec, b_dec, m, v, last_fired });
    }
    Ok((layers, state))
}

/// Writes the set in raw units (the scaling folded into the weights), as `set::TranscoderSet`
/// reads it.
pub(super) fn write_set(dir: &Path, layers: &[Layer], state: &State, model: &Model) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let o = &state.options;
    let n = o.d_sae;
    let mut files = Vec::new();
    for (l, layer) in layers.iter().enumerate() {
        let (si, so) = (state.scale_in[l] as f32, state.scale_out[l] as f32);
        let di = layer.w_enc.len() / n;
        let d_out = layer.b_dec.len();
        // Trained on x·s_in with targets y·s_out: encode(x) = (x·s_in)·Wᵀ + c, decode = (f·W_dec + b)/s_out.
        // Saved in circuit-tracer's per-layer layout: W_enc [d_sae, d_in], W_dec [d_sae, d_out].
        let w_enc: Vec<f32> = layer.w_enc.iter().map(|a| a * si).collect();
        let w_dec: Vec<f32> = layer.w_dec.iter().map(|a| a / so).collect();
        let b_dec: Vec<f32> = layer.b_dec.iter().map(|a| a / so).collect();
        let mut t: HashMap<String, Tensor> = HashMap::new();
        t.insert("W_enc".into(), tensor(&w_enc, &[n, di])?);
        t.insert("W_dec".into(), tensor(&w_dec, &[n, d_out])?);
        t.insert("b_enc".into(), tensor(&layer.b_enc, &[n])?);
        t.insert("b_dec".into(), tensor(&b_dec, &[d_out])?);
        t.insert("activation_function.threshold".into(), Tensor::full(state.threshold[l] as f32, n, &Device::Cpu)?);
        let name = format!("layer_{l}.safetensors");
        candle_core::safetensors::save(&t, dir.join(&name))?;
        files.push(name);
    }
    let (hin, hout) = plt_hooks(0);
    let strip = |h: HookPoint| h.to_string().trim_start_matches("blocks.0.").to_string();
    let config = TranscoderSet::config_text(model.name(), &strip(hin), &strip(hout), &files, &serde_json::json!({
        "trained_with": format!("glassbox {}", env!("CARGO_PKG_VERSION")),
        "training_tokens": state.tokens,
        "d_sae": n,
        "k": o.k,
        "context_size": o.context,
        "activation": "jumprelu (BatchTopK threshold)",
    }));
    std::fs::write(dir.join(SET_CONFIG), config).map_err(|e| Error::io(dir, e))?;
    Ok(())
}
