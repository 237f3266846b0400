//! Scaled dot-product attention with grouped-query heads and a mask, differentiable end to end, and the choice
//! of kernel that computes it.
//!
//! [`scaled_dot_product_attention`] materialises the `(q_len, kv_len)` score matrix per head, and candle's
//! autograd keeps it (and the softmax intermediates) alive until the backward pass. That is fine for the short
//! sequences of tests and scoring, but not for training at the paper's 3200 tokens: 17 sequences x 16 heads x
//! 3200^2 scores is several GB per layer. It is the reference that [`blocked_attention`] must match, and the path
//! for what that kernel does not run (the f64 gradient checks).

use crate::models::formats::precision::compute_dtype;
use crate::models::layers::blocked_attention::{
    self, blocked_attention, device_block_sizes, tiled_attention_with,
};
use crate::models::layers::key_spans::KeySpans;
use crate::models::layers::layer_error::LayerError;
use crate::models::layers::mask::AttentionMask;
use crate::models::layers::softmax::softmax;
use candle_core::{Result, Tensor};

/// Which implementation computes a model's attention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttentionKernel {
    /// [`scaled_dot_product_attention`] everywhere: scores materialised and kept for the backward pass.
    Reference,
    /// [`blocked_attention`] wherever it runs (see [`blocked_attention::supports`]), the reference elsewhere:
    /// the slice kernels on the CPU, the tensor-op tiles on other devices.
    #[default]
    Blocked,
    /// The blocked algorithm in tensor ops ([`tiled_attention_with`]) on every device, the CPU included: what
    /// [`Self::Blocked`] runs on a GPU, selectable on the CPU so that tests and benchmarks reach that path.
    Tiled,
}

impl AttentionKernel {
    /// Whether attention over these inputs runs blocked.
    pub fn runs_blocked(self, q: &Tensor, k: &Tensor, v: &Tensor) -> bool {
        self != Self::Reference && blocked_attention::supports(q, k, v)
    }

    /// Blocked attention under `mask` on this kernel's implementation, for inputs [`Self::runs_blocked`] accepts.
    pub fn attend_blocked(
        self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        mask: Option<&KeySpans>,
        scale: f64,
    ) -> Result<Tensor> {
        match self {
            Self::Tiled => {
                let (batch, heads, _, _) = q.dims4()?;
                tiled_attention_with(q, k, v, mask, scale, device_block_sizes(batch, heads))
            }
            Self::Blocked | Self::Reference => blocked_attention(q, k, v, mask, scale),
        }
    }
}

/// Attention as [`scaled_dot_product_attention`] defines it, computed by `kernel`.
pub fn attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&AttentionMask>,
    scale: f64,
    kernel: AttentionKernel,
) -> Result<Tensor> {
    if !kernel.runs_blocked(q, k, v) {
        return scaled_dot_product_attention(q, k, v, mask, scale);
    }
    let spans = match mask {
        Some(mask) => {
            let (batch, _, q_len, _) = q.dims4()?;
            Some(mask.key_spans(batch, q_len, k.dim(2)?)?)
        }
        None => None,
    };
    kernel.attend_blocked(q, k, v, spans, scale)
}

/// `softmax(q k^T * scale + mask) v` for `q` of shape `(batch, heads, q_len, head_dim)` and `k`, `v` of shape
/// `(batch, kv_heads, kv_len, head_dim)`, where `heads` is a multiple of `kv_heads` (query head `h` reads
/// key/value head `h / (heads / kv_heads)`, transformers' `repeat_kv` order). Returns `(batch, heads, q_len,
/// head_dim)` in `q`'s dtype; the softmax runs in f32 for half-precision inputs, as transformers' eager attention
/// does. `scale` is usually `1 / sqrt(head_dim)`.
///
/// Grouped-query attention is computed without copying keys and values per query head: the queries of a group
/// are stacked along the sequence axis, `(batch, kv_heads, group * q_len, head_dim)`, and multiplied by their
/// shared keys in one batched matmul.
pub fn scaled_dot_product_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&AttentionMask>,
    scale: f64,
) -> Result<Tensor> {
    let (batch, heads, q_len, head_dim) = q.dims4()?;
    let (_, kv_heads, kv_len, _) = k.dims4()?;
    check_shapes(q, k, v)?;
    let group = heads / kv_heads;
    let dtype = q.dtype();

    let q = (q * scale)?.reshape((batch, kv_heads, group * q_len, head_dim))?;
    let scores = q
        .matmul(&k.contiguous()?.t()?)?
        .reshape((batch, heads, q_len, kv_len))?
        .to_dtype(compute_dtype(dtype))?;
    let scores = match mask {
        Some(mask) => {
            mask.check_broadcasts_to(scores.shape())?;
            scores.broadcast_add(&mask.bias()?.to_dtype(scores.dtype())?)?
        }
        None => scores,
    };
    let probs =
        softmax(&scores)?
            .to_dtype(dtype)?
            .reshape((batch, kv_heads, group * q_len, kv_len))?;
    probs
        .matmul(&v.contiguous()?)?
        .reshape((batch, heads, q_len, head_dim))
}

pub(crate) fn check_shapes(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<()> {
    let (batch, heads, _, head_dim) = q.dims4()?;
    let (k_batch, kv_heads, kv_len, k_dim) = k.dims4()?;
    if k.dims() != v.dims() || k_batch != batch || k_dim != head_dim || kv_heads == 0 || kv_len == 0
    {
        return Err(LayerError::AttentionShapes {
            q: q.shape().clone(),
            k: k.shape().clone(),
            v: v.shape().clone(),
        }
        .into());
    }
    if heads % kv_heads != 0 {
        return Err(LayerError::HeadGroups { heads, kv_heads }.into());
    }
    Ok(())
}
