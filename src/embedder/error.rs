//! Why training the dual encoder could not run. Pairs it cannot use are rejects, not errors.

use std::path::PathBuf;

use crate::dataset::DatasetError;
use crate::media::preprocess::PreprocessError;
use crate::models::embedders::EmbedderError;
use crate::optim::OptimError;
use crate::pipeline::PipelineError;

#[derive(Debug, thiserror::Error)]
pub enum DualEncoderError {
    #[error("[embedder]: {field} {problem}")]
    Config {
        field: &'static str,
        problem: String,
    },
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("no usable (query, positive) pairs in split `{split}` of {path}")]
    NoPairs { split: String, path: PathBuf },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("{what}: {source}")]
    Compute {
        what: &'static str,
        #[source]
        source: candle_core::Error,
    },
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Preprocess(#[from] PreprocessError),
    #[error(transparent)]
    Embedder(#[from] EmbedderError),
}

impl DualEncoderError {
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |source| Self::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub(crate) fn compute(what: &'static str) -> impl FnOnce(candle_core::Error) -> Self {
        move |source| Self::Compute { what, source }
    }
}
