//! What a running stage is given.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;

use super::manifest::mtime_ns;
use super::rejects::{RejectPolicy, RejectSink};
use super::{ObservedFile, PipelineError, Reject};
use crate::dataset::{Dataset, DatasetError, DatasetWriter};
use crate::device::DeviceSpec;
use crate::progress;
use crate::shard::Shard;

/// The environment of one stage run: its config, seed, shard and device, its output directory, its upstream
/// stages' directories, the rejects writer and progress bars.
pub struct StageContext {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) config: serde_json::Value,
    pub(crate) seed: u64,
    pub(crate) shard: Shard,
    pub(crate) device: DeviceSpec,
    pub(crate) upstream: BTreeMap<String, PathBuf>,
    pub(crate) rejects: RejectSink,
    pub(crate) rejects_file: PathBuf,
    pub(crate) policy: RejectPolicy,
    pub(crate) records: u64,
    pub(crate) observed: Vec<ObservedFile>,
}

impl StageContext {
    /// The stage's name in the pipeline.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The stage's output directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The resolved config, as hashed into the fingerprint.
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// The pipeline seed; stages derive every random choice from it.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    pub fn shard(&self) -> Shard {
        self.shard
    }

    pub fn device(&self) -> DeviceSpec {
        self.device
    }

    /// Where output `name` goes.
    pub fn output_path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A writer for this shard's part of output dataset `name`, of schema kind `kind`.
    pub fn create_dataset(&self, name: &str, kind: &str) -> Result<DatasetWriter, DatasetError> {
        DatasetWriter::create(&self.output_path(name), kind, self.shard)
    }

    /// The directory of an upstream stage this stage declared as an input.
    pub fn upstream_dir(&self, stage: &str) -> Result<&Path, PipelineError> {
        self.upstream
            .get(stage)
            .map(PathBuf::as_path)
            .ok_or_else(|| PipelineError::MissingUpstream {
                stage: self.name.clone(),
                upstream: stage.to_string(),
                reason: "it is not among the stage's declared inputs".into(),
            })
    }

    /// Dataset `dataset` of upstream stage `stage`, all of its parts.
    pub fn open_upstream(&self, stage: &str, dataset: &str) -> Result<Dataset, PipelineError> {
        Ok(Dataset::open(&self.upstream_dir(stage)?.join(dataset))?)
    }

    /// Records a rejected input record.
    pub fn reject(&mut self, reject: Reject) -> Result<(), PipelineError> {
        tracing::debug!("reject: {reject}");
        Ok(self.rejects.push(reject)?)
    }

    /// Fails now when the rejects so far are already over the reject policy for the records so far. The runner
    /// checks the policy when a stage ends; a stage that knows all its records and rejects before its long part
    /// (train knows every group it cannot use before the first step) calls this so that a run over the limit
    /// stops before that work instead of after it. The rejects are written either way.
    pub fn check_rejects(&self) -> Result<(), PipelineError> {
        self.policy
            .enforce(
                &self.name,
                self.rejects.count(),
                self.records,
                self.rejects.first(),
                &self.rejects_file,
            )
            .map_err(|failure| PipelineError::Rejects(Box::new(failure)))
    }

    /// Counts input records considered (rejected or not); the reject share is taken over this count.
    pub fn add_records(&mut self, n: u64) {
        self.records += n;
    }

    /// Records a file the stage read that was not a declared input, so that changing it reruns the stage.
    pub fn observe(&mut self, path: &Path) -> Result<(), PipelineError> {
        let meta = fs::metadata(path).map_err(PipelineError::io(path))?;
        self.observed.push(ObservedFile {
            path: path.to_path_buf(),
            size: meta.len(),
            mtime_ns: mtime_ns(&meta),
        });
        Ok(())
    }

    /// A progress bar over `len` items, with rate and ETA.
    pub fn progress(&self, len: u64, message: &str) -> ProgressBar {
        progress::bar(len, format!("{} {message}", self.name))
    }
}
