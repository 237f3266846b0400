//! The CUDA search for callers that hold their vectors in host memory (the mine stage, through
//! [`top_k_on`](crate::mine::top_k_on)): uploads them, runs [`exact_top_k_cuda`] with the device's chunk sizes,
//! and reports failures as [`MineError`]s.

use std::sync::{Mutex, PoisonError};

use candle_core::{Device, Tensor};

use super::error::CudaTopKError;
use super::kernels::MAX_K;
use super::search::{exact_top_k_cuda, CUDA_TOP_K_DEFAULTS};
use crate::device::DeviceSpec;
use crate::mine::{
    exact_top_k, CorpusPart, DocOrder, Exclusions, Hit, Matrix, MineError, TopKConfig,
};

/// [`exact_top_k`] on CUDA device `ordinal`. `config.k` is honoured; its chunk and block sizes are the CPU
/// kernel's cache-sized ones, so the device uses [`CUDA_TOP_K_DEFAULTS`]' instead. Searches with nothing to
/// select (no queries, no documents, k = 0) and searches whose k exceeds the kernel's limit run on the CPU, which
/// returns the same lists.
pub(crate) fn top_k_from_host(
    ordinal: usize,
    queries: &Matrix<'_>,
    corpus: &CorpusPart<'_>,
    order: &DocOrder,
    exclusions: &Exclusions,
    config: &TopKConfig,
) -> Result<Vec<Vec<Hit>>, MineError> {
    if queries.is_empty() || corpus.vectors().is_empty() || config.k == 0 {
        return exact_top_k(queries, corpus, order, exclusions, config);
    }
    if config.k > MAX_K {
        warn_k_too_large(config.k);
        return exact_top_k(queries, corpus, order, exclusions, config);
    }
    let device_config = TopKConfig {
        k: config.k,
        ..CUDA_TOP_K_DEFAULTS
    };
    let search = || -> Result<Vec<Vec<Hit>>, CudaTopKError> {
        let device = cuda_device(ordinal)?;
        let upload = |matrix: &Matrix<'_>| {
            Tensor::from_slice(matrix.as_slice(), (matrix.rows(), matrix.dim()), &device)
        };
        let query_tensor = upload(queries)?;
        let corpus_tensor = upload(&corpus.vectors())?;
        exact_top_k_cuda(
            &query_tensor,
            &corpus_tensor,
            corpus.first_doc(),
            order,
            exclusions,
            &device_config,
        )
    };
    search().map_err(|error| match error {
        CudaTopKError::Mine(error) => error,
        other => MineError::Device {
            device: DeviceSpec::Cuda(ordinal).to_string(),
            reason: other.to_string(),
        },
    })
}

/// The candle device for `ordinal`, opened once per process: opening one creates a cuBLAS handle and a module
/// cache, and loading the selection kernel's PTX compiles it for the GPU, none of which a stage should pay per
/// batch of queries.
fn cuda_device(ordinal: usize) -> candle_core::Result<Device> {
    static DEVICES: Mutex<Vec<(usize, Device)>> = Mutex::new(Vec::new());
    let mut devices = DEVICES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some((_, device)) = devices.iter().find(|(known, _)| *known == ordinal) {
        return Ok(device.clone());
    }
    let device = DeviceSpec::Cuda(ordinal).candle()?;
    devices.push((ordinal, device.clone()));
    Ok(device)
}

fn warn_k_too_large(k: usize) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    WARNED.call_once(|| {
        tracing::warn!(
            "mine: k = {k} is above the CUDA selection kernel's limit of {MAX_K}; searching on the CPU"
        )
    });
}
