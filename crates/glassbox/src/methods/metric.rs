//! What a method measures of a run: a scalar per prompt, differentiable, as a `Metric` (the
//! logit difference by default; log-probability or probability of the correct answer; the KL
//! divergence from the clean run's next-token distribution, ACDC's metric; or a closure).
//!
//! A method prepares its metric for a contrast once (`Scorer::new`: the KL metric runs the
//! clean prompt there for its reference distribution), asks it which logits its runs must
//! compute (`Scorer::hooks`: two columns for a logit difference, every column for the
//! others) and reads each run with `Scorer::eval`. Methods report the metric's value of the
//! clean and corrupted runs in their `clean_ld` / `corrupted_ld` fields (the reference tool's
//! names) and normalise by them, so every normalisation (faithfulness, patching effects) is
//! the same for every metric: `(m − m_corrupted) / (m_clean − m_corrupted)`.

use std::sync::Arc;

use candle_core::{DType, Tensor, D};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::methods::Contrast;
use crate::model::{Batch, ForwardOutput, Hooks, Model};

/// Where in the prompt a metric reads the model's prediction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Position {
    /// Each prompt's last real position (the next token).
    #[default]
    Last,
    /// One position of the prompt.
    At(usize),
    /// Averaged over every real position of the prompt.
    Mean,
}

/// A metric of a run, one value per prompt. In options it is written by name (`"kl"`: at the
/// last position), or as `{"kind": "kl", "position": {"at": 3}}` / `"mean"` for another place.
#[derive(Clone)]
pub enum Metric {
    /// `logit[correct] − logit[incorrect]`.
    LogitDiff {
        /// Where the metric reads the prediction; the last real position by default.
        position: Position,
    },
    /// `log p(correct)` under the model's next-token distribution.
    Logprob {
        /// Where the metric reads the prediction; the last real position by default.
        position: Position,
    },
    /// `p(correct)`.
    Prob {
        /// Where the metric reads the prediction; the last real position by default.
        position: Position,
    },
    /// `KL(p_clean ‖ p_run)` of the next-token distributions (ACDC): 0 for the clean run.
    Kl {
        /// Where the metric reads the prediction; the last real position by default.
        position: Position,
    },
    /// A user's function of the run (library only; not serialised): one value per prompt,
    /// computed from the full logits `[b, p, d_vocab]` and the prompts' lengths.
    Custom(CustomMetric),
}

/// The serialised form of a metric that reads another position than the last.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacedMetric {
    kind: String,
    #[serde(default)]
    position: Position,
}

impl Serialize for Metric {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self.position() {
            None => Err(serde::ser::Error::custom("a custom metric (a function) cannot be written out")),
            Some(Position::Last) => s.serialize_str(self.name()),
            Some(position) => PlacedMetric { kind: self.name().to_string(), position }.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Metric {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Name(String),
            Placed(PlacedMetric),
        }
        let (name, position) = match Form::deserialize(d)? {
            Form::Name(n) => (n, Position::Last),
            Form::Placed(p) => (p.kind, p.position),
        };
        Metric::parse(&name).map(|m| m.at(position)).map_err(serde::de::Error::custom)
    }
}

impl crate::schema::FieldType for Metric {
    fn kind() -> crate::schema::Kind {
        let c = |name, aliases: &[&'static str], help| crate::schema::Choice { name, aliases: aliases.to_vec(), help };
        crate::schema::Kind::Choice {
            values: vec![
                c("logit_diff", &["ld"], "logit[correct] − logit[incorrect] at the last position."),
                c("logprob", &[], "log p(correct) at the last position."),
                c("prob", &[], "p(correct) at the last position."),
                c("kl", &[], "KL divergence of the run's next-token distribution from the clean run's (ACDC's metric)."),
            ],
        }
    }
}

/// A user metric: `f(output) → [b]`, differentiable in the output's logits.
#[derive(Clone)]
pub struct CustomMetric(pub Arc<MetricFn>);

/// The function of a custom metric.
pub type MetricFn = dyn Fn(&ForwardOutput) -> Result<Tensor> + Send + Sync;

impl std::fmt::Debug for Metric {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Metric::Custom(_) => f.write_str("Custom(..)"),
            other => write!(f, "{}", other.name()),
        }
    }
}

impl Default for Metric {
    fn default() -> Self {
        Metric::LogitDiff { position: Position::Last }
    }
}

impl Metric {
    /// The metric's name as the CLI writes it (`logit_diff`, `logprob`, `prob`, `kl`, `custom`).
    pub fn name(&self) -> &'static str {
        match self {
            Metric::LogitDiff { .. } => "logit_diff",
            Metric::Logprob { .. } => "logprob",
            Metric::Prob { .. } => "prob",
            Metric::Kl { .. } => "kl",
            Metric::Custom(_) => "custom",
        }
    }

    /// A metric by name at the last position.
    pub fn parse(name: &str) -> Result<Metric> {
        let position = Position::Last;
        Ok(match name {
            "logit_diff" | "ld" => Metric::LogitDiff { position },
            "logprob" => Metric::Logprob { position },
            "prob" => Metric::Prob { position },
            "kl" => Metric::Kl { position },
            other => return Err(Error::Invalid(format!("unknown metric `{other}`; use logit_diff, logprob, prob or kl"))),
        })
    }

    /// A user function as a metric.
    pub fn custom(f: impl Fn(&ForwardOutput) -> Result<Tensor> + Send + Sync + 'static) -> Metric {
        Metric::Custom(CustomMetric(Arc::new(f)))
    }

    /// Where the metric reads the prediction (`None` for a custom metric).
    pub fn position(&self) -> Option<Position> {
        match self {
            Metric::LogitDiff { position } | Metric::Logprob { position } | Metric::Prob { position } | Metric::Kl { position } => Some(*position),
            Metric::Custom(_) => None,
        }
    }

    /// The same metric read at `position` (a custom metric stays as it is).
    pub fn at(self, position: Position) -> Metric {
        match self {
            Metric::LogitDiff { .. } => Metric::LogitDiff { position },
            Metric::Logprob { .. } => Metric::Logprob { position },
            Metric::Prob { .. } => Metric::Prob { position },
            Metric::Kl { .. } => Metric::Kl { position },
            custom => custom,
        }
    }
}

/// A metric prepared for one contrast (its answers, and for KL the clean distribution).
#[derive(Clone)]
pub struct Scorer {
    metric: Metric,
    correct: u32,
    incorrect: u32,
    /// KL only: the clean run's log-probabilities at the metric's positions, `[n, d_vocab]`
    /// (one row for a single position, one per real position for `Mean`).
    clean_logprobs: Option<Tensor>,
}

impl Scorer {
    /// Prepares `metric` for `contrast` (runs the clean prompt for the KL metric).
    pub fn new(model: &Model, contrast: &Contrast, metric: &Metric) -> Result<Scorer> {
        Self::for_answers(model, &contrast.clean, contrast.correct_id, contrast.incorrect_id, metric)
    }

    /// Prepares `metric` for the prompt `clean` and its answers.
    pub fn for_answers(model: &Model, clean: &[u32], correct: u32, incorrect: u32, metric: &Metric) -> Result<Scorer> {
        if let Some(Position::At(p)) = metric.position() {
            if p >= clean.len() {
                return Err(Error::PositionOutOfRange { position: p, n_positions: clean.len() });
            }
        }
        let mut scorer = Scorer { metric: metric.clone(), correct, incorrect, clean_logprobs: None };
        if let Metric::Kl { .. } = metric {
            let out = model.forward(&Batch::new(&[clean.to_vec()])?, &scorer.hooks())?;
            let rows = scorer.positions_logits(&out)?; // [1, n, V]
            scorer.clean_logprobs = Some(log_softmax(&rows.squeeze(0)?)?.detach());
        }
        Ok(scorer)
    }

    /// The metric this scorer computes.
    pub fn metric(&self) -> &Metric {
        &self.metric
    }

    /// The hooks a run read by this scorer starts from: only the two answers' logits at the
    /// last position for a logit difference there; every logit at the last position for the
    /// other metrics there; every logit of every position otherwise.
    pub fn hooks(&self) -> Hooks {
        match (&self.metric, self.metric.position()) {
            (Metric::LogitDiff { .. }, Some(Position::Last)) => Hooks::new().logits_for(&[self.correct, self.incorrect]),
            (_, Some(Position::Last)) => Hooks::new().last_logits_only(),
            _ => Hooks::new(),
        }
    }

    /// The metric of every batch row of a run made with `hooks()` (plus the method's own):
    /// `[b]`, differentiable.
    pub fn eval(&self, out: &ForwardOutput) -> Result<Tensor> {
        if let Metric::Custom(f) = &self.metric {
            let v = (f.0)(out)?;
            let b = out.lengths.len();
            if v.dims() != [b] {
                return Err(Error::Invalid(format!("the custom metric returned shape {:?}; it must give one value per prompt, [{b}]", v.dims())));
            }
            return Ok(v);
        }
        if let Metric::LogitDiff { position: Position::Last } = self.metric {
            let b = out.lengths.len();
            return out.logit_diff(&vec![self.correct; b], &vec![self.incorrect; b]);
        }
        let logits = self.positions_logits(out)?; // [b, n, V]
        let column = |t: &Tensor, id: u32| -> Result<Tensor> { Ok(t.narrow(D::Minus1, id as usize, 1)?.squeeze(D::Minus1)?) };
        let per_position = match &self.metric {
            Metric::LogitDiff { .. } => (column(&logits, self.correct)? - column(&logits, self.incorrect)?)?,
            Metric::Logprob { .. } => column(&log_softmax(&logits)?, self.correct)?,
            Metric::Prob { .. } => column(&log_softmax(&logits)?, self.correct)?.exp()?,
            Metric::Kl { .. } => {
                let clean = self.clean_logprobs.as_ref().ok_or_else(|| Error::Invalid("the KL metric was not prepared".into()))?;
                let clean = clean.to_dtype(logits.dtype())?;
                let p = clean.exp()?;
                (p.broadcast_mul(&clean.broadcast_sub(&log_softmax(&logits)?)?)?).sum(D::Minus1)?
            }
            Metric::Custom(_) => unreachable_custom()?,
        };
        Ok(per_position.mean(1)?)
    }

    /// Logits `[b, n, V]` at the metric's positions of each row: the last real position, a
    /// given one, or (for `Mean`, all rows the same length) every position.
    fn positions_logits(&self, out: &ForwardOutput) -> Result<Tensor> {
        match self.metric.position() {
            Some(Position::Last) | None => Ok(out.last_logits()?.unsqueeze(1)?),
            Some(Position::At(p)) => {
                if out.logits.dim(1)? <= p || out.lengths.iter().any(|&l| l <= p) {
                    return Err(Error::PositionOutOfRange { position: p, n_positions: out.lengths.iter().copied().min().unwrap_or(0) });
                }
                Ok(out.logits.narrow(1, p, 1)?)
            }
            Some(Position::Mean) => {
                let p = out.logits.dim(1)?;
                if out.lengths.iter().any(|&l| l != p) {
                    return Err(Error::Invalid("a metric averaged over positions needs prompts of one length".into()));
                }
                Ok(out.logits.clone())
            }
        }
    }

    /// Whether the metric reads the last position alone (so a run may keep only that one).
    pub fn reads_last_position_only(&self) -> bool {
        self.metric.position() == Some(Position::Last)
    }

    /// The metric of each row as f32 values.
    pub fn values(&self, out: &ForwardOutput) -> Result<Vec<f32>> {
        Ok(self.eval(out)?.to_dtype(DType::F32)?.to_vec1::<f32>()?)
    }
}

/// A custom metric is handled before the per-position metrics; this is never reached.
fn unreachable_custom() -> Result<Tensor> {
    Err(Error::Invalid("internal: a custom metric reached the built-in metrics".into()))
}

/// `log softmax` over the last axis, differentiable (the max is a constant shift).
fn log_softmax(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    Ok(shifted.broadcast_sub(&lse)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn log_softmax_matches_the_definition() {
        let x = Tensor::from_vec(vec![1.0f64, 2.0, 3.0, -1.0, 0.0, 1000.0], (2, 3), &Device::Cpu).unwrap();
        let l = log_softmax(&x).unwrap().to_vec2::<f64>().unwrap();
        let want0: Vec<f64> = [1.0f64, 2.0, 3.0].iter().map(|v| v - (1f64.exp() + 2f64.exp() + 3f64.exp()).ln()).collect();
        for (a, b) in l[0].iter().zip(&want0) {
            assert!((a - b).abs() < 1e-12);
        }
        assert!(l[1][2].abs() < 1e-12 && l[1][0] < -1000.0);
    }

    #[test]
    fn metrics_parse_and_serialise_by_name() {
        for n in ["logit_diff", "logprob", "prob", "kl"] {
            let m = Metric::parse(n).unwrap();
            assert_eq!(m.name(), n);
            let json = serde_json::to_string(&m).unwrap();
            let back: Metric = serde_json::from_str(&json).unwrap();
            assert_eq!(back.name(), n);
        }
        assert!(Metric::parse("accuracy").is_err());
        let m: Metric = serde_json::from_str(r#"{"kind": "logit_diff", "position": {"at": 3}}"#).unwrap();
        assert_eq!(m.position(), Some(Position::At(3)));
    }
}
