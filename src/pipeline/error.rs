use std::path::PathBuf;

use crate::dataset::DatasetError;

/// What a stage's `run` may fail with: any error, boxed, since stages wrap very different libraries.
pub type StageError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a pipeline could not run.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("stage `{stage}`: {source}")]
    Stage {
        stage: String,
        #[source]
        source: StageError,
    },
    #[error("stage `{stage}` needs the output of stage `{upstream}`: {reason}")]
    MissingUpstream {
        stage: String,
        upstream: String,
        reason: String,
    },
    #[error(
        "stage `{stage}` reads {}, which does not exist (a relative path starts at the current directory, {})",
        path.display(),
        cwd.display()
    )]
    MissingInput {
        stage: String,
        path: PathBuf,
        cwd: PathBuf,
    },
    #[error(transparent)]
    Rejects(Box<RejectFailure>),
    #[error(
        "stage `{stage}` would need about {peak} of device memory at its peak, more than the device's {device} \
         (`umrank run --plan` shows where it goes); to fit: {fix}"
    )]
    DoesNotFit {
        stage: String,
        peak: String,
        device: String,
        fix: String,
    },
    #[error("stage `{stage}` declared output `{output}` but did not write {path}")]
    MissingOutput {
        stage: String,
        output: String,
        path: PathBuf,
    },
}

impl PipelineError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// A stage rejected more records than the policy allows.
#[derive(Debug)]
pub struct RejectFailure {
    pub stage: String,
    pub rejected: u64,
    pub records: u64,
    pub max_fraction: f64,
    pub strict: bool,
    /// The first reject, as `file:line: reason (id): detail`.
    pub first: String,
    pub rejects_file: PathBuf,
}

impl std::fmt::Display for RejectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.strict {
            return write!(
                f,
                "stage `{}`: {} (--strict stops at any reject). All rejects: {}",
                self.stage,
                self.first,
                self.rejects_file.display()
            );
        }
        let share = if self.records == 0 {
            "all".to_string()
        } else {
            format!("{:.2}%", 100.0 * self.rejected as f64 / self.records as f64)
        };
        write!(
            f,
            "stage `{}`: {} of {} records rejected ({share}), over the limit of {:.2}%; first: {}. All rejects: {}",
            self.stage,
            self.rejected,
            self.records,
            100.0 * self.max_fraction,
            self.first,
            self.rejects_file.display()
        )
    }
}

impl std::error::Error for RejectFailure {}
