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

/// Files the exporters write fail as the dataset layer's do: the path and the I/O or Parquet error.
impl ExportError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let dataset = DatasetError::io(path);
        move |source| Self::Dataset(dataset(source))
    }

    pub(crate) fn parquet(
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(parquet::errors::ParquetError) -> Self {
        let dataset = DatasetError::parquet(path);
        move |source| Self::Dataset(dataset(source))
    }
}
