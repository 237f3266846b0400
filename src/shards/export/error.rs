use std::path::PathBuf;

use crate::dataset::DatasetError;
use crate::shards::ShardsError;

/// Why an export could not run. Groups a format cannot express are skipped and counted, not errors.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Shards(#[from] ShardsError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("{path}: {message}")]
    Malformed { path: PathBuf, message: String },
    #[error(
        "{path}: {count} image(s) the shards use are not in this images dataset, e.g. {first}"
    )]
    MissingImages {
        path: PathBuf,
        count: usize,
        first: String,
    },
    #[error("cannot serialise a line: {0}")]
    Json(#[from] serde_json::Error),
}

impl ExportError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}
