//! The embed stage: every document and query of the ingest datasets through an embedding model, into the
//! `doc_embeddings` and `query_embeddings` datasets that mining ranks with (docs/design.md#stages,
//! docs/mining.md#exact-top-k).
//!
//! ```text
//! corpus, queries ──> items (this shard, content keys) ──> plan (by modality, by length) ──> batches
//!                                                              │ all keys cached? skip
//! images ──> preprocess (rayon, media::preprocess) ──> model forward (cpu | cuda) ──> cache chunk ──> outputs
//! ```
//!
//! Vectors are cached under a hash of (model fingerprint, preprocessing, plan) and each record's content
//! ([`cache`]): a crash or kill loses at most the batches since the last chunk, and the same command resumes
//! from the cache with the same batches, so its output is byte-identical to an undisturbed run's.

mod cache;
mod gme;
mod items;
mod model;
mod output;
mod plan;
mod stage;

use std::path::PathBuf;

pub use gme::GmeModel;
pub use items::Side;
pub use model::{load_model, DualEncoder, EmbedModel, ModelOptions, Prepared, PreparedImage};
pub use stage::{embed_into, EmbedConfig, EmbedReport, EmbedSources, EmbedStage, Precision};

use crate::dataset::DatasetError;
use crate::media::preprocess::PreprocessError;
use crate::models::embedders::EmbedderError;
use crate::models::qwen2_vl::VlLoadError;
use crate::models::text::tokenizer::TokenizerError;
use crate::pipeline::PipelineError;

/// Why the embed stage could not run. Records it cannot embed are rejects, not errors.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("{0}")]
    Config(String),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Preprocessing {
        path: PathBuf,
        #[source]
        source: PreprocessError,
    },
    #[error(transparent)]
    Embedder(#[from] EmbedderError),
    #[error(transparent)]
    VlLoad(#[from] VlLoadError),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error("{what}: {source}")]
    Compute {
        what: &'static str,
        #[source]
        source: candle_core::Error,
    },
    #[error("{0}")]
    Batch(String),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}
