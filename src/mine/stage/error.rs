use std::path::PathBuf;

use crate::dataset::DatasetError;
use crate::pipeline::PipelineError;

use super::super::MineError;

/// Why the mine stage could not run. Problems with single queries or documents (no embedding, no positive) are
/// reject rows instead; these are problems with whole inputs, and name the dataset and row at fault.
#[derive(Debug, thiserror::Error)]
pub enum MineStageError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Mine(#[from] MineError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("{path}: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{path}: column `{column}`: {problem}")]
    Column {
        path: PathBuf,
        column: &'static str,
        problem: String,
    },
    #[error("{path}: row {row}: {problem}")]
    Row {
        path: PathBuf,
        row: u64,
        problem: String,
    },
    #[error(
        "{path}: embeddings from more than one model ({first:?}, then {second:?} at row {row}); \
         mine with one retriever at a time"
    )]
    MixedModels {
        path: PathBuf,
        first: String,
        second: String,
        row: u64,
    },
    #[error("{path}: no embeddings: this dataset and the query embeddings are empty")]
    NoEmbeddings { path: PathBuf },
    #[error("{path}: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl MineStageError {
    pub(super) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
