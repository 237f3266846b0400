//! What building or verifying a release can fail with.

use std::path::PathBuf;

use crate::dataset::DatasetError;
use crate::models::adapters::peft::PeftError;
use crate::models::qwen2_vl::PairScore;
use crate::pipeline::PipelineError;

/// Why a release could not be written, or why a release directory does not verify.
#[derive(Debug, thiserror::Error)]
pub enum ReleaseError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file that exists but says something unusable (bad JSON, a missing key, a path that escapes).
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Peft(#[from] PeftError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    /// Loading or running a model failed; `context` says which model and what step.
    #[error("{context}: {source}")]
    Model {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("{path}: cannot write safetensors: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{dir}: the release does not match its release.json: {}", .problems.join("; "))]
    Tampered { dir: PathBuf, problems: Vec<String> },
    #[error(
        "base model file {path} is not the one the release was made from (sha256 {found}, release.json says {expected}); pass the right base with --base"
    )]
    BaseChanged {
        path: PathBuf,
        expected: String,
        found: String,
    },
    #[error(
        "{variant}: the check pair scores p_yes {:.6} (z_yes {:.6}, z_no {:.6}), but the release was made scoring p_yes {:.6} (z_yes {:.6}, z_no {:.6})",
        .got.p_yes, .got.z_yes, .got.z_no, .expected.p_yes, .expected.z_yes, .expected.z_no
    )]
    ScoreMismatch {
        variant: String,
        got: PairScore,
        expected: PairScore,
    },
}

impl ReleaseError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn invalid(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            path: path.into(),
            reason: reason.into(),
        }
    }

    pub(crate) fn model<E>(context: impl Into<String>) -> impl FnOnce(E) -> Self
    where
        E: std::error::Error + Send + Sync + 'static,
    {
        let context = context.into();
        move |source| Self::Model {
            context,
            source: Box::new(source),
        }
    }
}
