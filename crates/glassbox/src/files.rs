//! Writing files safely: through a temporary file of a unique name beside the target, renamed
//! over it once complete (a failed or interrupted write leaves no half file and no temporary),
//! and never onto a link, a device, a FIFO or a folder.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// What a path that is not a regular file is, in words.
fn kind_of(meta: &std::fs::Metadata) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a FIFO";
        }
        if t.is_socket() {
            return "a socket";
        }
        if t.is_char_device() || t.is_block_device() {
            return "a device";
        }
    }
    if meta.is_dir() {
        "a folder"
    } else {
        "not a regular file"
    }
}

/// Opens `path` for reading if it is a regular file (or a link to one). It is opened without
/// blocking, then checked with `fstat`: a FIFO would otherwise block `open` until a writer came,
/// and a device such as `/dev/zero` would never end. Anything else is an error naming what the
/// path is.
pub fn open_regular(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.custom_flags(libc::O_NONBLOCK);
    }
    let file = options.open(path)?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("it is {}; give a regular file", kind_of(&meta))));
    }
    Ok(file)
}

/// The whole of a regular file (`open_regular`) as text.
pub fn read_regular_to_string(path: &Path) -> std::io::Result<String> {
    use std::io::Read;
    let mut text = String::new();
    open_regular(path)?.read_to_string(&mut text)?;
    Ok(text)
}

/// A file the options name (a front end that takes requests from others refuses it).
pub const FILE: &str = "a file path";

/// A path option (`steer_vector`, `scores_file`, `ground_truth`): text in the schema, marked as
/// a file so that the dashboard refuses it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FilePath(pub PathBuf);

impl FilePath {
    /// The path as text (lossy where it is not UTF-8), for messages and readers that take text.
    pub fn text(&self) -> String {
        self.0.to_string_lossy().into_owned()
    }
}

impl From<&str> for FilePath {
    fn from(s: &str) -> Self {
        FilePath(PathBuf::from(s))
    }
}

impl crate::schema::FieldType for FilePath {
    fn kind() -> crate::schema::Kind {
        crate::schema::Kind::Text { format: Some(FILE) }
    }
}

/// A temporary name beside `out`, unique to this process and call.
fn temporary(out: &Path) -> Result<PathBuf> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = out.file_name().ok_or_else(|| Error::Invalid(format!("{} does not name a file", crate::error::printable(&out.display()))))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    Ok(out.with_file_name(format!(".{}.{}-{n}.tmp", name.to_string_lossy(), std::process::id())))
}

/// Writes `out` through `write(tmp)` on a temporary file beside it, then renames it over `out`.
/// On failure the temporary file is removed and `out` is as it was.
pub fn write_atomically(out: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    check_output_path(out)?;
    let tmp = temporary(out)?;
    let written = write(&tmp).and_then(|()| std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e)));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// Writes `bytes` to `out` atomically (see `write_atomically`).
pub fn write_bytes(out: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically(out, |tmp| std::fs::write(tmp, bytes).map_err(|e| Error::io(tmp, e)))
}

/// Error unless `out` is a path glassbox may write a file to: new, or an existing regular
/// file (never a link, a device, a FIFO or a folder, which a rename would replace), in a folder
/// that exists.
pub fn check_output_path(out: &Path) -> Result<()> {
    let shown = crate::error::printable(&out.display());
    match std::fs::symlink_metadata(out) {
        Ok(m) if m.file_type().is_symlink() => return Err(Error::Invalid(format!("{shown} is a symbolic link; give the path of a new file (or of a regular file to replace)"))),
        Ok(m) if !m.is_file() => return Err(Error::Invalid(format!("{shown} exists and is not a regular file (a folder, device, FIFO or socket); give the path of a new file"))),
        _ => {}
    }
    let parent = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !parent.is_dir() {
        return Err(Error::Invalid(format!("cannot write {shown}: the folder {} does not exist", crate::error::printable(&parent.display()))));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_write_leaves_neither_a_half_file_nor_a_temporary() {
        let dir = std::env::temp_dir().join(format!("glassbox-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("x.txt");
        std::fs::write(&out, b"before").unwrap();
        let e = write_atomically(&out, |tmp| {
            std::fs::write(tmp, b"half").unwrap();
            Err(Error::Invalid("disk full".into()))
        });
        assert!(e.is_err());
        assert_eq!(std::fs::read(&out).unwrap(), b"before");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().filter_map(|e| e.ok()).map(|e| e.file_name()).collect();
        assert_eq!(left.len(), 1, "only the original file remains: {left:?}");
        write_bytes(&out, b"after").unwrap();
        assert_eq!(std::fs::read(&out).unwrap(), b"after");
        assert!(check_output_path(&dir).is_err());
        assert!(check_output_path(&dir.join("no/such/dir/x.svg")).unwrap_err().to_string().contains("does not exist"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
