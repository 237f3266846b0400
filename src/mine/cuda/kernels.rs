//! Launchers for the kernels of `topk.cu`, compiled to PTX by build.rs and loaded once per device through
//! candle's module cache, so that they run on candle's stream, ordered after the matrix products that feed them.

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::CudaDevice;

const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/mine_topk.ptx"));
const MODULE: &str = "umrank_mine_topk";

/// Threads per query row in `topk_merge_chunk` (SELECT_THREADS in topk.cu, which sizes its launch bounds).
const SELECT_THREADS: u32 = 512;
/// Candidates one block can hold in shared memory (CAPACITY in topk.cu). A query's k must not exceed it; half of
/// it leaves room for the running list plus a chunk's new entrants without a radix descent.
pub(super) const MAX_K: usize = 2048;

const SCAN_THREADS: u32 = 256;
/// Enough blocks to fill any current GPU; each grid-strides over the rest.
const SCAN_MAX_BLOCKS: usize = 4096;

/// What one pass over a matrix's values found.
pub(super) struct ValueScan {
    /// The largest absolute value (meaningful when every value is finite).
    pub(super) max_abs: f32,
    /// The flat index of the first value that is infinite or NaN.
    pub(super) first_non_finite: Option<usize>,
}

/// Scans `values` for their largest absolute value and their first non-finite entry, in one pass on the device:
/// the corpus can be gigabytes that never visit the host.
pub(super) fn scan_values(
    device: &CudaDevice,
    values: &CudaView<'_, f32>,
) -> candle_core::Result<ValueScan> {
    let stream = device.cuda_stream();
    if values.is_empty() {
        return Ok(ValueScan {
            max_abs: 0.0,
            first_non_finite: None,
        });
    }
    let mut max_bits = stream.alloc_zeros::<u32>(1).w()?;
    let mut first_bad = stream.clone_htod(&[u64::MAX]).w()?;
    let len = values.len() as u64;
    let blocks = values.len().div_ceil(SCAN_THREADS as usize).min(SCAN_MAX_BLOCKS) as u32;
    let func = device.get_or_load_custom_func("scan_values", MODULE, PTX)?;
    let mut launch = func.builder();
    launch.arg(values);
    launch.arg(&len);
    launch.arg(&mut max_bits);
    launch.arg(&mut first_bad);
    let config = LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (SCAN_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the argument list matches scan_values in topk.cu, and the grid-stride loop stays below `len`.
    unsafe { launch.launch(config) }.w()?;
    let max_bits = stream.clone_dtoh(&max_bits).w()?;
    let first_bad = stream.clone_dtoh(&first_bad).w()?;
    Ok(ValueScan {
        max_abs: f32::from_bits(max_bits[0]),
        first_non_finite: (first_bad[0] != u64::MAX).then_some(first_bad[0] as usize),
    })
}

/// One chunk of scores and what the selection needs to know about it.
pub(super) struct ScoredChunk<'a> {
    /// `rows x cols` scores, row-major: the wave's queries against the chunk's documents. The kernel overwrites
    /// excluded entries with -inf, so this must be a buffer nothing else reads.
    pub(super) scores: CudaView<'a, f32>,
    pub(super) rows: u32,
    pub(super) cols: u32,
    /// Tie ranks of the chunk's documents.
    pub(super) ties: CudaView<'a, u32>,
    /// Corpus-wide index of the chunk's first document (exclusion lists use that numbering).
    pub(super) first_doc: u32,
    /// `rows + 1` offsets into `exclusion_docs`: the wave's exclusion lists.
    pub(super) exclusion_offsets: CudaView<'a, u64>,
    pub(super) exclusion_docs: &'a CudaSlice<u32>,
}

/// Merges a chunk into the wave's running lists: `kept` holds `rows x k` rank keys, best first, and is updated in
/// place. `k` must be in `1..=MAX_K`.
pub(super) fn merge_chunk(
    device: &CudaDevice,
    chunk: &ScoredChunk<'_>,
    kept: &mut CudaSlice<u64>,
    k: u32,
) -> candle_core::Result<()> {
    let func = device.get_or_load_custom_func("topk_merge_chunk", MODULE, PTX)?;
    let mut launch = func.builder();
    launch.arg(&chunk.scores);
    launch.arg(&chunk.cols);
    launch.arg(&chunk.ties);
    launch.arg(&chunk.first_doc);
    launch.arg(&chunk.exclusion_offsets);
    launch.arg(chunk.exclusion_docs);
    launch.arg(kept);
    launch.arg(&k);
    let config = LaunchConfig {
        grid_dim: (chunk.rows, 1, 1),
        block_dim: (SELECT_THREADS, 1, 1),
        shared_mem_bytes: 0,
    };
    // SAFETY: the argument list matches topk_merge_chunk in topk.cu; the caller sizes scores (rows x cols), ties
    // (cols), the offsets (rows + 1, within exclusion_docs) and kept (rows x k), and keeps k within MAX_K.
    unsafe { launch.launch(config) }.w()?;
    Ok(())
}
