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
    pub(crate) fingerprint: String,
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

    /// `path` as outputs name it: relative to the run directory (the one holding the stage directories) when it
    /// lies inside it, else as given. See [`run_relative`].
    pub fn run_relative(&self, path: &Path) -> PathBuf {
        run_relative(self.dir.parent().unwrap_or(Path::new("")), path)
    }

    /// The resolved config, as hashed into the fingerprint.
    pub fn config(&self) -> &serde_json::Value {
        &self.config
    }

    /// The pipeline seed; stages derive every random choice from it.
    /// The fingerprint the runner computed for this run (kind, config, seed, shard and every input's hash): a
    /// stage keys state it resumes from by it, so that state from another run is never taken for its own.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

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
    pub fn reject(&mut self, mut reject: Reject) -> Result<(), PipelineError> {
        reject.source = self
            .run_relative(Path::new(&reject.source))
            .to_string_lossy()
            .into_owned();
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

    /// Records a file the stage read that was not a declared input, so that changing it reruns the stage. A file
    /// of the run is recorded relative to the run directory, so that a moved run directory stays up to date; any
    /// other file by its absolute path.
    pub fn observe(&mut self, path: &Path) -> Result<(), PipelineError> {
        let meta = fs::metadata(path).map_err(PipelineError::io(path))?;
        let named = self.run_relative(path);
        let named = match named.is_relative() && named != path {
            true => named,
            false => std::path::absolute(path).map_err(PipelineError::io(path))?,
        };
        self.observed.push(ObservedFile {
            path: named,
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

/// `path` relative to `run_dir` when it lies inside it, else `path` as given. Outputs name the files of the run
/// this way so that the same run gives the same bytes in any directory, and a run directory can be moved; inputs
/// from outside the run keep the name the user gave them.
pub fn run_relative(run_dir: &Path, path: &Path) -> PathBuf {
    if let Ok(inside) = path.strip_prefix(run_dir) {
        return inside.to_path_buf();
    }
    match (std::path::absolute(run_dir), std::path::absolute(path)) {
        (Ok(run_dir), Ok(absolute)) => absolute
            .strip_prefix(&run_dir)
            .map(Path::to_path_buf)
            .unwrap_or_else(|_| path.to_path_buf()),
        _ => path.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_the_run_are_named_from_it() {
        let run = Path::new("/work/runs/demo");
        assert_eq!(
            run_relative(run, Path::new("/work/runs/demo/train/model")),
            Path::new("train/model")
        );
        assert_eq!(
            run_relative(run, Path::new("/models/qwen")),
            Path::new("/models/qwen")
        );
        assert_eq!(
            run_relative(Path::new("runs/demo"), Path::new("runs/demo/shards/sft")),
            Path::new("shards/sft")
        );
        assert_eq!(
            run_relative(Path::new("runs/demo"), Path::new("query/test/a.jsonl")),
            Path::new("query/test/a.jsonl"),
            "a path relative to something else stays as it is"
        );
    }
}
