//! Exact top-k on a CUDA device: candle's f32 matrix product scores a wave of queries against one corpus chunk at
//! a time, and the selection kernel merges each chunk into the queries' running lists on the device. Only the
//! final `queries x k` keys come back to the host.

use std::cell::RefCell;

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, CudaView};
use candle_core::cuda_backend::WrapErr;
use candle_core::{CudaDevice, DType, Storage, Tensor};

use super::error::CudaTopKError;
use super::kernels::{self, MergeChunk, MAX_K};
use super::rank_key;
use crate::mine::matrix::check_score_range;
use crate::mine::{DocOrder, Exclusions, Hit, MineError, TopKConfig};

/// A starting point for the device: 65,536 documents per chunk and 4,096 queries per wave put 1 GiB of scores on
/// the device per step, which keeps an H100 busy with one matrix product while leaving room for a large corpus.
pub const CUDA_TOP_K_DEFAULTS: TopKConfig = TopKConfig {
    k: 100,
    chunk_docs: 65_536,
    query_block: 4_096,
};

/// Chunks are cut to this many documents so that the kernel's u32 candidate counts cannot overflow.
const MAX_CHUNK_DOCS: usize = 1 << 30;
/// Waves are cut to this many queries, well inside the launch grid's limit of 2^31 - 1 blocks (one per query).
const MAX_WAVE_QUERIES: usize = 1 << 24;

/// The `config.k` best documents of `corpus` for each of `queries`, best first, leaving out each query's
/// exclusions: the same lists as [`exact_top_k`](crate::mine::exact_top_k) returns for the same scores, ties
/// included (ranked by `order`, score descending then document id descending).
///
/// `queries` (Q x D) and `corpus` (N x D) are f32 tensors on one CUDA device; row i of `corpus` is document
/// `first_doc + i` of the whole corpus. `config.chunk_docs` documents are scored per step against
/// `config.query_block` queries (the step's score buffer is their product in f32); see
/// [`CUDA_TOP_K_DEFAULTS`]. `config.k` may be at most 2048.
///
/// The scores come from cuBLAS in full f32 (candle's default; it can be switched to TF32 with
/// `candle_core::cuda::set_gemm_reduced_precision_f32`, which rounds the inputs to 10-bit mantissas and can
/// reorder near ties: leave it off for mining). Even in f32 the summation order differs from the CPU kernel's,
/// so scores agree with the CPU path to rounding (about 1e-7 relative) and two documents whose scores differ by
/// less than that may swap places between the two paths.
pub fn exact_top_k_cuda(
    queries: &Tensor,
    corpus: &Tensor,
    first_doc: usize,
    order: &DocOrder,
    exclusions: &Exclusions,
    config: &TopKConfig,
) -> Result<Vec<Vec<Hit>>, CudaTopKError> {
    config.validate()?;
    if config.k > MAX_K {
        return Err(CudaTopKError::KTooLarge {
            k: config.k,
            max: MAX_K,
        });
    }
    let device = cuda_device(queries, "queries")?;
    if !corpus.device().same_device(queries.device()) {
        return Err(CudaTopKError::Input {
            what: "corpus",
            problem: "not on the same CUDA device as the queries".to_owned(),
        });
    }
    let (query_rows, dim) = matrix_shape(queries, "queries")?;
    let (doc_rows, doc_dim) = matrix_shape(corpus, "corpus")?;
    if dim != doc_dim {
        return Err(MineError::DimensionMismatch {
            queries: dim,
            documents: doc_dim,
        }
        .into());
    }
    if first_doc + doc_rows > order.len() {
        return Err(MineError::PartOutOfRange {
            first_doc,
            end: first_doc + doc_rows,
            known: order.len(),
        }
        .into());
    }
    exclusions.validate(query_rows, order)?;
    let queries = queries.contiguous()?;
    let corpus = corpus.contiguous()?;
    let query_max = checked_max_abs(&device, &queries, "queries", dim)?;
    let document_max = checked_max_abs(&device, &corpus, "corpus", dim)?;
    check_score_range(query_max, document_max, dim)?;
    if config.k == 0 || doc_rows == 0 {
        return Ok(vec![Vec::new(); query_rows]);
    }
    let search = Search::upload(
        &device, &corpus, first_doc, order, exclusions, query_rows, config,
    )?;
    warn_if_reduced_precision();
    let wave = config.query_block.min(MAX_WAVE_QUERIES);
    let mut hits = Vec::with_capacity(query_rows);
    for start in (0..query_rows).step_by(wave) {
        let rows = wave.min(query_rows - start);
        hits.extend(search.wave(&queries.narrow(0, start, rows)?, start)?);
    }
    Ok(hits)
}

/// TF32 products (a process-wide candle switch that training may turn on) round the inputs to 10-bit mantissas:
/// lists stay exact for the scores computed, but those scores drift from the CPU path's by about 1e-3 relative
/// and reorder near ties. Mining does not flip the switch itself (other threads may rely on it); it says so.
fn warn_if_reduced_precision() {
    if candle_core::cuda::gemm_reduced_precision_f32() {
        static WARNED: std::sync::Once = std::sync::Once::new();
        WARNED.call_once(|| {
            tracing::warn!(
                "mine: candle's f32 matrix products run in TF32 (reduced precision); top-k scores will differ \
                 from the CPU path's by about 1e-3 relative"
            )
        });
    }
}

/// The corpus side of a search, uploaded once and shared by every wave of queries.
struct Search<'a> {
    device: &'a CudaDevice,
    corpus: &'a Tensor,
    first_doc: usize,
    order: &'a DocOrder,
    k: usize,
    chunk_docs: usize,
    /// Tie rank of every corpus row.
    ties: CudaSlice<u32>,
    /// The exclusion lists of all queries as offsets (Q + 1) into one array of document indices.
    exclusion_offsets: CudaSlice<u64>,
    exclusion_docs: CudaSlice<u32>,
}

impl<'a> Search<'a> {
    fn upload(
        device: &'a CudaDevice,
        corpus: &'a Tensor,
        first_doc: usize,
        order: &'a DocOrder,
        exclusions: &Exclusions,
        queries: usize,
        config: &TopKConfig,
    ) -> Result<Self, CudaTopKError> {
        let doc_rows = corpus.dim(0)?;
        let stream = device.cuda_stream();
        // Every document index fits in u32: the tie order holds at most u32::MAX documents.
        let ranks: Vec<u32> = (first_doc..first_doc + doc_rows)
            .map(|doc| order.rank(doc as u32))
            .collect();
        let (offsets, docs) = exclusion_lists(exclusions, queries, order);
        Ok(Self {
            device,
            corpus,
            first_doc,
            order,
            k: config.k,
            chunk_docs: config.chunk_docs.min(doc_rows).min(MAX_CHUNK_DOCS),
            ties: stream.clone_htod(&ranks).w()?,
            exclusion_offsets: stream.clone_htod(&offsets).w()?,
            exclusion_docs: stream.clone_htod(&docs).w()?,
        })
    }

    /// The top-k lists of one wave of queries, the first being query `first_query`: the running lists live on
    /// the device while the corpus is walked chunk by chunk, and come back once, decoded.
    fn wave(&self, queries: &Tensor, first_query: usize) -> Result<Vec<Vec<Hit>>, CudaTopKError> {
        let rows = queries.dim(0)?;
        let stream = self.device.cuda_stream();
        let mut kept = stream.alloc_zeros::<u64>(rows * self.k).w()?;
        let doc_rows = self.corpus.dim(0)?;
        for start in (0..doc_rows).step_by(self.chunk_docs) {
            let cols = self.chunk_docs.min(doc_rows - start);
            let scores = queries.matmul(&self.corpus.narrow(0, start, cols)?.t()?)?;
            scores.inplace_op1(&MergeChunk {
                rows: rows as u32,
                cols: cols as u32,
                ties: self.ties.slice(start..start + cols),
                first_doc: (self.first_doc + start) as u32,
                exclusion_offsets: self
                    .exclusion_offsets
                    .slice(first_query..first_query + rows + 1),
                exclusion_docs: &self.exclusion_docs,
                kept: RefCell::new(&mut kept),
                k: self.k as u32,
            })?;
        }
        let keys = stream.clone_dtoh(&kept).w()?;
        Ok(keys
            .chunks_exact(self.k)
            .map(|row| {
                row.iter()
                    .map_while(|&key| rank_key::decode(key))
                    .map(|(score, tie)| Hit {
                        doc: self.order.doc_at(tie),
                        score,
                    })
                    .collect()
            })
            .collect())
    }
}

/// The exclusion lists of `queries` queries as one flat array with per-query offsets. The array is never empty (a
/// device allocation needs a length): an entry past the last document, which no query's range covers, pads it.
fn exclusion_lists(
    exclusions: &Exclusions,
    queries: usize,
    order: &DocOrder,
) -> (Vec<u64>, Vec<u32>) {
    let mut offsets = vec![0u64];
    let mut docs = Vec::new();
    for query in 0..queries {
        docs.extend_from_slice(exclusions.of(query));
        offsets.push(docs.len() as u64);
    }
    if docs.is_empty() {
        docs.push(order.len() as u32);
    }
    (offsets, docs)
}

fn cuda_device(tensor: &Tensor, what: &'static str) -> Result<CudaDevice, CudaTopKError> {
    tensor
        .device()
        .as_cuda_device()
        .cloned()
        .map_err(|_| CudaTopKError::Input {
            what,
            problem: format!("on {:?}, not on a CUDA device", tensor.device().location()),
        })
}

/// Rows and dimension of a 2-d f32 tensor.
fn matrix_shape(tensor: &Tensor, what: &'static str) -> Result<(usize, usize), CudaTopKError> {
    if tensor.dtype() != DType::F32 {
        return Err(CudaTopKError::Input {
            what,
            problem: format!("dtype {:?}, expected f32", tensor.dtype()),
        });
    }
    match *tensor.dims() {
        [_, 0] => Err(MineError::ZeroDimension { what }.into()),
        [rows, dim] => Ok((rows, dim)),
        _ => Err(CudaTopKError::Input {
            what,
            problem: format!("shape {:?}, expected (rows, dim)", tensor.dims()),
        }),
    }
}

/// The largest absolute value of a contiguous matrix, after checking on the device that every value is finite
/// (the CPU path's [`Matrix::max_abs`](crate::mine::Matrix::max_abs) check, with the same error).
fn checked_max_abs(
    device: &CudaDevice,
    tensor: &Tensor,
    what: &'static str,
    dim: usize,
) -> Result<f32, CudaTopKError> {
    let scan = with_view(tensor, |values| Ok(kernels::scan_values(device, &values)?))?;
    match scan.first_non_finite {
        None => Ok(scan.max_abs),
        Some(index) => Err(MineError::NonFinite {
            what,
            row: index / dim,
            column: index % dim,
            value: tensor.flatten_all()?.get(index)?.to_scalar::<f32>()?,
        }
        .into()),
    }
}

/// Runs `f` on the device memory of a contiguous f32 tensor, holding its storage for the duration.
fn with_view<R>(
    tensor: &Tensor,
    f: impl FnOnce(CudaView<'_, f32>) -> Result<R, CudaTopKError>,
) -> Result<R, CudaTopKError> {
    let (storage, layout) = tensor.storage_and_layout();
    let Storage::Cuda(storage) = &*storage else {
        return Err(CudaTopKError::Input {
            what: "tensor",
            problem: "storage is not on a CUDA device".to_owned(),
        });
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        return Err(CudaTopKError::Input {
            what: "tensor",
            problem: "not contiguous".to_owned(),
        });
    };
    f(storage.as_cuda_slice::<f32>()?.slice(start..end))
}
