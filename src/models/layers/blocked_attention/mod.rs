//! Exact attention that never holds a `(q_len, kv_len)` score matrix: FlashAttention-2's algorithm as a candle
//! custom op with its own backward pass.
//!
//! [`crate::models::layers::attention::scaled_dot_product_attention`] materialises every head's scores and autograd keeps them
//! (and the softmax intermediates) until the backward pass: `heads * q_len * kv_len` floats per layer. Here the
//! forward pass walks the keys block by block with an online softmax and saves only the output and each query's
//! log-sum-exp; the backward pass recomputes each block's probabilities from those and accumulates the gradients
//! of q, k and v block by block (`D = rowsum(dO * O)`, `dS = P * (dP - D)`).
//!
//! The mask is a [`KeySpans`]: the kernel asks it which key blocks a query block may see, skips the others, and
//! masks within a block element by element, so causal and block-diagonal layouts cost what they attend to.
//! Fully masked rows follow [`crate::models::layers::mask`]'s rule (they attend to every key), so results equal the reference's.
//!
//! Two implementations of the one algorithm, both accumulating in f32 (bf16 inputs are widened, the output
//! rounded back):
//! - on the CPU, plain Rust over slices ([`forward`], [`backward`]), parallel over `(batch, head)` pairs, with
//!   one small tile per thread that stays in cache;
//! - on any other device, the same tile loop in candle tensor ops ([`tensor_tiles`]) over large tiles of every
//!   `(batch, head)` pair at once, so the products run as the device's batched matmuls. That code is
//!   device-generic, and the tests run it on the CPU against the reference for every layout.
//!
//! f64 (the gradient checks) takes the reference path: [`supports`] says which inputs run here.

mod backward;
mod forward;
mod tensor_tiles;
mod vector;

pub use tensor_tiles::device_block_sizes;

use crate::models::layers::attention::check_shapes;
use crate::models::layers::key_spans::KeySpans;
use crate::models::layers::layer_error::LayerError;
use candle_core::backend::BackendStorage;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp3, DType, Layout, MetalStorage, Result, Shape, Storage, Tensor,
};
use half::bf16;
use std::borrow::Cow;
use std::sync::{Arc, Mutex, OnceLock};

/// Tile sizes: queries per block and keys per block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockSizes {
    pub queries: usize,
    pub keys: usize,
}

impl Default for BlockSizes {
    /// 64 x 64 f32 scores are 16 KiB: a tile, its query rows and its key rows stay in L1/L2 at head_dim 128.
    fn default() -> Self {
        Self {
            queries: 64,
            keys: 64,
        }
    }
}

/// Whether [`blocked_attention`] runs on `q`, `k`, `v`: all f32 or all bf16, on one device.
pub fn supports(q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
    let dtype = q.dtype();
    matches!(dtype, DType::F32 | DType::BF16)
        && [k, v]
            .iter()
            .all(|t| t.dtype() == dtype && t.device().same_device(q.device()))
}

/// `softmax(q k^T * scale + mask) v` with the shapes and head grouping of
/// [`crate::models::layers::attention::scaled_dot_product_attention`], `mask` a structured mask (`None`: every key visible).
/// Differentiable in `q`, `k` and `v`. Fails unless [`supports`] holds.
pub fn blocked_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&KeySpans>,
    scale: f64,
) -> Result<Tensor> {
    blocked_attention_with(q, k, v, mask, scale, BlockSizes::default())
}

/// [`blocked_attention`] with the given tile sizes (tests use small ones to cross many tile borders). On the CPU
/// this runs the slice kernels; elsewhere [`tiled_attention_with`] with the tile sizes of
/// [`device_block_sizes`].
pub fn blocked_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&KeySpans>,
    scale: f64,
    blocks: BlockSizes,
) -> Result<Tensor> {
    let mask = checked_mask(q, k, v, mask, blocks)?;
    if !q.device().is_cpu() {
        let (batch, heads, _, _) = q.dims4()?;
        let blocks = device_block_sizes(batch, heads);
        return tiled(q, k, v, mask, scale, blocks);
    }
    let op = BlockedAttentionOp {
        mask,
        scale: scale as f32,
        blocks,
        log_sum_exp: OnceLock::new(),
    };
    q.contiguous()?
        .apply_op3(&k.contiguous()?, &v.contiguous()?, op)
}

/// The algorithm in candle tensor ops over tiles ([`tensor_tiles`]), on whatever device the inputs are: what
/// [`blocked_attention`] runs off the CPU. Public so that it can be checked on the CPU.
pub fn tiled_attention_with(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&KeySpans>,
    scale: f64,
    blocks: BlockSizes,
) -> Result<Tensor> {
    let mask = checked_mask(q, k, v, mask, blocks)?;
    tiled(q, k, v, mask, scale, blocks)
}

fn tiled(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Arc<KeySpans>,
    scale: f64,
    blocks: BlockSizes,
) -> Result<Tensor> {
    let (out, log_sum_exp) = tensor_tiles::forward(q, k, v, &mask, scale, blocks)?;
    let op = TiledAttentionOp {
        out: Mutex::new(Some(out.to_dtype(q.dtype())?.contiguous()?)),
        log_sum_exp,
        mask,
        scale,
        blocks,
    };
    q.apply_op3(k, v, op)
}

/// Checks the inputs, the mask and the tile sizes; `None` becomes the mask that shows every key.
fn checked_mask(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&KeySpans>,
    blocks: BlockSizes,
) -> Result<Arc<KeySpans>> {
    check_shapes(q, k, v)?;
    if !supports(q, k, v) {
        return Err(LayerError::BlockedUnsupported {
            dtypes: [q.dtype(), k.dtype(), v.dtype()],
            device: format!("{:?}", q.device().location()),
        }
        .into());
    }
    if blocks.queries == 0 || blocks.keys == 0 {
        candle_core::bail!("blocked attention: block sizes must be positive, got {blocks:?}");
    }
    let (batch, _, q_len, _) = q.dims4()?;
    let kv_len = k.dim(2)?;
    let mask = match mask {
        Some(mask) => {
            mask.check_fits(batch, q_len, kv_len)?;
            mask.clone()
        }
        None => KeySpans::full(kv_len)?,
    };
    Ok(Arc::new(mask))
}

/// The sizes of one attention call.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    q_len: usize,
    kv_len: usize,
    head_dim: usize,
}

impl Geometry {
    fn new(q: &Shape, k: &Shape) -> Result<Self> {
        let (batch, heads, q_len, head_dim) = q.dims4()?;
        let (_, kv_heads, kv_len, _) = k.dims4()?;
        Ok(Self {
            batch,
            heads,
            kv_heads,
            q_len,
            kv_len,
            head_dim,
        })
    }

    /// The key/value head that query head `head` reads (transformers' `repeat_kv` order).
    fn kv_head(&self, head: usize) -> usize {
        head / (self.heads / self.kv_heads)
    }
}

/// One `(batch, head)` pair's slices: `q` and `out` are `(q_len, head_dim)`, `k` and `v` `(kv_len, head_dim)`.
struct HeadInputs<'a> {
    batch: usize,
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

impl<'a> HeadInputs<'a> {
    /// The slices of pair `pair` (= `batch * heads + head`) in contiguous `q`, `k`, `v`.
    fn of(g: &Geometry, pair: usize, q: &'a [f32], k: &'a [f32], v: &'a [f32]) -> Self {
        let (batch, head) = (pair / g.heads, pair % g.heads);
        let kv_pair = batch * g.kv_heads + g.kv_head(head);
        let (q_size, kv_size) = (g.q_len * g.head_dim, g.kv_len * g.head_dim);
        Self {
            batch,
            q: &q[pair * q_size..][..q_size],
            k: &k[kv_pair * kv_size..][..kv_size],
            v: &v[kv_pair * kv_size..][..kv_size],
        }
    }
}

struct BlockedAttentionOp {
    mask: Arc<KeySpans>,
    scale: f32,
    blocks: BlockSizes,
    /// Each query's log-sum-exp of its (scaled, masked) scores, `(batch, heads, q_len)`: written by the forward
    /// pass, read by the backward pass. It lives with the op in the autograd graph, beside the output.
    log_sum_exp: OnceLock<Vec<f32>>,
}

impl CustomOp3 for BlockedAttentionOp {
    fn name(&self) -> &'static str {
        "blocked-attention"
    }

    fn cpu_fwd(
        &self,
        q: &CpuStorage,
        q_layout: &Layout,
        k: &CpuStorage,
        k_layout: &Layout,
        v: &CpuStorage,
        v_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let geometry = Geometry::new(q_layout.shape(), k_layout.shape())?;
        let (out, log_sum_exp) = forward::forward(
            &geometry,
            &f32_values(q, q_layout)?,
            &f32_values(k, k_layout)?,
            &f32_values(v, v_layout)?,
            &self.mask,
            self.scale,
            self.blocks,
        );
        if self.log_sum_exp.set(log_sum_exp).is_err() {
            candle_core::bail!("blocked attention: one op instance ran its forward pass twice");
        }
        let out = match q.dtype() {
            DType::BF16 => CpuStorage::BF16(out.into_iter().map(bf16::from_f32).collect()),
            _ => CpuStorage::F32(out),
        };
        Ok((out, q_layout.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let Some(log_sum_exp) = self.log_sum_exp.get() else {
            candle_core::bail!("blocked attention: backward pass before the forward pass");
        };
        let geometry = Geometry::new(q.shape(), k.shape())?;
        let grads = backward::backward(
            &geometry,
            &backward::Saved {
                q: &tensor_values(q)?,
                k: &tensor_values(k)?,
                v: &tensor_values(v)?,
                out: &tensor_values(out)?,
                grad_out: &tensor_values(grad_out)?,
                log_sum_exp,
            },
            &self.mask,
            self.scale,
            self.blocks,
        );
        let like = |values: Vec<f32>, t: &Tensor| -> Result<Option<Tensor>> {
            Tensor::from_vec(values, t.shape(), t.device())?
                .to_dtype(t.dtype())
                .map(Some)
        };
        Ok((like(grads.q, q)?, like(grads.k, k)?, like(grads.v, v)?))
    }
}

/// A contiguous storage's values as f32, borrowed when they already are.
fn f32_values<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<Cow<'a, [f32]>> {
    let Some((start, end)) = layout.contiguous_offsets() else {
        candle_core::bail!("blocked attention: inputs must be contiguous");
    };
    match storage {
        CpuStorage::F32(values) => Ok(Cow::Borrowed(&values[start..end])),
        CpuStorage::BF16(values) => Ok(Cow::Owned(
            values[start..end].iter().map(|x| x.to_f32()).collect(),
        )),
        other => candle_core::bail!("blocked attention: unsupported dtype {:?}", other.dtype()),
    }
}

/// A tensor's values in row-major order as f32.
fn tensor_values(t: &Tensor) -> Result<Vec<f32>> {
    t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()
}

/// The tensor path's op: its forward pass already ran in tensor ops (values only), so the op's own forward hands
/// that output over to the autograd graph, and its backward runs [`tensor_tiles::backward`].
struct TiledAttentionOp {
    /// The output, taken by the op's forward pass.
    out: Mutex<Option<Tensor>>,
    /// `(batch, heads, q_len)` f32, for the backward pass.
    log_sum_exp: Tensor,
    mask: Arc<KeySpans>,
    scale: f64,
    blocks: BlockSizes,
}

impl TiledAttentionOp {
    /// The computed output, once.
    fn take_output(&self) -> Result<Tensor> {
        let taken = self.out.lock().ok().and_then(|mut out| out.take());
        match taken {
            Some(out) => Ok(out),
            None => {
                candle_core::bail!("tiled attention: one op instance ran its forward pass twice")
            }
        }
    }

    /// Copies the computed output out of its storage with `pick`, which selects the backend's variant.
    fn hand_over<S>(
        &self,
        pick: impl FnOnce(&Storage, &Layout) -> Option<Result<S>>,
    ) -> Result<(S, Shape)> {
        let out = self.take_output()?;
        let (storage, layout) = out.storage_and_layout();
        match pick(&storage, layout) {
            Some(copy) => Ok((copy?, layout.shape().clone())),
            None => candle_core::bail!(
                "tiled attention: the output is on {:?}, not on the inputs' device",
                out.device().location()
            ),
        }
    }
}

impl CustomOp3 for TiledAttentionOp {
    fn name(&self) -> &'static str {
        "tiled-attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.hand_over(|storage, layout| match storage {
            Storage::Cpu(s) => Some(s.try_clone(layout)),
            _ => None,
        })
    }

    fn cuda_fwd(
        &self,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
        _: &CudaStorage,
        _: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        self.hand_over(|storage, layout| match storage {
            Storage::Cuda(s) => Some(s.try_clone(layout)),
            _ => None,
        })
    }

    fn metal_fwd(
        &self,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
        _: &MetalStorage,
        _: &Layout,
    ) -> Result<(MetalStorage, Shape)> {
        self.hand_over(|storage, layout| match storage {
            Storage::Metal(s) => Some(s.try_clone(layout)),
            _ => None,
        })
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        out: &Tensor,
        grad_out: &Tensor,
    ) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let saved = tensor_tiles::Saved {
            q,
            k,
            v,
            out,
            grad_out,
            log_sum_exp: &self.log_sum_exp,
        };
        let (dq, dk, dv) = tensor_tiles::backward(&saved, &self.mask, self.scale, self.blocks)?;
        Ok((Some(dq), Some(dk), Some(dv)))
    }
}
