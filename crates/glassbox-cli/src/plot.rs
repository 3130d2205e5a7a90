//! `--plot FILE.svg|FILE.png`: the result's picture, as SVG or rendered to PNG (with the
//! DejaVu Sans font compiled in, so text renders on machines without fonts).

use std::path::Path;

use anyhow::{bail, Context, Result};
use glassbox::plot::Svg;

/// DejaVu Sans (Bitstream Vera license, see assets/LICENSE_DEJAVU).
const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Writes `svg` to `path` as SVG or PNG (by the extension), through a temporary file renamed
/// into place.
pub fn write(path: &Path, svg: &Svg) -> Result<()> {
    crate::check_output_path(path)?;
    let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let bytes = match ext.as_deref() {
        Some("svg") => svg.finish().into_bytes(),
        Some("png") => png(svg)?,
        _ => bail!("--plot {} must end in .svg or .png", path.display()),
    };
    crate::write_atomically(path, &bytes)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The drawing rendered at twice its size.
pub fn png(svg: &Svg) -> Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    let mut opt = usvg::Options { font_family: "DejaVu Sans".into(), ..usvg::Options::default() };
    opt.fontdb_mut().load_font_data(FONT.to_vec());
    let tree = usvg::Tree::from_str(&svg.finish(), &opt).context("rendering the plot")?;
    let size = tree.size().to_int_size();
    let (w, h) = (size.width().saturating_mul(2), size.height().saturating_mul(2));
    let mut pixmap = tiny_skia::Pixmap::new(w, h).with_context(|| format!("a {w} × {h} image is too large to render"))?;
    resvg::render(&tree, tiny_skia::Transform::from_scale(2.0, 2.0), &mut pixmap.as_mut());
    pixmap.encode_png().context("encoding the PNG")
}
