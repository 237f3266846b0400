//! The promotion gate of a scheduled retraining (`[release.gate]`): the previous release is scored on the same
//! test candidates as the new model, and the release is written only if the new model is better on the chosen
//! metric by at least `min_delta` and the paired randomisation test gives p <= `max_p`.
//!
//! The new model's figures are the gate's eval stage's (its `metrics.json`, per query); the previous release is
//! run through the eval stage's own reranking ([`crate::eval::stage::rerank_lists`]) with that stage's recorded
//! config (ingest and candidates directories, splits, `k`, score, pixel bounds), so both models see the same
//! queries and lists. The verdict, with both models' figures, goes to `gate.json` in the release stage's
//! directory whether or not the release is promoted, and a refusal is a [`GateRefused`] error, which the CLI turns
//! into exit code [`GATE_REFUSED_EXIT`] so that a scheduler can tell "not better" from "broken".

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::Device;
use serde::{Deserialize, Serialize};

use super::{ReleaseError, ReleaseKind, ReleaseManifest};
use crate::digest::sha256_file;
use crate::eval::stage::rerank_lists;
use crate::eval::{paired_values, randomisation_test, EvalConfig, EvalSummary, Metric};
use crate::pipeline::{InputRecord, Manifest};
use crate::schema::outputs;

/// The exit status of `umrank run` / `umrank release` when the gate refuses the new model: distinct from 1 (any
/// other error) and 2 (a usage error), so a scheduled job can keep the previous release without raising an alarm.
pub const GATE_REFUSED_EXIT: u8 = 3;

/// The verdict's file in the release stage's directory.
pub const GATE_JSON: &str = "gate.json";

/// The `[release.gate]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateConfig {
    /// The previous release: its directory (with release.json) or its release stage's directory.
    pub baseline: PathBuf,
    /// The eval stage of the new model whose candidates both models are judged on [default: the first of
    /// `eval_from`].
    #[serde(default)]
    pub eval: Option<String>,
    /// The metric compared, one the eval stage computes (`ndcg@10`, `recall@10`, `mrr@10`, ...).
    #[serde(default = "default_metric")]
    pub metric: String,
    /// How much higher the new model's mean must be; it must be higher in any case.
    #[serde(default)]
    pub min_delta: f64,
    /// The largest p-value of the paired randomisation test that promotes.
    #[serde(default = "default_max_p")]
    pub max_p: f64,
}

fn default_metric() -> String {
    "ndcg@10".into()
}

fn default_max_p() -> f64 {
    0.05
}

impl GateConfig {
    /// The first unusable value, if any.
    pub fn problem(&self) -> Option<String> {
        match self.metric.parse::<Metric>() {
            Ok(metric) if Metric::DEFAULT.contains(&metric) => {}
            _ => {
                let known: Vec<String> = Metric::DEFAULT.iter().map(Metric::to_string).collect();
                return Some(format!(
                    "`metric = \"{}\"` is not one the eval stage computes ({})",
                    self.metric,
                    known.join(", ")
                ));
            }
        }
        if !self.min_delta.is_finite() || self.min_delta < 0.0 {
            return Some(format!(
                "`min_delta = {}` must be a number >= 0",
                self.min_delta
            ));
        }
        if !(self.max_p > 0.0 && self.max_p <= 1.0) {
            return Some(format!("`max_p = {}` must be in (0, 1]", self.max_p));
        }
        None
    }
}

/// One model's figures on the gate's queries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFigures {
    /// What was scored: the eval stage's model and adapter, or the previous release.
    pub model: PathBuf,
    pub adapter: Option<PathBuf>,
    /// The mean of the gate's metric over the paired queries.
    pub value: f64,
}

/// What the gate decided, and why; written to `gate.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateVerdict {
    pub metric: String,
    pub queries: usize,
    pub new: ModelFigures,
    pub baseline: ModelFigures,
    /// new - baseline.
    pub delta: f64,
    pub p_value: f64,
    pub permutations: usize,
    pub min_delta: f64,
    pub max_p: f64,
    /// Pairs of the baseline the eval stage's reranking could not score (left out of its run).
    pub baseline_rejected_pairs: usize,
    pub promoted: bool,
    /// The tests that failed: `min_delta` (not better by the margin) and/or `max_p` (not significant).
    pub failed: Vec<String>,
}

impl GateVerdict {
    /// One line for stderr and the error.
    pub fn summary(&self) -> String {
        let outcome = if self.promoted {
            "promoted".to_string()
        } else {
            format!("refused, failed: {}", self.failed.join(", "))
        };
        format!(
            "release gate {outcome}: {} new {:.4} vs baseline {:.4} over {} queries, delta {:+.4} (min_delta {}), \
             p {:.4} (max_p {}, {} permutations)",
            self.metric,
            self.new.value,
            self.baseline.value,
            self.queries,
            self.delta,
            self.min_delta,
            self.p_value,
            self.max_p,
            self.permutations
        )
    }
}

/// The gate refused the new model; the verdict is in `path`.
#[derive(Debug, thiserror::Error)]
#[error("{}; the verdict is in {}", .verdict.summary(), .path.display())]
pub struct GateRefused {
    pub verdict: Box<GateVerdict>,
    pub path: PathBuf,
}

/// The release directory `path` names: itself when it holds release.json, else its `model/`.
pub fn release_dir(path: &Path) -> PathBuf {
    if path.join(outputs::release::MANIFEST).is_file() {
        path.to_path_buf()
    } else {
        path.join(outputs::release::MODEL)
    }
}

/// Scores the previous release on the candidates of the eval stage in `eval_dir` and compares it with the new
/// model's figures there. `seed` drives the randomisation test.
pub fn judge(
    config: &GateConfig,
    eval_dir: &Path,
    seed: u64,
    device: &Device,
) -> Result<GateVerdict, ReleaseError> {
    let metric: Metric = config
        .metric
        .parse()
        .map_err(|e| ReleaseError::Config(format!("[release.gate]: {e}")))?;
    let manifests = Manifest::read_complete(eval_dir).map_err(|reason| {
        ReleaseError::invalid(eval_dir, format!("not a finished stage: {reason}"))
    })?;
    let Some(manifest) = manifests.first().filter(|m| m.kind == "eval") else {
        return Err(ReleaseError::invalid(eval_dir, "not an eval stage"));
    };
    let eval: EvalConfig = serde_json::from_value(manifest.config.clone())
        .map_err(|e| ReleaseError::invalid(eval_dir, format!("the eval stage's config: {e}")))?;
    let upstream = |name: &Option<String>, dir: &Option<PathBuf>, what: &str| {
        if let Some(dir) = dir {
            return Ok(dir.clone());
        }
        manifest
            .inputs
            .iter()
            .find_map(|input| match input {
                InputRecord::Stage { name: n, dir, .. } if Some(n) == name.as_ref() => {
                    Some(dir.clone())
                }
                _ => None,
            })
            .ok_or_else(|| {
                ReleaseError::invalid(eval_dir, format!("its manifest names no {what} stage"))
            })
    };
    let ingest = upstream(&eval.from, &eval.ingest_dir, "ingest")?;
    let candidates = upstream(&eval.candidates_from, &eval.candidates_dir, "candidates")?;

    let summary = EvalSummary::of_stage(eval_dir)
        .map_err(ReleaseError::model("release gate: the new model's metrics"))?
        .ok_or_else(|| ReleaseError::invalid(eval_dir, "no metrics.json"))?;
    let comparison = &summary.comparison;
    let new_values: BTreeMap<String, f64> = comparison
        .runs
        .get(&comparison.candidate)
        .map(|run| {
            run.per_query
                .iter()
                .filter_map(|(qid, values)| Some((qid.clone(), *values.get(&config.metric)?)))
                .collect()
        })
        .unwrap_or_default();

    let baseline_dir = release_dir(&config.baseline);
    let previous = ReleaseManifest::read(&baseline_dir)?;
    let (model, adapter) = match (previous.kind, &previous.base_model) {
        (ReleaseKind::Adapter, Some(base)) => {
            // The baseline's adapter means nothing on another base: its figures would not be the release's.
            for file in &base.files {
                let path = base.path.join(&file.path);
                let found = sha256_file(&path).map_err(ReleaseError::io(&path))?;
                if found != file.sha256 {
                    return Err(ReleaseError::invalid(
                        &baseline_dir,
                        format!(
                            "release gate: the previous release was made on a base whose {} has sha256 {}, but {} \
                             has sha256 {found}",
                            file.path,
                            file.sha256,
                            path.display()
                        ),
                    ));
                }
            }
            (base.path.clone(), Some(baseline_dir.clone()))
        }
        (ReleaseKind::Adapter, None) => {
            return Err(ReleaseError::invalid(
                &baseline_dir,
                "an adapter release that records no base model",
            ))
        }
        (ReleaseKind::Full, _) => (baseline_dir.clone(), None),
    };
    let (per_query, rejected) = rerank_lists(
        &ingest,
        &candidates,
        &eval,
        &model,
        adapter.as_deref(),
        device,
    )
    .map_err(ReleaseError::model(format!(
        "release gate: scoring the previous release {}",
        baseline_dir.display()
    )))?;
    let baseline_values = per_query.get(&metric).cloned().unwrap_or_default();
    let (new, old) = paired_values(&new_values, &baseline_values).map_err(ReleaseError::model(
        "release gate: pairing the new model's queries with the baseline's",
    ))?;
    let test = randomisation_test(&new, &old, eval.permutations, seed)
        .map_err(ReleaseError::model("release gate: the randomisation test"))?;
    let mean = |values: &[f64]| values.iter().sum::<f64>() / values.len() as f64;
    let delta = test.mean_difference;
    let mut failed = Vec::new();
    if !(delta > 0.0 && delta >= config.min_delta) {
        failed.push("min_delta".to_string());
    }
    if test.p_value > config.max_p {
        failed.push("max_p".to_string());
    }
    Ok(GateVerdict {
        metric: config.metric.clone(),
        queries: new.len(),
        new: ModelFigures {
            model: summary.model.clone(),
            adapter: summary.adapter.clone(),
            value: mean(&new),
        },
        baseline: ModelFigures {
            model,
            adapter,
            value: mean(&old),
        },
        delta,
        p_value: test.p_value,
        permutations: test.permutations,
        min_delta: config.min_delta,
        max_p: config.max_p,
        baseline_rejected_pairs: rejected,
        promoted: failed.is_empty(),
        failed,
    })
}

/// Writes `verdict` to `path` as JSON.
pub fn write_verdict(verdict: &GateVerdict, path: &Path) -> Result<(), ReleaseError> {
    let text = serde_json::to_string_pretty(verdict)
        .map_err(|e| ReleaseError::invalid(path, format!("cannot serialise: {e}")))?;
    fs::write(path, text + "\n").map_err(ReleaseError::io(path))
}
