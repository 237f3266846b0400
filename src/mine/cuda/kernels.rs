//! Launchers for the kernels of `topk.cu`, compiled to PTX by build.rs and loaded once per device through
//! candle's module cache, so that they run on candle's stream, ordered after the matrix products that feed them.

use std::cell::RefCell;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CpuStorage, CudaDevice, CudaStorage, InplaceOp1, Layout};

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
    let blocks = values
        .len()
        .div_ceil(SCAN_THREADS as usize)
        .min(SCAN_MAX_BLOCKS) as u32;
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

/// Merges one chunk of scores into a wave's running lists. It runs as an in-place op on the chunk's score tensor
/// (`rows x cols`, the wave's queries against the chunk's documents), because the kernel overwrites the excluded
/// entries with -inf: candle then hands it the scores mutably, on the tensor's own stream. The tensor must be one
/// that nothing else reads.
pub(super) struct MergeChunk<'a> {
    pub(super) rows: u32,
    pub(super) cols: u32,
    /// Tie ranks of the chunk's documents.
    pub(super) ties: CudaView<'a, u32>,
    /// Corpus-wide index of the chunk's first document (exclusion lists use that numbering).
    pub(super) first_doc: u32,
    /// `rows + 1` offsets into `exclusion_docs`: the wave's exclusion lists.
    pub(super) exclusion_offsets: CudaView<'a, u64>,
    pub(super) exclusion_docs: &'a CudaSlice<u32>,
    /// `rows x k` rank keys, best first, updated in place. A cell because candle lends the op by shared
    /// reference.
    pub(super) kept: RefCell<&'a mut CudaSlice<u64>>,
    /// Hits per query, in `1..=MAX_K`.
    pub(super) k: u32,
}

impl InplaceOp1 for MergeChunk<'_> {
    fn name(&self) -> &'static str {
        "umrank_mine_topk_merge_chunk"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout) -> candle_core::Result<()> {
        candle_core::bail!("{}: the scores are not on a CUDA device", self.name())
    }

    fn cuda_fwd(&self, storage: &mut CudaStorage, layout: &Layout) -> candle_core::Result<()> {
        let expected = self.rows as usize * self.cols as usize;
        let (start, end) = match layout.contiguous_offsets() {
            Some((start, end)) if end - start == expected => (start, end),
            _ => candle_core::bail!(
                "{}: scores must be a contiguous {} x {} matrix",
                self.name(),
                self.rows,
                self.cols
            ),
        };
        let kept_len = self.rows as usize * self.k as usize;
        let mut kept = self.kept.borrow_mut();
        if kept.len() != kept_len || self.ties.len() != self.cols as usize {
            candle_core::bail!("{}: running lists or tie ranks mis-sized", self.name());
        }
        let device = storage.device.clone();
        let func = device.get_or_load_custom_func("topk_merge_chunk", MODULE, PTX)?;
        let mut scores = storage.as_cuda_slice_mut::<f32>()?.slice_mut(start..end);
        let mut launch = func.builder();
        launch.arg(&mut scores);
        launch.arg(&self.cols);
        launch.arg(&self.ties);
        launch.arg(&self.first_doc);
        launch.arg(&self.exclusion_offsets);
        launch.arg(self.exclusion_docs);
        launch.arg(&mut **kept);
        launch.arg(&self.k);
        let config = LaunchConfig {
            grid_dim: (self.rows, 1, 1),
            block_dim: (SELECT_THREADS, 1, 1),
            shared_mem_bytes: 0,
        };
        // SAFETY: the argument list matches topk_merge_chunk in topk.cu. Sizes: scores rows x cols and kept
        // rows x k (both checked above), ties cols (checked); the caller passes rows + 1 offsets that stay within
        // exclusion_docs and keeps k within MAX_K (the kernel's shared buffer holds 2 x MAX_K candidates).
        unsafe { launch.launch(config) }.w()?;
        Ok(())
    }
}
