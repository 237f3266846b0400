//! Releases: a trained reranker as a Hugging Face model directory that transformers + peft (and umrank) load,
//! with a model card, and a manifest that lets anyone check it is intact and still computes what was trained.
//!
//! - [`build`]: assembling the directory from the train stage, the base model and the eval stages.
//! - [`files`]: the base's configuration, tokenizer, chat template, processor and license files.
//! - [`merge`]: merged safetensors under the base's tensor names.
//! - [`manifest`]: `release.json`, every file with its sha256.
//! - [`provenance`]: the stages the release came from, read from their manifests.
//! - [`lineage`]: the data snapshot and the release replaced.
//! - [`gate`]: the promotion gate against a previous release.
//! - [`metrics`], [`card`]: the model card and its metrics table.
//! - [`check`]: the built-in check pair and the loader that scores it.
//! - [`verify`]: `umrank verify`.
//! - [`stage`]: the `release` pipeline stage.

pub mod build;
pub mod card;
pub mod check;
mod error;
pub mod files;
pub mod gate;
pub mod lineage;
pub mod manifest;
pub mod merge;
pub mod metrics;
pub mod provenance;
pub mod stage;
pub mod verify;

pub use build::{write_release, ReleaseSpec};
pub use check::{check_image, score_check_pair, CheckPair};
pub use error::ReleaseError;
pub use gate::{GateConfig, GateRefused, GateVerdict, GATE_REFUSED_EXIT};
pub use manifest::{FileEntry, ReleaseKind, ReleaseManifest};
pub use stage::{ReleaseConfig, ReleaseStage};
pub use verify::{verify, VerifyReport};
