//! umrank: build training corpora for multimodal LLM rerankers, train them, evaluate them and release them.
//!
//! The crate is a staged pipeline. Data flows one way through the stage modules, as Arrow/Parquet datasets whose
//! schemas live in `schemas/`:
//!
//! ```text
//! world -> ingest -> embed -> mine -> shards -> train -> eval -> release
//! ```
//!
//! [`pipeline`] runs stages, skips the ones that are up to date and resumes after a crash; [`dataset`] and
//! [`schema`] hold the on-disk contracts; [`media`] and [`models`] are the libraries the stages share.

pub mod atomic;
pub mod charts;
pub mod dataset;
pub mod device;
pub mod digest;
pub mod distributed;
pub mod embed;
pub mod embedder;
pub mod eval;
pub mod ingest;
pub mod inspect;
pub mod malloc;
pub mod media;
pub mod mine;
pub mod modality;
pub mod models;
pub mod optim;
pub mod pipeline;
pub mod plan;
pub mod progress;
pub mod release;
pub mod report;
pub mod schema;
pub mod shard;
pub mod shards;
pub mod stages;
pub mod train;
pub mod world;
