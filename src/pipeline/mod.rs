//! The staged pipeline runner.
//!
//! A pipeline is a TOML file: a `[pipeline]` table (name, workdir, seed) and one table per stage, run in file
//! order. Each stage writes `<workdir>/<stage>/` with its datasets, `rejects.parquet` and, last of all,
//! `manifest.json`. A stage whose fingerprint (umrank version, kind, resolved config, seed, shard, and the content
//! hashes of its inputs) matches its manifest and whose outputs are intact is skipped. Because an upstream stage's
//! fingerprint is part of each downstream input hash, a change anywhere reruns everything below it. Stages marked
//! `per_seed` run once per training seed when the pipeline runs several ([`seeds`]).

mod config;
mod context;
mod error;
mod fingerprint;
mod manifest;
mod outputs;
mod registry;
mod rejects;
mod runner;
mod schedule;
pub mod seeds;
mod stage;

pub use config::{PipelineConfig, StageSpec};
pub use context::{run_relative, StageContext};
pub use error::{PipelineError, RejectFailure, StageError};
pub use manifest::{manifest_path, InputRecord, Manifest, ObservedFile, OutputRecord};
pub use registry::{StageFactory, StageRegistry};
pub use rejects::{rejects_path, Reject, RejectPolicy};
pub use runner::{RunOptions, Runner, StageOutcome, StagePlan, StageReport};
pub use seeds::SeedRuns;
pub use stage::{Input, Output, Stage};
