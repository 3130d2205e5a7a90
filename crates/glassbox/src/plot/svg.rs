//! A small SVG writer: shapes and text with fixed-precision coordinates (so the same figures
//! give the same bytes), XML-escaped text, and the colour scales of the plots.

use std::fmt::Write;

/// Font used by every text element (present on most systems; the PNG renderer embeds one).
pub const FONT: &str = "DejaVu Sans, Verdana, Arial, sans-serif";

/// An SVG drawing being built: a size, a `kind` (written as `data-kind` on the root, so tests
/// and the dashboard can find plots of a kind), and its elements.
#[derive(Debug, Clone)]
pub struct Svg {
    /// Width in pixels.
    pub width: f64,
    /// Height in pixels.
    pub height: f64,
    kind: String,
    body: String,
}

/// A number for an attribute: two decimals, no `-0.00`.
pub fn num(x: f64) -> String {
    let s = format!("{x:.2}");
    if s == "-0.00" {
        "0.00".into()
    } else {
        s
    }
}

/// A figure for a `data-value` attribute or a tooltip: seven significant digits, as JSON would
/// give them back within float precision.
pub fn val(x: f32) -> String {
    if x == 0.0 {
        return "0".into();
    }
    format!("{x:.6e}").parse::<f64>().map(|v| format!("{v}")).unwrap_or_else(|_| x.to_string())
}

/// `s` escaped for XML text and attributes; control characters become `?`.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push('?'),
            c => out.push(c),
        }
    }
    out
}

/// Text anchoring.
#[derive(Debug, Clone, Copy)]
pub enum Anchor {
    /// Left-aligned at x.
    Start,
    /// Centred on x.
    Middle,
    /// Right-aligned at x.
    End,
}

impl Anchor {
    fn as_str(self) -> &'static str {
        match self {
            Anchor::Start => "start",
            Anchor::Middle => "middle",
            Anchor::End => "end",
        }
    }
}

impl Svg {
    /// An empty drawing of `kind`, `width` × `height` pixels.
    pub fn new(kind: &str, width: f64, height: f64) -> Svg {
        Svg { width, height, kind: kind.to_string(), body: String::new() }
    }

    /// A rectangle `(x, y, width, height)`; `attrs` are extra attributes written as they are (already escaped), and
    /// `title` a tooltip.
    pub fn rect(&mut self, (x, y, w, h): (f64, f64, f64, f64), fill: &str, stroke: Option<(&str, f64)>, attrs: &str, title: Option<&str>) {
        let stroke = stroke.map_or(String::new(), |(c, w)| format!(" stroke=\"{c}\" stroke-width=\"{}\"", num(w)));
        let _ = write!(self.body, "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{fill}\"{stroke}{}", num(x), num(y), num(w.max(0.0)), num(h.max(0.0)), pad(attrs));
        match title {
            Some(t) => {
                let _ = write!(self.body, "><title>{}</title></rect>", esc(t));
            }
            None => self.body.push_str("/>"),
        }
    }

    /// Text at `(x, y)` (baseline), `size` pixels.
    pub fn text(&mut self, x: f64, y: f64, s: &str, anchor: Anchor, size: f64, attrs: &str) {
        let _ = write!(
            self.body,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"{}\" font-size=\"{}\" font-family=\"{FONT}\"{}>{}</text>",
            num(x),
            num(y),
            anchor.as_str(),
            num(size),
            pad(attrs),
            esc(s)
        );
    }

    /// Text rotated by `deg` degrees about its anchor point.
    pub fn text_rotated(&mut self, x: f64, y: f64, s: &str, anchor: Anchor, size: f64, deg: f64) {
        let attrs = format!("transform=\"rotate({} {} {})\"", num(deg), num(x), num(y));
        self.text(x, y, s, anchor, size, &attrs);
    }

    /// A line segment from one point to another.
    pub fn line(&mut self, (x1, y1): (f64, f64), (x2, y2): (f64, f64), stroke: &str, width: f64, attrs: &str) {
        let _ = write!(
            self.body,
            "<line x1=\"{}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"{stroke}\" stroke-width=\"{}\"{}/>",
            num(x1),
            num(y1),
            num(x2),
            num(y2),
            num(width),
            pad(attrs)
        );
    }

    /// A circle `(cx, cy, r)`, with a tooltip when `title` is given.
    pub fn circle(&mut self, (cx, cy, r): (f64, f64, f64), fill: &str, stroke: &str, attrs: &str, title: Option<&str>) {
        let _ = write!(self.body, "<circle cx=\"{}\" cy=\"{}\" r=\"{}\" fill=\"{fill}\" stroke=\"{stroke}\"{}", num(cx), num(cy), num(r), pad(attrs));
        match title {
            Some(t) => {
                let _ = write!(self.body, "><title>{}</title></circle>", esc(t));
            }
            None => self.body.push_str("/>"),
        }
    }

    /// A polyline through `points`.
    pub fn polyline(&mut self, points: &[(f64, f64)], stroke: &str, width: f64, attrs: &str) {
        let pts: Vec<String> = points.iter().map(|(x, y)| format!("{},{}", num(*x), num(*y))).collect();
        let _ = write!(self.body, "<polyline points=\"{}\" fill=\"none\" stroke=\"{stroke}\" stroke-width=\"{}\"{}/>", pts.join(" "), num(width), pad(attrs));
    }

    /// Another drawing placed with its top-left corner at `(x, y)`, inside a group carrying
    /// its kind (`<g class="panel" data-kind=...>`).
    pub fn place(&mut self, other: &Svg, x: f64, y: f64) {
        let _ = write!(self.body, "<g class=\"panel\" data-kind=\"{}\" transform=\"translate({} {})\">{}</g>", esc(&other.kind), num(x), num(y), other.body);
    }

    /// The drawing's title, centred at the top.
    pub fn title(&mut self, s: &str) {
        // Wide enough for the title (about 8.5 px a character at 14 px bold).
        self.width = self.width.max(8.5 * s.chars().count() as f64 + 16.0);
        let w = self.width;
        self.text(w / 2.0, 18.0, s, Anchor::Middle, 14.0, "font-weight=\"bold\" class=\"title\"");
    }

    /// Raw markup (already escaped), e.g. a group's opening and closing tags.
    pub(crate) fn raw(&mut self, s: &str) {
        self.body.push_str(s);
    }

    /// The SVG document.
    pub fn finish(&self) -> String {
        format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" class=\"glassbox-plot\" data-kind=\"{}\"><rect x=\"0\" y=\"0\" width=\"{w}\" height=\"{h}\" fill=\"#ffffff\"/>{}</svg>\n",
            esc(&self.kind),
            self.body,
            w = num(self.width),
            h = num(self.height)
        )
    }
}

fn pad(attrs: &str) -> String {
    if attrs.is_empty() {
        String::new()
    } else {
        format!(" {attrs}")
    }
}

/// Panels side by side (top-aligned), as one drawing of `kind`.
pub fn hstack(kind: &str, panels: &[Svg], gap: f64) -> Svg {
    let width = panels.iter().map(|p| p.width).sum::<f64>() + gap * panels.len().saturating_sub(1) as f64;
    let height = panels.iter().map(|p| p.height).fold(0.0, f64::max);
    let mut svg = Svg::new(kind, width, height);
    let mut x = 0.0;
    for p in panels {
        svg.place(p, x, 0.0);
        x += p.width + gap;
    }
    svg
}

/// Panels one below the other (left-aligned), as one drawing of `kind`.
pub fn vstack(kind: &str, panels: &[Svg], gap: f64) -> Svg {
    let width = panels.iter().map(|p| p.width).fold(0.0, f64::max);
    let height = panels.iter().map(|p| p.height).sum::<f64>() + gap * panels.len().saturating_sub(1) as f64;
    let mut svg = Svg::new(kind, width, height);
    let mut y = 0.0;
    for p in panels {
        svg.place(p, 0.0, y);
        y += p.height + gap;
    }
    svg
}

/// How values map to colours.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Blue (negative) – white (0) – red (positive), symmetric about zero up to `max`.
    Diverging {
        /// The magnitude drawn at full colour.
        max: f32,
    },
    /// White (0) to dark green (`max`), for non-negative figures.
    Sequential {
        /// The value drawn at full colour.
        max: f32,
    },
}

/// The colour endpoints.
const NEG: (f64, f64, f64) = (33.0, 102.0, 172.0);
const POS: (f64, f64, f64) = (178.0, 24.0, 43.0);
const SEQ: (f64, f64, f64) = (0.0, 104.0, 55.0);

fn mix(to: (f64, f64, f64), t: f64) -> String {
    let t = if t.is_finite() { t.clamp(0.0, 1.0) } else { 0.0 };
    let c = |end: f64| (255.0 + (end - 255.0) * t).round() as u8;
    format!("#{:02x}{:02x}{:02x}", c(to.0), c(to.1), c(to.2))
}

impl Scale {
    /// A diverging scale for `values` (max |v|, at least a tiny positive number).
    pub fn diverging<'a>(values: impl IntoIterator<Item = &'a f32>) -> Scale {
        Scale::Diverging { max: values.into_iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-12) }
    }

    /// A sequential scale for `values` (max v, at least a tiny positive number).
    pub fn sequential<'a>(values: impl IntoIterator<Item = &'a f32>) -> Scale {
        Scale::Sequential { max: values.into_iter().fold(0.0f32, |m, v| m.max(*v)).max(1e-12) }
    }

    /// The colour of `v`: `#rrggbb`. Red hues are positive, blue negative, white zero.
    pub fn colour(&self, v: f32) -> String {
        match *self {
            Scale::Diverging { max } => {
                let t = (v / max) as f64;
                if t >= 0.0 {
                    mix(POS, t)
                } else {
                    mix(NEG, -t)
                }
            }
            Scale::Sequential { max } => mix(SEQ, (v / max) as f64),
        }
    }

    /// The range the legend shows.
    pub fn range(&self) -> (f32, f32) {
        match *self {
            Scale::Diverging { max } => (-max, max),
            Scale::Sequential { max } => (0.0, max),
        }
    }
}

/// A vertical colour legend (`height` pixels of bar) with its two end values and its label,
/// 70 pixels wide.
pub fn legend(scale: Scale, height: f64, label: &str) -> Svg {
    let mut svg = Svg::new("legend", 70.0, height + 40.0);
    let steps = 40;
    let (lo, hi) = scale.range();
    for i in 0..steps {
        let t = i as f32 / (steps - 1) as f32;
        let v = hi - (hi - lo) * t;
        let y = 20.0 + height * i as f64 / steps as f64;
        svg.rect((8.0, y, 14.0, height / steps as f64 + 0.5), &scale.colour(v), None, "class=\"legend-step\"", None);
    }
    svg.text(26.0, 26.0, &short(hi), Anchor::Start, 10.0, "class=\"legend-max\"");
    svg.text(26.0, 20.0 + height, &short(lo), Anchor::Start, 10.0, "class=\"legend-min\"");
    svg.text(8.0, 12.0, label, Anchor::Start, 10.0, "class=\"legend-label\"");
    svg
}

/// A figure for a label: three significant digits.
pub fn short(v: f32) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 1000.0 || v.abs() < 0.01 {
        format!("{v:.2e}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colours_follow_the_sign() {
        let s = Scale::Diverging { max: 2.0 };
        assert_eq!(s.colour(0.0), "#ffffff");
        assert_eq!(s.colour(2.0), "#b2182b");
        assert_eq!(s.colour(-2.0), "#2166ac");
        assert_eq!(s.colour(f32::NAN), "#ffffff");
        assert_eq!(Scale::Sequential { max: 1.0 }.colour(1.0), "#006837");
    }

    #[test]
    fn text_is_escaped_and_numbers_fixed() {
        assert_eq!(esc("a<b & \"c\"\u{7}"), "a&lt;b &amp; &quot;c&quot;?");
        assert_eq!(num(-0.001), "0.00");
        assert_eq!(val(0.12345678), "0.1234568");
        assert_eq!(val(-2.5e-9), "-0.0000000025");
        assert_eq!(val(0.0), "0");
    }
}
