//! Where a release comes from, read from the manifests the pipeline left: the train stage's resolved config
//! (objective, seed), and every stage upstream of it (shards, mining, embedding, ingest), with their configs,
//! fingerprints and output hashes, found by following each manifest's stage inputs.
//!
//! Upstream directories are read as the manifests recorded them. One that can no longer be read is listed as
//! missing rather than failing the release: provenance is a record, not an input.

use std::collections::{BTreeSet, VecDeque};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use serde::{Deserialize, Serialize};

use super::manifest::FileEntry;
use super::ReleaseError;
use crate::dataset::Dataset;
use crate::pipeline::{run_relative, InputRecord, Manifest};
use crate::schema::outputs;

/// One stage run, as its manifests describe it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageRecord {
    pub name: String,
    pub kind: String,
    pub dir: PathBuf,
    pub seed: u64,
    pub config: serde_json::Value,
    pub config_hash: String,
    /// The fingerprint of each shard's run.
    pub fingerprints: Vec<String>,
    /// Output files of all shards, relative to the stage directory.
    pub outputs: Vec<FileEntry>,
}

impl StageRecord {
    /// Reads the manifests of `dir`, which must form a complete set.
    pub fn read(dir: &Path) -> Result<Self, ReleaseError> {
        let manifests = Manifest::read_complete(dir).map_err(|reason| {
            ReleaseError::invalid(dir, format!("not a finished stage: {reason}"))
        })?;
        let Some(first) = manifests.first() else {
            return Err(ReleaseError::invalid(dir, "no manifest"));
        };
        let mut outputs: Vec<FileEntry> = manifests
            .iter()
            .flat_map(|m| &m.outputs)
            .map(|o| FileEntry {
                path: o.path.to_string_lossy().replace('\\', "/"),
                bytes: o.bytes,
                sha256: o.sha256.clone(),
            })
            .collect();
        outputs.sort();
        Ok(Self {
            name: first.stage.clone(),
            kind: first.kind.clone(),
            dir: dir.to_path_buf(),
            seed: first.seed,
            config: first.config.clone(),
            config_hash: first.config_hash.clone(),
            fingerprints: manifests.iter().map(|m| m.fingerprint.clone()).collect(),
            outputs,
        })
    }

    /// The upstream stage directories its manifests name.
    fn upstream_dirs(dir: &Path) -> Vec<PathBuf> {
        let manifests = Manifest::read_complete(dir).unwrap_or_default();
        let dirs: BTreeSet<PathBuf> = manifests
            .iter()
            .flat_map(|m| &m.inputs)
            .filter_map(|input| match input {
                InputRecord::Stage { dir, .. } => Some(dir.clone()),
                InputRecord::File { .. } => None,
            })
            .collect();
        dirs.into_iter().collect()
    }

    /// A config value by key, at the top level of the stage's config.
    pub fn config_value(&self, key: &str) -> Option<&serde_json::Value> {
        self.config.get(key)
    }
}

/// The record of a release's origin, stored in release.json and rendered in the model card.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    pub train: StageRecord,
    /// Every stage upstream of training, nearest first.
    pub upstream: Vec<StageRecord>,
    /// Upstream directories named in a manifest that could not be read.
    pub missing: Vec<PathBuf>,
    pub evals: Vec<StageRecord>,
    /// Source dataset names, from the ingest stage's queries.
    pub datasets: Vec<String>,
}

impl Provenance {
    /// Reads the train stage at `train_dir`, everything upstream of it, and the eval stages.
    pub fn collect(train_dir: &Path, eval_dirs: &[PathBuf]) -> Result<Self, ReleaseError> {
        let train = StageRecord::read(train_dir)?;
        let (upstream, missing) = walk_upstream(train_dir);
        let evals = eval_dirs
            .iter()
            .map(|dir| StageRecord::read(dir))
            .collect::<Result<Vec<_>, _>>()?;
        let mut datasets = BTreeSet::new();
        for stage in upstream.iter().filter(|s| s.kind == "ingest") {
            datasets.extend(dataset_names(&stage.dir.join(outputs::ingest::QUERIES))?);
        }
        Ok(Self {
            train,
            upstream,
            missing,
            evals,
            datasets: datasets.into_iter().collect(),
        })
    }

    /// The training objective from the train config (`objective`), if it names one.
    pub fn objective(&self) -> Option<&serde_json::Value> {
        self.train.config_value("objective")
    }

    /// A short name of the objective, for tags: the value itself when it is a string, else its `kind`, `name` or
    /// `type` field.
    pub fn objective_name(&self) -> Option<String> {
        let objective = self.objective()?;
        if let Some(name) = objective.as_str() {
            return Some(name.to_string());
        }
        ["kind", "name", "type"]
            .iter()
            .find_map(|key| objective.get(*key)?.as_str().map(str::to_string))
    }

    /// The same provenance with every stage directory named relative to `run_dir` where it lies inside it, as
    /// the release writes it: a run gives the same release in any directory.
    pub fn named_from(&self, run_dir: &Path) -> Self {
        let name = |record: &StageRecord| StageRecord {
            dir: run_relative(run_dir, &record.dir),
            ..record.clone()
        };
        Self {
            train: name(&self.train),
            upstream: self.upstream.iter().map(name).collect(),
            missing: self
                .missing
                .iter()
                .map(|dir| run_relative(run_dir, dir))
                .collect(),
            evals: self.evals.iter().map(name).collect(),
            datasets: self.datasets.clone(),
        }
    }

    /// The first upstream stage of `kind`.
    pub fn stage_of_kind(&self, kind: &str) -> Option<&StageRecord> {
        self.upstream.iter().find(|s| s.kind == kind)
    }
}

/// Breadth-first over stage inputs from `start` (exclusive): the stages found, nearest first, and the
/// directories that could not be read.
fn walk_upstream(start: &Path) -> (Vec<StageRecord>, Vec<PathBuf>) {
    let mut seen = BTreeSet::from([start.to_path_buf()]);
    let mut queue: VecDeque<PathBuf> = StageRecord::upstream_dirs(start).into();
    let (mut found, mut missing) = (Vec::new(), Vec::new());
    while let Some(dir) = queue.pop_front() {
        if !seen.insert(dir.clone()) {
            continue;
        }
        match StageRecord::read(&dir) {
            Ok(record) => {
                queue.extend(StageRecord::upstream_dirs(&dir));
                found.push(record);
            }
            Err(e) => {
                tracing::warn!("provenance: {e}");
                missing.push(dir);
            }
        }
    }
    (found, missing)
}

/// The distinct values of the `dataset` column of a queries dataset.
fn dataset_names(queries: &Path) -> Result<BTreeSet<String>, ReleaseError> {
    let mut names = BTreeSet::new();
    if !queries.exists() {
        return Ok(names);
    }
    for batch in Dataset::open(queries)?.batches()? {
        let batch = batch?;
        let column = batch.column_by_name("dataset").ok_or_else(|| {
            ReleaseError::invalid(queries, "the queries dataset has no `dataset` column")
        })?;
        let strings = column
            .as_string_opt::<i32>()
            .ok_or_else(|| ReleaseError::invalid(queries, "the `dataset` column is not utf8"))?;
        for i in 0..strings.len() {
            if strings.is_valid(i) {
                names.insert(strings.value(i).to_string());
            }
        }
    }
    Ok(names)
}
