//! The optimiser and learning-rate schedules that both trainers use: the reranker's (`train`) and the first-stage
//! dual encoder's (`embedder`).

pub mod adamw;
mod error;
pub mod schedule;

pub use adamw::{AdamW, AdamWConfig, GradAccumulator, StepReport, WeightedSums};
pub use error::OptimError;
pub use schedule::{Decay, Schedule};
