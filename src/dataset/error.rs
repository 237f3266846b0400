use std::path::PathBuf;

use crate::schema::SchemaError;

/// Why a dataset could not be read or written. Every variant names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum DatasetError {
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
    #[error("{path}: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("{path}: {source}")]
    Schema {
        path: PathBuf,
        #[source]
        source: SchemaError,
    },
    #[error("{path}: not a dataset (no part-I-of-N.parquet files)")]
    Empty { path: PathBuf },
    #[error(
        "{path}: incomplete dataset: {found} of {count} parts present, missing part(s) {missing}"
    )]
    Incomplete {
        path: PathBuf,
        found: usize,
        count: u32,
        missing: String,
    },
    #[error("{path}: parts from different shard counts ({counts}); remove the stale ones or rerun the stage")]
    MixedCounts { path: PathBuf, counts: String },
    #[error("{path}: parts disagree on the schema: {detail}")]
    SchemaDrift { path: PathBuf, detail: String },
    #[error("{path}: cannot read the rows asked for: {detail}")]
    Rows { path: PathBuf, detail: String },
}

impl DatasetError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn parquet(
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(parquet::errors::ParquetError) -> Self {
        let path = path.into();
        move |source| Self::Parquet { path, source }
    }
}
