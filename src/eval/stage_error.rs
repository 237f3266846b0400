//! What the eval stage fails with.

use std::path::PathBuf;

use super::EvalError;
use crate::dataset::DatasetError;
use crate::models::reranker::RerankerError;

/// Why the eval stage could not run. Problems with single pairs (a broken image, say) are reject rows instead.
#[derive(Debug, thiserror::Error)]
pub enum EvalStageError {
    #[error("{path}: column `{column}`: {problem}")]
    Column {
        path: PathBuf,
        column: String,
        problem: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{dir}: cannot merge the shards of the job array: {problem}")]
    Parts { dir: PathBuf, problem: String },
    #[error("no query of the candidates dataset is in the evaluated splits ({0})")]
    NoQueries(String),
    #[error("the device: {0}")]
    Device(#[source] candle_core::Error),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Images(#[from] crate::media::image_table::ImageTableError),
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// Boxed: the reranker's errors are large and this one travels up every read function.
    #[error(transparent)]
    Reranker(Box<RerankerError>),
}

impl From<RerankerError> for EvalStageError {
    fn from(error: RerankerError) -> Self {
        Self::Reranker(Box::new(error))
    }
}

impl EvalStageError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
