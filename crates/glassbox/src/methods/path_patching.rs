//! Path patching (Wang et al. 2022): the effect of the paths from sender heads to a receiver,
//! with everything else frozen at its clean value.
//!
//! For each sender head `s` (one batch row each): (1) run the clean prompt with every head's
//! output frozen at its clean value except `s`, which takes its corrupted value (MLPs recompute,
//! so the paths through MLPs count); (2) if the receiver is the logits, that run's LD is the
//! answer; otherwise run the clean prompt again with only the receiver's input (its query, key
//! or value) replaced by the value it had in run (1).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::methods::{Contrast, Head, Metric, Scorer};
use crate::model::{Action, HookPoint, Intervention, Model, Start};
use crate::model::compute;

/// Where the paths from the senders end; written `logits`, `L10H7.q`, `L10KV1.k` or `L10KV1.v`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathReceiver {
    /// The logits: the metric with the sender patched (its direct path and paths through MLPs).
    Logits,
    /// A query head's query input.
    Q(Head),
    /// A key/value head's key input (`head` is the key/value head index).
    K(Head),
    /// A key/value head's value input (`head` is the key/value head index).
    V(Head),
}

impl std::str::FromStr for PathReceiver {
    type Err = Error;
    fn from_str(s: &str) -> Result<PathReceiver> {
        let s = s.trim();
        if s == "logits" {
            return Ok(PathReceiver::Logits);
        }
        let bad = || Error::Invalid(format!("receiver `{}`: write logits, L10H7.q, L10KV1.k or L10KV1.v", crate::error::printable(&s)));
        let (node, kind) = s.rsplit_once('.').ok_or_else(bad)?;
        let head: Head = node.to_ascii_uppercase().replace("KV", "H").parse().map_err(|_| bad())?;
        match kind {
            "q" => Ok(PathReceiver::Q(head)),
            "k" => Ok(PathReceiver::K(head)),
            "v" => Ok(PathReceiver::V(head)),
            _ => Err(bad()),
        }
    }
}

impl std::fmt::Display for PathReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PathReceiver::Logits => f.write_str("logits"),
            PathReceiver::Q(h) => write!(f, "L{}H{}.q", h.layer, h.head),
            PathReceiver::K(h) => write!(f, "L{}KV{}.k", h.layer, h.head),
            PathReceiver::V(h) => write!(f, "L{}KV{}.v", h.layer, h.head),
        }
    }
}

impl Serialize for PathReceiver {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for PathReceiver {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "snake_case")]
        enum Tagged {
            Q(Head),
            K(Head),
            V(Head),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            /// The form glassbox wrote before 0.2: `{"q": [10, 7]}`.
            Tagged(Tagged),
        }
        match Form::deserialize(d)? {
            Form::Text(t) => t.parse().map_err(serde::de::Error::custom),
            Form::Tagged(Tagged::Q(h)) => Ok(PathReceiver::Q(h)),
            Form::Tagged(Tagged::K(h)) => Ok(PathReceiver::K(h)),
            Form::Tagged(Tagged::V(h)) => Ok(PathReceiver::V(h)),
        }
    }
}

impl crate::schema::FieldType for PathReceiver {
    fn kind() -> crate::schema::Kind {
        crate::schema::Kind::Text { format: Some("logits, L10H7.q, L10KV1.k or L10KV1.v") }
    }
}

impl PathReceiver {
    fn point(&self) -> Option<(HookPoint, usize)> {
        match *self {
            PathReceiver::Logits => None,
            PathReceiver::Q(h) => Some((HookPoint::Q(h.layer), h.head)),
            PathReceiver::K(h) => Some((HookPoint::K(h.layer), h.head)),
            PathReceiver::V(h) => Some((HookPoint::V(h.layer), h.head)),
        }
    }
}

/// The effect of the paths from one sender.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathEffect {
    /// The sender head.
    pub sender: Head,
    /// The sender's name (`L09H09`).
    pub name: String,
    /// The metric with the sender's paths to the receiver patched from the corrupted run.
    pub patched_ld: f32,
    /// `(patched − clean) / (corrupted − clean)`.
    pub effect: f32,
}

/// Result of `path_patching`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathPatching {
    /// The receiver.
    pub receiver: PathReceiver,
    /// The metric's name.
    pub metric: String,
    /// The metric of the clean run.
    pub clean_ld: f32,
    /// The metric of the corrupted run.
    pub corrupted_ld: f32,
    /// One entry per sender, in the senders' order.
    pub paths: Vec<PathEffect>,
}

crate::options! {
    /// Options of `path_patching`.
    pub struct PathPatchingOptions {
        /// Where the paths end: `logits`, or a head's input `L10H7.q`, `L10KV1.k`, `L10KV1.v`
        /// (key/value head index).
        pub receiver: PathReceiver = PathReceiver::Logits,
        /// The sender heads (repeatable); every head before the receiver by default.
        pub senders: Option<Vec<Head>> = None,
        /// The metric.
        pub metric: Metric = Metric::default(),
    }
}


/// Path patching from each sender head to the receiver.
pub fn path_patching(model: &Model, contrast: &Contrast, opts: &PathPatchingOptions) -> Result<PathPatching> {
    contrast.check(model)?;
    let receiver = opts.receiver;
    let senders = opts.senders.as_deref();
    let scorer = Scorer::new(model, contrast, &opts.metric)?;
    let cfg = &model.config();
    let layers = cfg.n_layers;
    let recv_layer = match receiver {
        PathReceiver::Logits => layers,
        PathReceiver::Q(h) | PathReceiver::K(h) | PathReceiver::V(h) => h.layer,
    };
    if let Some((point, head)) = receiver.point() {
        point.check(cfg)?;
        let n = point.n_heads(cfg).unwrap_or(cfg.n_heads);
        if head >= n {
            return Err(Error::HeadOutOfRange { head, n_heads: n, point: point.to_string() });
        }
    }
    let senders: Vec<Head> = match senders {
        Some(s) => s.to_vec(),
        None => (0..recv_layer).flat_map(|layer| (0..cfg.n_heads).map(move |head| Head { layer, head })).collect(),
    };
    if let Some(s) = senders.iter().find(|s| s.layer >= recv_layer || s.head >= cfg.n_heads) {
        return Err(Error::Invalid(format!("sender {s} cannot reach a receiver in layer {recv_layer}")));
    }
    let mut cache: Vec<HookPoint> = (0..layers).flat_map(|l| [HookPoint::Z(l), HookPoint::ResidPre(l)]).collect();
    if let Some((p, _)) = receiver.point() {
        cache.push(p);
    }
    let both = model.forward(&contrast.batch()?, &scorer.hooks().cache(cache))?;
    let lds = scorer.values(&both)?;
    let (clean_ld, corrupted_ld) = (lds[0], lds[1]);
    let z = |l: usize, row: usize| -> Result<candle_core::Tensor> { Ok(both.cache.get(HookPoint::Z(l))?.narrow(0, row, 1)?) };
    // Both runs match the clean run up to the first layer they change: start them there.
    let clean_resid = |l: usize, n: usize| -> Result<candle_core::Tensor> {
        Ok(both.cache.get(HookPoint::ResidPre(l))?.narrow(0, 0, 1)?.broadcast_as((n, contrast.n_pos(), cfg.d_model))?.contiguous()?)
    };

    let per_chunk = (128 / contrast.n_pos().max(1)).max(1);
    // One chunk of senders' path effects.
    let chunk_paths = |chunk: &[Head]| -> Result<Vec<PathEffect>> {
        let mut paths = Vec::with_capacity(chunk.len());
        let n = chunk.len();
        // Run (1): heads frozen at clean, the row's sender corrupted.
        let first = chunk.iter().map(|s| s.layer).min().unwrap_or(0);
        let mut hooks = scorer.hooks();
        for l in first..layers {
            hooks = hooks.intervene(Intervention::new(HookPoint::Z(l), Action::Replace(z(l, 0)?)));
            for (r, s) in chunk.iter().enumerate().filter(|(_, s)| s.layer == l) {
                hooks = hooks.intervene(Intervention::new(HookPoint::Z(l), Action::Replace(z(l, 1)?)).heads(vec![s.head]).batch(vec![r]));
            }
        }
        if let Some((p, _)) = receiver.point() {
            hooks = hooks.cache([p]);
        }
        let lengths = vec![contrast.n_pos(); n];
        let resid = clean_resid(first, n)?;
        let run1 = model.forward_from(Start::Residual { layer: first, resid: &resid, lengths: &lengths }, &hooks)?;
        let ld = match receiver.point() {
            None => scorer.values(&run1)?,
            Some((p, head)) => {
                // Run (2): the clean run with only the receiver's input from run (1).
                let value = run1.cache.get(p)?.clone();
                let hooks = scorer.hooks().intervene(Intervention::new(p, Action::Replace(value)).heads(vec![head]));
                let resid = clean_resid(recv_layer, n)?;
                scorer.values(&model.forward_from(Start::Residual { layer: recv_layer, resid: &resid, lengths: &lengths }, &hooks)?)?
            }
        };
        let span = corrupted_ld - clean_ld;
        for (s, &x) in chunk.iter().zip(&ld) {
            paths.push(PathEffect {
                sender: *s,
                name: s.to_string(),
                patched_ld: x,
                effect: if span.abs() > 1e-12 { (x - clean_ld) / span } else { 0.0 },
            });
        }
        Ok(paths)
    };
    // Two streams, alternate chunks.
    let chunks: Vec<&[Head]> = senders.chunks(per_chunk).collect();
    let per_chunk_paths = compute::map_in_two_streams(&chunks, "senders patched", |c| chunk_paths(c), || Err(Error::Cancelled)).into_iter().collect::<Result<Vec<_>>>()?;
    let paths: Vec<PathEffect> = per_chunk_paths.into_iter().flatten().collect();
    Ok(PathPatching { receiver, metric: opts.metric.name().to_string(), clean_ld, corrupted_ld, paths })
}
