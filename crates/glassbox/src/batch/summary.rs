//! `glassbox batch summarize`: a run's results over the prompt set, with percentile bootstrap
//! intervals (prompts resampled with replacement, seeded).
//!
//! - every numeric column (a figure per prompt, e.g. `clean_ld`), and every numeric field of
//!   an object column (`faithfulness.sufficiency`): its mean and interval;
//! - every `[layer][unit]` column (e.g. `scores`): the mean per cell, the cells with the
//!   largest |mean| with their intervals;
//! - `circuit` (from `analyze`): how often each head is in a prompt's circuit, and the heads in
//!   at least half of them (the circuit over the set);
//! - the same per `group`, when the input gave groups.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};
use crate::methods::bootstrap::{interval, Interval};
use crate::methods::Head;
use crate::rng::Rng;

/// Options of `summarize`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default)]
pub struct SummaryOptions {
    /// Bootstrap resamples.
    pub n_boot: usize,
    /// Intervals are `1 − alpha`.
    pub alpha: f32,
    /// Cells listed per `[layer][unit]` column.
    pub top_k: usize,
    /// Resampling seed.
    pub seed: u64,
}

impl Default for SummaryOptions {
    fn default() -> Self {
        SummaryOptions { n_boot: 1000, alpha: 0.05, top_k: 10, seed: 0 }
    }
}

/// One cell of a `[layer][unit]` column.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cell {
    /// `L09H09` for heads (a `scores` column of heads), else `L09U03`.
    pub name: String,
    /// The layer.
    pub layer: usize,
    /// The unit (head) in the layer.
    pub unit: usize,
    /// Mean over the prompts and its interval.
    pub interval: Interval,
}

/// How often one head is in the prompts' circuits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CircuitHead {
    /// The head.
    pub head: Head,
    /// The fraction of the prompts whose circuit holds it.
    pub frequency: f32,
}

/// The summary of a set of rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SetSummary {
    /// Rows summarised.
    pub n: usize,
    /// Each numeric column's mean and interval.
    pub figures: BTreeMap<String, Interval>,
    /// Each `[layer][unit]` column's largest cells by |mean|.
    pub top_cells: BTreeMap<String, Vec<Cell>>,
    /// Heads by how often they are in a prompt's circuit (`analyze` results).
    pub circuit_frequency: Vec<CircuitHead>,
    /// The heads in at least half of the prompts' circuits.
    pub circuit: Vec<Head>,
}

/// `summarize`'s result.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    /// The method of the run (from the file's settings).
    pub method: Option<String>,
    /// The whole set.
    pub all: SetSummary,
    /// Per `group`, when the rows have groups.
    pub groups: BTreeMap<String, SetSummary>,
    /// The options used.
    pub options: SummaryOptions,
}

/// Columns that identify a row rather than measure it.
const NOT_FIGURES: [&str; 3] = ["id", "line", "group"];

fn bootstrap_mean(values: &[f64], opts: &SummaryOptions, rng: &mut Rng) -> Interval {
    let n = values.len();
    let mean = values.iter().sum::<f64>() / n.max(1) as f64;
    let samples: Vec<f32> = (0..opts.n_boot)
        .map(|_| {
            let s: f64 = (0..n).map(|_| values[rng.below(n)]).sum();
            (s / n.max(1) as f64) as f32
        })
        .collect();
    interval(mean as f32, samples, opts.alpha, n)
}

fn matrix(v: &Value) -> Option<Vec<Vec<f64>>> {
    v.as_array()?.iter().map(|r| r.as_array()?.iter().map(Value::as_f64).collect()).collect()
}

fn summarize_rows(rows: &[&Map<String, Value>], opts: &SummaryOptions, rng: &mut Rng) -> SetSummary {
    let n = rows.len();
    let mut figures = BTreeMap::new();
    let mut top_cells = BTreeMap::new();
    let names: Vec<String> = rows.first().map(|r| r.keys().cloned().collect()).unwrap_or_default();
    for name in names.iter().filter(|k| !NOT_FIGURES.contains(&k.as_str())) {
        let values: Vec<Option<&Value>> = rows.iter().map(|r| r.get(name)).collect();
        if let Some(nums) = values.iter().map(|v| v.and_then(Value::as_f64)).collect::<Option<Vec<f64>>>() {
            figures.insert(name.clone(), bootstrap_mean(&nums, opts, rng));
            continue;
        }
        // An object's numeric fields (e.g. `faithfulness.sufficiency`).
        if let Some(Value::Object(first)) = values.first().copied().flatten() {
            for key in first.keys() {
                let nums: Option<Vec<f64>> = values.iter().map(|v| v.and_then(|o| o.get(key)).and_then(Value::as_f64)).collect();
                if let Some(nums) = nums {
                    figures.insert(format!("{name}.{key}"), bootstrap_mean(&nums, opts, rng));
                }
            }
            continue;
        }
        if name == "circuit" {
            continue;
        }
        let Some(mats) = values.iter().map(|v| v.and_then(matrix)).collect::<Option<Vec<_>>>() else { continue };
        let Some(shape) = mats.first().map(|m| m.iter().map(Vec::len).collect::<Vec<_>>()) else { continue };
        if shape.is_empty() || mats.iter().any(|m| m.iter().map(Vec::len).collect::<Vec<_>>() != shape) {
            continue;
        }
        let mut cells: Vec<(usize, usize, f64)> = Vec::new();
        for (l, &w) in shape.iter().enumerate() {
            for u in 0..w {
                cells.push((l, u, mats.iter().map(|m| m[l][u]).sum::<f64>() / n.max(1) as f64));
            }
        }
        cells.sort_by(|a, b| b.2.abs().total_cmp(&a.2.abs()).then((a.0, a.1).cmp(&(b.0, b.1))));
        cells.truncate(opts.top_k);
        let heads = name == "scores" && shape.iter().all(|&w| w > 1);
        let listed = cells
            .into_iter()
            .map(|(l, u, _)| {
                let vals: Vec<f64> = mats.iter().map(|m| m[l][u]).collect();
                Cell { name: if heads { Head { layer: l, head: u }.to_string() } else { format!("L{l:02}U{u:02}") }, layer: l, unit: u, interval: bootstrap_mean(&vals, opts, rng) }
            })
            .collect();
        top_cells.insert(name.clone(), listed);
    }
    // Circuits: [[layer, head], ...] per prompt.
    let mut counts: BTreeMap<Head, usize> = BTreeMap::new();
    let mut with_circuit = 0usize;
    for r in rows {
        if let Some(m) = r.get("circuit").and_then(matrix) {
            with_circuit += 1;
            for pair in m {
                if let [l, h] = pair[..] {
                    if l >= 0.0 && h >= 0.0 {
                        *counts.entry(Head { layer: l as usize, head: h as usize }).or_default() += 1;
                    }
                }
            }
        }
    }
    let mut circuit_frequency: Vec<CircuitHead> = counts.into_iter().map(|(head, c)| CircuitHead { head, frequency: c as f32 / with_circuit.max(1) as f32 }).collect();
    circuit_frequency.sort_by(|a, b| b.frequency.total_cmp(&a.frequency).then(a.head.cmp(&b.head)));
    let circuit = circuit_frequency.iter().filter(|c| c.frequency >= 0.5).map(|c| c.head).collect();
    SetSummary { n, figures, top_cells, circuit_frequency, circuit }
}

/// Summarises the rows of a `glassbox batch` result file.
pub fn summarize(path: &Path, opts: &SummaryOptions) -> Result<Summary> {
    crate::limits::check_count("n_boot", opts.n_boot, 1..=100_000)?;
    crate::limits::check_count("top_k", opts.top_k, 1..=10_000)?;
    if !(opts.alpha > 0.0 && opts.alpha < 1.0) {
        return Err(Error::Invalid(format!("alpha {}: give a number between 0 and 1 (0.05 for 95 % intervals)", opts.alpha)));
    }
    let (rows, kv) = super::table::read_file(path)?;
    if rows.is_empty() {
        return Err(Error::Invalid(format!("{} has no rows to summarise", path.display())));
    }
    let method = kv
        .iter()
        .find(|(k, _)| k == "glassbox.settings")
        .and_then(|(_, v)| serde_json::from_str::<Value>(v).ok())
        .and_then(|v| v.get("method").and_then(Value::as_str).map(str::to_string));
    let mut rng = Rng::new(opts.seed);
    let all_rows: Vec<&Map<String, Value>> = rows.iter().collect();
    let all = summarize_rows(&all_rows, opts, &mut rng);
    let mut by_group: BTreeMap<String, Vec<&Map<String, Value>>> = BTreeMap::new();
    for r in &rows {
        if let Some(g) = r.get("group").and_then(Value::as_str) {
            by_group.entry(g.to_string()).or_default().push(r);
        }
    }
    let groups = by_group.into_iter().map(|(g, rs)| (g, summarize_rows(&rs, opts, &mut rng))).collect();
    let summary = Summary { method, all, groups, options: *opts };
    crate::finite::check_finite(&summary).map_err(|e| Error::Invalid(format!("{}: {e}; the file holds values that are not finite numbers (is it damaged?)", path.display())))?;
    Ok(summary)
}
