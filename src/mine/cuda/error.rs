//! Why a CUDA top-k search could not run: the CPU miner's input errors, plus what only the device path can meet.

use crate::mine::MineError;

#[derive(Debug, thiserror::Error)]
pub enum CudaTopKError {
    /// The same checks as the CPU path (shapes, tie order, exclusions, non-finite or overflowing vectors).
    #[error(transparent)]
    Mine(#[from] MineError),
    #[error("{what}: {problem}")]
    Input { what: &'static str, problem: String },
    #[error("k = {k} is above the CUDA selection's limit of {max} hits per query")]
    KTooLarge { k: usize, max: usize },
    /// A failure of candle's CUDA backend or of the driver (allocation, launch, copy).
    #[error("CUDA top-k: {0}")]
    Device(#[from] candle_core::Error),
}
