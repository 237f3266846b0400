use std::path::PathBuf;

use crate::dataset::DatasetError;
use crate::pipeline::PipelineError;

/// Why the shards stage, or a reader of its output, could not run. Row-level problems in the negatives are
/// rejects, not errors.
#[derive(Debug, thiserror::Error)]
pub enum ShardsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{path}: column `{column}`: {problem}")]
    Column {
        path: PathBuf,
        column: String,
        problem: String,
    },
    #[error("{path}: {source}")]
    Schema {
        path: PathBuf,
        #[source]
        source: crate::schema::SchemaError,
    },
    #[error("[shards]: {0}")]
    Config(String),
    #[error(
        "group ids collide: ({first_qid}, {first_did}) and ({second_qid}, {second_did}) both hash to {id:#018x}"
    )]
    GroupIdCollision {
        id: u64,
        first_qid: String,
        first_did: String,
        second_qid: String,
        second_did: String,
    },
    #[error("{path}: {message}")]
    Index { path: PathBuf, message: String },
}

impl ShardsError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
