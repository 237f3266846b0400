//! The one place the mine stage asks for a top-k search, with the device it should run on. The stage never calls a
//! kernel directly, so a device path (the CUDA selection kernel) plugs in here without touching the stage.

use super::error::MineError;
use super::matrix::Matrix;
use super::order::DocOrder;
use super::select::Hit;
use super::topk::{exact_top_k, CorpusPart, Exclusions, TopKConfig};
use crate::device::DeviceSpec;

/// The exact top-k of [`exact_top_k`] on `device`. With the `cuda` feature a CUDA device runs the selection kernel
/// of [`cuda`](super::cuda) (same lists for the same scores; scores from cuBLAS agree with the CPU kernel's to
/// rounding, see [`exact_top_k_cuda`](super::cuda::exact_top_k_cuda)); without it a CUDA device searches on the
/// CPU (said once in the log): the results are the same lists, only slower.
pub fn top_k_on(
    device: DeviceSpec,
    queries: &Matrix<'_>,
    corpus: &CorpusPart<'_>,
    order: &DocOrder,
    exclusions: &Exclusions,
    config: &TopKConfig,
) -> Result<Vec<Vec<Hit>>, MineError> {
    match device {
        DeviceSpec::Cpu => exact_top_k(queries, corpus, order, exclusions, config),
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(ordinal) => {
            super::cuda::top_k_from_host(ordinal, queries, corpus, order, exclusions, config)
        }
        #[cfg(not(feature = "cuda"))]
        DeviceSpec::Cuda(_) => {
            warn_cpu_fallback(device);
            exact_top_k(queries, corpus, order, exclusions, config)
        }
    }
}

#[cfg(not(feature = "cuda"))]
fn warn_cpu_fallback(device: DeviceSpec) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!("mine: no top-k kernel for {device} in this build; searching on the CPU")
    });
}
