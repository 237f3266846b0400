//! The one place the mine stage asks for a top-k search, with the device it should run on. The stage never calls a
//! kernel directly, so a device path (the CUDA selection kernel) plugs in here without touching the stage.

use super::error::MineError;
use super::matrix::Matrix;
use super::order::DocOrder;
use super::select::Hit;
use super::topk::{exact_top_k, CorpusPart, Exclusions, TopKConfig};
use crate::device::DeviceSpec;

/// The exact top-k of [`exact_top_k`] on `device`. This build has no device path for top-k, so a CUDA device
/// searches on the CPU (said once in the log): the results are the same lists, only slower.
pub fn top_k_on(
    device: DeviceSpec,
    queries: &Matrix<'_>,
    corpus: &CorpusPart<'_>,
    order: &DocOrder,
    exclusions: &Exclusions,
    config: &TopKConfig,
) -> Result<Vec<Vec<Hit>>, MineError> {
    if let DeviceSpec::Cuda(_) = device {
        warn_cpu_fallback(device);
    }
    exact_top_k(queries, corpus, order, exclusions, config)
}

fn warn_cpu_fallback(device: DeviceSpec) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!("mine: no top-k kernel for {device} in this build; searching on the CPU")
    });
}
