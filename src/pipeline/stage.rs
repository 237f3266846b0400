use std::path::Path;

use super::{SeedRuns, StageContext, StageError};
use crate::plan::{PlanContext, PlanError, Verdict};

/// What a stage reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    /// The outputs of another stage, by its name in the pipeline. Its fingerprint and output hashes become part of
    /// this stage's fingerprint.
    Stage(String),
    /// Files or directories from outside the pipeline; their content hashes become part of the fingerprint.
    Files(Vec<std::path::PathBuf>),
}

/// What a stage writes under its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// A Parquet dataset `<stage>/<name>/part-I-of-N.parquet` of a kind in `schemas/`.
    Dataset { name: String, kind: String },
    /// A file or directory tree `<stage>/<name>` that is not a dataset (a report, a model directory). Stages with
    /// tree outputs cannot be sharded.
    Tree { name: String },
    /// A file `<stage>/<name>` computed over the stage's whole output (a summary over every query, a run file in
    /// one piece), which no shard can write alone. An unsharded run writes it and records it; the shards of a job
    /// array leave it out (and remove an earlier one, which their new parts make stale), and the plain run that
    /// finds them complete writes it from their parts in [`Stage::merge_parts`]. It does not keep a stage from
    /// being sharded.
    Summary { name: String },
}

impl Output {
    pub fn dataset(name: &str, kind: &str) -> Self {
        Self::Dataset {
            name: name.into(),
            kind: kind.into(),
        }
    }

    pub fn tree(name: &str) -> Self {
        Self::Tree { name: name.into() }
    }

    pub fn summary(name: &str) -> Self {
        Self::Summary { name: name.into() }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Dataset { name, .. } | Self::Tree { name } | Self::Summary { name } => name,
        }
    }
}

/// One step of the pipeline. A new stage is one module implementing this trait plus a factory registered in
/// [`super::StageRegistry`]. Stages that do not read each other may run at the same time on different threads
/// (`jobs` above 1), hence `Send + Sync`.
pub trait Stage: Send + Sync {
    /// The stage kind, e.g. `ingest`.
    fn name(&self) -> &'static str;

    /// The resolved configuration, defaults filled in. Its canonical JSON is hashed: anything that changes the
    /// outputs must be in it. An error (a value serde cannot represent) stops the run: hashing a placeholder
    /// instead would let two different configurations share one fingerprint.
    fn config(&self) -> Result<serde_json::Value, serde_json::Error>;

    fn inputs(&self) -> Vec<Input>;

    fn outputs(&self) -> Vec<Output>;

    /// Does the work. Row-level problems go to `ctx.reject`, not into the error.
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError>;

    /// The stage's peak device memory estimated from its config and its model's `config.json`, checked against
    /// the device (see [`crate::plan`]); `None` for a stage that runs no model on the device.
    fn memory_plan(&self, ctx: &PlanContext) -> Option<Result<Verdict, PlanError>> {
        let _ = ctx;
        None
    }

    /// Called when a run finds the stage completed as `parts` shards by a job array (and so up to date), to
    /// combine what the parts cannot each give alone, such as one summary over all of them: this writes the
    /// stage's [`Output::Summary`] files. The datasets need nothing: the next stage reads the parts as one.
    fn merge_parts(&self, dir: &Path, parts: u32) -> Result<(), StageError> {
        let _ = (dir, parts);
        Ok(())
    }

    /// When the pipeline runs several seeds: the stage that reads every seed's run of the per-seed stages it
    /// names (`runs`: each per-seed stage's runs, seed 1 first), for a stage that aggregates over seeds (a
    /// report). `None`, the default, keeps the stage as it is, reading seed 1's run. See [`super::seeds`].
    fn over_seeds(&self, runs: &SeedRuns) -> Option<Box<dyn Stage>> {
        let _ = runs;
        None
    }
}
