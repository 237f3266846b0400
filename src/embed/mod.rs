//! The embed stage: every document and query of the ingest datasets through an embedding model, into the
//! `doc_embeddings` and `query_embeddings` datasets that mining ranks with (docs/design.md#stages,
//! docs/mining.md#exact-top-k).
//!
//! ```text
//! corpus, queries ──> items (this shard, content keys) ──> plan (by modality, by length) ──> batches
//!                 │ in the store? reuse                               (only what the store lacks)
//! images ──> preprocess (rayon, media::preprocess) ──> model forward (cpu | cuda) ──> store chunk ──> outputs
//! ```
//!
//! Vectors are stored under a hash of (model fingerprint, device kind) and each record's content ([`store`]), not
//! of the batch plan or the shard: a crash loses at most the vectors since the last chunk, and a rerun, a run with
//! another batch size or shard count, or a run over a new snapshot embeds only what the store lacks.

pub mod gc;
mod gme;
mod items;
mod model;
mod output;
mod plan;
mod stage;
mod store;

use std::path::PathBuf;

pub use gme::GmeModel;
pub use items::Side;
pub use model::{load_model, DualEncoder, EmbedModel, ModelOptions, Prepared, PreparedImage};
pub use stage::{
    embed_into, stats_path, EmbedConfig, EmbedReport, EmbedSources, EmbedStage, Precision,
};
pub use store::{references_path, STALL_WRITE_ENV};

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
