//! Data-parallel training across ranks (README "Data-parallel training", docs/scale-out.md).
//!
//! A run of N ranks trains one model: every rank holds the whole model, takes its slice of every global batch,
//! and the ranks sum their gradients before each optimizer step, so every rank makes the same update. What the
//! trainer needs from the ranks is small and sits behind [`Collective`]: sum tensors, copy tensors from one
//! rank, wait for all, and tell the others that this rank failed. Two implementations:
//!
//! - [`InProcessRank`]: N threads of one process with a shared, deterministic all-reduce. It is how the test
//!   suite checks the data-parallel logic on the CPU, and how [`run_ranks`] runs N ranks in one process.
//! - `NcclCollective` (feature `nccl`): one process per GPU, launched by torchrun or Slurm ([`launch`]), NCCL's
//!   unique id exchanged through a [`store`] that rank 0 serves.
//!
//! [`Single`] is the one-rank case: every operation is a no-op, so a plain run does exactly what it did before.

mod collective;
mod error;
pub mod launch;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod process;
pub mod store;

pub use collective::{run_ranks, Collective, InProcessRank, RankFailure, Single};
pub use error::DistributedError;
pub use launch::{Launch, Launcher};
