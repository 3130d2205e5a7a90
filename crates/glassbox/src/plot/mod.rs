//! Pictures of the methods' results as SVG: layer × head heatmaps on a diverging scale centred
//! on zero, the logit-lens curve, attention patterns over the tokens, the circuit and the top
//! edges as layered graphs, token saliency as coloured text. Pure Rust and deterministic (the
//! same result gives the same bytes); every mark carries its figure as `data-value` and its
//! place (`data-layer`, `data-head`, ...), so tests and the dashboard can read the picture.

mod charts;
pub(crate) mod results;
pub mod svg;

use std::collections::BTreeMap;

pub use charts::{attention, bars, graph, heatmap, line_chart, token_text, Heatmap, Node, Series};
pub use results::parse_head;
pub use svg::{Scale, Svg};

use crate::error::{Error, Result};

/// The kinds of result `plot_value` draws: the CLI's command names.
pub const KINDS: &[&str] = &["analyze", "attribution", "patch", "path-patch", "logit-lens", "attention", "edges", "token-attribution", "stability", "composition", "sae-attribute", "graph"];

/// DejaVu Sans (Bitstream Vera license, see assets/LICENSE_DEJAVU), for pictures rendered to
/// PNG on machines without fonts.
#[cfg(feature = "png")]
const DEJAVU: &[u8] = include_bytes!("../../assets/DejaVuSans.ttf");

/// An SVG document (as `Svg::finish` writes it) rendered to PNG at `scale` times its size
/// (feature `png`).
#[cfg(feature = "png")]
pub fn png(svg: &str, scale: f32) -> Result<Vec<u8>> {
    use resvg::{tiny_skia, usvg};
    if !(scale.is_finite() && scale > 0.0 && scale <= 8.0) {
        return Err(Error::Invalid(format!("a PNG scale of {scale}: give a number above 0 and at most 8")));
    }
    let mut opt = usvg::Options { font_family: "DejaVu Sans".into(), ..usvg::Options::default() };
    opt.fontdb_mut().load_font_data(DEJAVU.to_vec());
    let tree = usvg::Tree::from_str(svg, &opt).map_err(|e| Error::Invalid(format!("rendering the picture: {e}")))?;
    let size = tree.size().to_int_size();
    let (w, h) = ((size.width() as f32 * scale).ceil() as u32, (size.height() as f32 * scale).ceil() as u32);
    let mut pixmap = tiny_skia::Pixmap::new(w, h).ok_or_else(|| Error::Invalid(format!("a {w} × {h} image is too large to render")))?;
    resvg::render(&tree, tiny_skia::Transform::from_scale(scale, scale), &mut pixmap.as_mut());
    pixmap.encode_png().map_err(|e| Error::Invalid(format!("encoding the PNG: {e}")))
}

/// A result that has a picture.
pub trait Plot {
    /// The picture.
    fn plot(&self) -> Svg;

    /// The picture as an SVG document.
    fn svg(&self) -> String {
        self.plot().finish()
    }
}

macro_rules! plot_impl {
    ($t:ty, $f:path) => {
        impl Plot for $t {
            fn plot(&self) -> Svg {
                $f(self)
            }
        }
    };
}

plot_impl!(crate::methods::attribution::Attribution, results::attribution);
plot_impl!(crate::methods::patching::Patching, results::patching);
plot_impl!(crate::methods::path_patching::PathPatching, results::path_patching);
plot_impl!(crate::methods::logit_lens::LogitLens, results::logit_lens);
plot_impl!(crate::methods::attention::AttentionPatterns, results::attention_patterns);
plot_impl!(crate::methods::edges::EdgeAttribution, results::edges);
plot_impl!(crate::methods::token_attribution::TokenAttribution, results::token_attribution);
plot_impl!(crate::methods::stability::Stability, results::stability);
plot_impl!(crate::methods::composition::Composition, results::composition);
plot_impl!(crate::methods::sae_attribution::SaeAttribution, results::sae_attribution);
plot_impl!(crate::methods::graph::AttributionGraph, results::attribution_graph);
plot_impl!(crate::methods::evaluate::CircuitEvaluation, results::circuit_evaluation);

impl Plot for crate::methods::analyze::Analysis {
    /// The circuit's heads coloured by their attention type (`head_types`) where the result has them.
    fn plot(&self) -> Svg {
        results::analysis(self, (!self.head_types.is_empty()).then_some(&self.head_types))
    }
}

/// The analysis picture with the circuit's heads coloured by their attention type
/// (`{"L09H06": "induction", ...}`, as `attention_patterns` types them).
pub fn analysis_with_types(a: &crate::methods::analyze::Analysis, head_types: &BTreeMap<String, String>) -> Svg {
    results::analysis(a, Some(head_types))
}

/// The picture of a result given as JSON (as `--json` prints it), by the command that made it
/// (one of `KINDS`; `_` may stand for `-`). `head_types` colours an analysis's circuit.
pub fn plot_value(kind: &str, value: &serde_json::Value, head_types: Option<&BTreeMap<String, String>>) -> Result<Svg> {
    fn parse<T: serde::de::DeserializeOwned>(v: &serde_json::Value, kind: &str) -> Result<T> {
        serde_json::from_value(v.clone()).map_err(|e| Error::Invalid(format!("this is not a `{kind}` result: {e}")))
    }
    let kind = kind.replace('_', "-");
    Ok(match kind.as_str() {
        "analyze" => results::analysis(&parse(value, &kind)?, head_types),
        "attribution" => results::attribution(&parse(value, &kind)?),
        "patch" => results::patching(&parse(value, &kind)?),
        "path-patch" => results::path_patching(&parse(value, &kind)?),
        "logit-lens" => results::logit_lens(&parse(value, &kind)?),
        "attention" => results::attention_patterns(&parse(value, &kind)?),
        "edges" => results::edges(&parse(value, &kind)?),
        "token-attribution" => results::token_attribution(&parse(value, &kind)?),
        "stability" => results::stability(&parse(value, &kind)?),
        "composition" => results::composition(&parse(value, &kind)?),
        "sae-attribute" | "sae-attribution" => results::sae_attribution(&parse(value, &kind)?),
        "graph" | "attribution-graph" => results::attribution_graph(&parse(value, &kind)?),
        other => return Err(Error::Invalid(format!("no picture for `{other}`; kinds: {}", KINDS.join(", ")))),
    })
}
