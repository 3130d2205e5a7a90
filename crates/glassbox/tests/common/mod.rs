//! Shared helpers for the integration tests: fixture paths, reference files, tolerances.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use glassbox::Model;

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

pub fn load_tiny(name: &str) -> Model {
    Model::load(&fixtures().join(name)).unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

/// A reference file's tensors and its `__metadata__`.
pub struct Reference {
    pub tensors: HashMap<String, Tensor>,
    pub metadata: HashMap<String, String>,
}

impl Reference {
    pub fn load(path: PathBuf) -> Reference {
        let tensors = candle_core::safetensors::load(&path, &Device::Cpu)
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let bytes = std::fs::read(&path).expect("reference file");
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
        let metadata = header
            .get("__metadata__")
            .and_then(|m| serde_json::from_value(m.clone()).ok())
            .unwrap_or_default();
        Reference { tensors, metadata }
    }

    pub fn get(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference has no tensor {name}"))
    }

    pub fn ids(&self, prompt: usize) -> Vec<u32> {
        self.get(&format!("p{prompt}.input_ids"))
            .to_dtype(DType::I64)
            .unwrap()
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|x| x as u32)
            .collect()
    }

    pub fn prompts(&self) -> Vec<String> {
        serde_json::from_str(&self.metadata["prompts"]).expect("prompts metadata")
    }
}

/// `max |a - b|` over all elements (shapes must match).
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}
