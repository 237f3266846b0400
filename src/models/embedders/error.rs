//! What can go wrong loading an embedder or embedding with it.
//!
//! Every variant that comes from a file names the file, and config problems name the field, so that a bad model
//! directory is fixed from the message alone.

use std::path::PathBuf;

use super::Modality;

#[derive(Debug, thiserror::Error)]
pub enum EmbedderError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: field `{field}`: {reason}")]
    Config {
        path: PathBuf,
        field: String,
        reason: String,
    },
    #[error("{path}: cannot load the tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("{path}: the weights do not fit the config: {source}")]
    Weights {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("{path}: unsupported sentence-transformers module `{module}`: only Transformer, Pooling and Normalize are")]
    UnsupportedModule { path: PathBuf, module: String },
    #[error("texts {first}..{end}: tokenization failed: {reason}")]
    Tokenize {
        first: usize,
        end: usize,
        reason: String,
    },
    #[error("text {index}: {reason}")]
    Text { index: usize, reason: String },
    #[error("image {index}: {reason}")]
    Image { index: usize, reason: String },
    #[error("pixel values must have shape (batch, 3, {size}, {size}), got {got:?}")]
    PixelShape { size: usize, got: Vec<usize> },
    #[error("{family} embeds no {modality}")]
    Unsupported {
        family: &'static str,
        modality: Modality,
    },
    #[error("batch size must be positive")]
    BatchSize,
    #[error("{stage}: {source}")]
    Compute {
        stage: &'static str,
        source: candle_core::Error,
    },
}

/// Wraps a candle error from a forward pass with the stage it happened in.
pub(crate) fn compute(stage: &'static str) -> impl FnOnce(candle_core::Error) -> EmbedderError {
    move |source| EmbedderError::Compute { stage, source }
}
