//! `--plot FILE.svg|FILE.png`: the result's picture, as SVG or rendered to PNG (the library's
//! `plot::png`, with the DejaVu Sans font compiled in, so text renders on machines without fonts).

use std::path::Path;

use anyhow::{bail, Result};
use glassbox::plot::Svg;

/// Writes `svg` to `path` as SVG or PNG (by the extension), through a temporary file renamed
/// into place.
pub fn write(path: &Path, svg: &Svg) -> Result<()> {
    let bytes = match check_path(path)? {
        Format::Svg => svg.finish().into_bytes(),
        Format::Png => glassbox::plot::png(&svg.finish(), 2.0)?,
    };
    glassbox::files::write_bytes(path, &bytes)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The picture formats written.
pub enum Format {
    /// SVG.
    Svg,
    /// PNG, rendered at twice the size.
    Png,
}

/// The format of a plot path, or an error when it cannot be written (checked before a method
/// runs, so that a bad path fails at once).
pub fn check_path(path: &Path) -> Result<Format> {
    glassbox::files::check_output_path(path)?;
    match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
        Some("svg") => Ok(Format::Svg),
        Some("png") => Ok(Format::Png),
        _ => bail!("--plot {} must end in .svg or .png", path.display()),
    }
}
