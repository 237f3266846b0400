//! What a report is made of, read back from stage directories: the eval stages' `metrics.json`, the mine
//! stage's `stats.json` and the train stages' `train_log.jsonl`.
//!
//! A stage directory contributes whatever of these it holds, so the report works on a partial pipeline (no train
//! stage yet, a mine stage from an older umrank) and does not need to know which kind wrote a directory. The
//! mining statistics are kept as JSON rather than a fixed struct: the report shows every field the mine stage
//! wrote, so a new statistic appears without a report change.

use std::fs;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ReportError;
use crate::eval::stage::EvalSummary;
use crate::pipeline::Manifest;
use crate::schema::outputs;

/// One stage's contribution.
#[derive(Debug, Clone, PartialEq)]
pub struct Named<T> {
    /// The stage name (its directory name).
    pub stage: String,
    pub value: T,
}

/// Everything found in a set of stage directories, in the order the stages were given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Findings {
    pub evals: Vec<Named<EvalSummary>>,
    /// One entry per statistics file: `stats.json`, or each shard's file (the stage name then carries the part).
    pub mining: Vec<Named<serde_json::Value>>,
    pub training: Vec<Named<Vec<TrainStep>>>,
}

impl Findings {
    pub fn is_empty(&self) -> bool {
        self.evals.is_empty() && self.mining.is_empty() && self.training.is_empty()
    }
}

/// The fields of a train log row that the report plots. Every field but the step may be missing (a log from an
/// objective that has no CL term, say) or null (a non-finite value, which serde_json writes as null).
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
pub struct TrainStep {
    pub step: f64,
    #[serde(default)]
    pub loss: Option<f64>,
    #[serde(default)]
    pub sft_loss: Option<f64>,
    #[serde(default)]
    pub cl_loss: Option<f64>,
    #[serde(default)]
    pub lr: Option<f64>,
    #[serde(default)]
    pub grad_norm: Option<f64>,
    #[serde(default)]
    pub w_pos: Option<f64>,
    #[serde(default)]
    pub w_neg: Option<f64>,
}

/// The stage directories of a pipeline work directory, in the order the stages last ran (from their manifests;
/// directories without one come last, by name). `exclude` (the report's own output directory) is left out.
pub fn stage_dirs(workdir: &Path, exclude: &Path) -> Result<Vec<(String, PathBuf)>, ReportError> {
    let entries = fs::read_dir(workdir).map_err(ReportError::io(workdir))?;
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(ReportError::io(workdir))?;
        let path = entry.path();
        if !path.is_dir() || same_dir(&path, exclude) {
            continue;
        }
        let name = entry.file_name().to_string_lossy().into_owned();
        let started = Manifest::read_complete(&path)
            .ok()
            .and_then(|manifests| manifests.into_iter().map(|m| m.started_at).min());
        dirs.push((started.is_none(), started, name, path));
    }
    dirs.sort();
    Ok(dirs
        .into_iter()
        .map(|(_, _, name, path)| (name, path))
        .collect())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// Reads what each `(stage name, directory)` holds.
pub fn collect(stages: &[(String, PathBuf)]) -> Result<Findings, ReportError> {
    let mut findings = Findings::default();
    for (stage, dir) in stages {
        if let Some(summary) = EvalSummary::of_stage(dir)? {
            findings.evals.push(Named {
                stage: stage.clone(),
                value: summary,
            });
        }
        for (label, path) in stats_files(stage, dir)? {
            findings.mining.push(Named {
                stage: label,
                value: read_json(&path)?,
            });
        }
        let log = dir.join(outputs::train::TRAIN_LOG);
        if log.is_file() {
            findings.training.push(Named {
                stage: stage.clone(),
                value: read_train_log(&log)?,
            });
        }
    }
    Ok(findings)
}

/// `stats.json`, or else every `stats.<part>.json` in name order, each with the label the report gives it.
fn stats_files(stage: &str, dir: &Path) -> Result<Vec<(String, PathBuf)>, ReportError> {
    let whole = dir.join(outputs::STATS_JSON);
    if whole.is_file() {
        return Ok(vec![(stage.to_owned(), whole)]);
    }
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let mut parts = Vec::new();
    for entry in fs::read_dir(dir).map_err(ReportError::io(dir))? {
        let entry = entry.map_err(ReportError::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(part) = name
            .strip_prefix("stats.")
            .and_then(|rest| rest.strip_suffix(".json"))
        {
            parts.push((format!("{stage} ({part})"), entry.path()));
        }
    }
    parts.sort();
    Ok(parts)
}

fn read_json(path: &Path) -> Result<serde_json::Value, ReportError> {
    let text = fs::read_to_string(path).map_err(ReportError::io(path))?;
    serde_json::from_str(&text).map_err(|source| ReportError::Json {
        path: path.to_owned(),
        line: None,
        source,
    })
}

/// The rows of a JSON-lines train log; blank lines are skipped, a malformed line is an error naming it.
pub fn read_train_log(path: &Path) -> Result<Vec<TrainStep>, ReportError> {
    let text = fs::read_to_string(path).map_err(ReportError::io(path))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            serde_json::from_str(line).map_err(|source| ReportError::Json {
                path: path.to_owned(),
                line: Some(index + 1),
                source,
            })
        })
        .collect()
}
