//! Exact top-k on a CUDA device, for runs on one (docs/mining.md#running-on-a-gpu).
//!
//! The CPU path ([`exact_top_k`](crate::mine::exact_top_k)) keeps a running list per query on the host; here the
//! scores of a chunk never leave the device. Each chunk is scored by candle's f32 matrix product and merged into
//! the queries' running lists by a selection kernel (`topk.cu`) that never sorts the chunk: it bounds the chunk's
//! candidates by the running list's worst key (or, while a list fills, by a radix descent over the key bits),
//! gathers the few that pass, and sorts only those. Hits are compared as 64-bit [`rank_key`]s, which encode the
//! CPU path's ranking order (score, then tie rank), so the two paths return the same lists for the same scores.
//!
//! Everything that talks to the device is behind the `cuda` cargo feature; the key encoding is plain Rust and is
//! tested everywhere.

pub mod rank_key;

#[cfg(feature = "cuda")]
mod error;
#[cfg(feature = "cuda")]
mod host;
#[cfg(feature = "cuda")]
mod kernels;
#[cfg(feature = "cuda")]
mod search;

#[cfg(feature = "cuda")]
pub use error::CudaTopKError;
#[cfg(feature = "cuda")]
pub(crate) use host::top_k_from_host;
#[cfg(feature = "cuda")]
pub use search::{exact_top_k_cuda, CUDA_TOP_K_DEFAULTS};
