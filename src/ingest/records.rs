//! The in-memory form every input format is read into, before images are loaded and datasets written.

pub use crate::modality::{mbeir_task, mbeir_task_name, Modality};

/// Where a record came from: a file relative to the ingest root, and a 1-based line (or row).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub file: String,
    pub line: u64,
}

/// A candidate document.
#[derive(Debug, Clone, PartialEq)]
pub struct Doc {
    pub did: String,
    pub modality: Modality,
    pub text: Option<String>,
    /// Image reference as written in the input (path under the root, archive member or URL).
    pub image: Option<String>,
    /// The dataset it comes from.
    pub dataset: String,
    /// The candidate pool it belongs to: the documents a query of the same pool is searched against.
    pub pool: String,
    pub origin: Origin,
}

/// A query.
#[derive(Debug, Clone, PartialEq)]
pub struct Query {
    pub qid: String,
    pub modality: Modality,
    pub text: Option<String>,
    pub image: Option<String>,
    /// An instruction given by the input itself (FlagEmbedding's prompt); M-BEIR's come from the TSV.
    pub instruction: Option<String>,
    pub task_id: Option<i32>,
    pub dataset: String,
    /// The pool of documents it is searched against (see [`Doc::pool`]).
    pub pool: String,
    pub split: String,
    pub origin: Origin,
}

/// A relevance judgement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qrel {
    pub qid: String,
    pub did: String,
    pub relevance: i32,
    pub origin: Origin,
}
