//! What can go wrong between ranks.

/// A collective operation, the launcher's environment or the rendezvous failed.
#[derive(Debug, thiserror::Error)]
pub enum DistributedError {
    /// Another rank stopped with an error; this one stops too instead of waiting for it forever.
    #[error("rank {rank} failed: {message}")]
    PeerFailed { rank: usize, message: String },
    /// The ranks disagree about an operation (different operations, shapes or dtypes at the same point).
    #[error("{op}: {message}")]
    Collective { op: &'static str, message: String },
    /// A launcher variable is missing or malformed.
    #[error("launcher environment: {0}")]
    Launch(String),
    /// The rendezvous store could not be reached, served or read.
    #[error("rendezvous at {at}: {message}")]
    Rendezvous { at: String, message: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    /// NCCL reported an error (feature `nccl`).
    #[error("nccl: {0}")]
    Nccl(String),
}

impl DistributedError {
    pub(crate) fn rendezvous(at: impl std::fmt::Display, message: impl std::fmt::Display) -> Self {
        Self::Rendezvous {
            at: at.to_string(),
            message: message.to_string(),
        }
    }
}
