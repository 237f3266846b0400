//! Additive attention masks, built once per batch and shared by every layer.
//!
//! A mask is a bias added to the attention scores: 0 where a query may attend to a key and the most negative
//! finite value of the softmax dtype where it may not (finite, so that no softmax row is ever all `-inf`).
//!
//! A query that may attend to no key at all (a left-padding position under a causal mask) is let attend to every
//! key instead, as transformers' SDPA path does. Its output is padding either way, but a fully masked row would
//! make the gradient disagree with the function: its scores are absorbed into the mask value, so the output does
//! not depend on them, while backward passes a gradient through them regardless.
//!
//! The masks are built on the device from `arange` comparisons, never element by element on the host.

use super::layer_error::LayerError;
use super::precision::compute_dtype;
use candle_core::{DType, Device, Result, Shape, Tensor, D};

/// An additive bias of shape `(batch or 1, 1, q_len, kv_len)` (or `(batch, 1, 1, kv_len)` when it does not
/// depend on the query), broadcast over heads, in the dtype the attention softmax runs in.
#[derive(Debug, Clone)]
pub struct AttentionMask {
    bias: Tensor,
}

impl AttentionMask {
    /// Causal attention of `q_len` queries over `kv_len` keys. When `kv_len > q_len` the queries are the last
    /// `q_len` positions (keys before them are a cached or shared prefix), so query `i` sees keys
    /// `0..=kv_len - q_len + i`.
    pub fn causal(q_len: usize, kv_len: usize, dtype: DType, device: &Device) -> Result<Self> {
        let allowed = causal_allowed(q_len, kv_len, device)?.reshape((1, 1, q_len, kv_len))?;
        Self::from_allowed(&allowed, dtype)
    }

    /// Bidirectional attention over a padded batch. `key_valid` has shape `(batch, kv_len)`, nonzero for real
    /// tokens and zero for padding (transformers' `attention_mask`), on either side.
    pub fn key_padding(key_valid: &Tensor, dtype: DType) -> Result<Self> {
        let (batch, kv_len) = key_valid_dims(key_valid)?;
        let allowed = key_valid_u8(key_valid)?.reshape((batch, 1, 1, kv_len))?;
        Self::from_allowed(&allowed, dtype)
    }

    /// Causal attention over a padded batch: the intersection of [`Self::causal`] and [`Self::key_padding`].
    /// Causality is by index in the padded row, which is right for left and right padding alike because padding
    /// does not reorder the real tokens.
    pub fn causal_key_padding(key_valid: &Tensor, q_len: usize, dtype: DType) -> Result<Self> {
        let (batch, kv_len) = key_valid_dims(key_valid)?;
        let causal =
            causal_allowed(q_len, kv_len, key_valid.device())?.reshape((1, 1, q_len, kv_len))?;
        let keys = key_valid_u8(key_valid)?.reshape((batch, 1, 1, kv_len))?;
        Self::from_allowed(&causal.broadcast_mul(&keys)?, dtype)
    }

    /// Per-row causal attention after a fully visible context, for `rows` rows of `q_len` queries over `kv_len`
    /// keys laid out as `[context, own tokens, padding]`: query `i` of row `r` sees keys
    /// `0..=context[r] + min(i, last[r])`, where `context` and `last` (the index of the row's last real query) are
    /// u32 tensors of shape `(rows)`. Query slots past `last` are padding and see the same keys as the last one.
    pub fn causal_after_context(
        context: &Tensor,
        last: &Tensor,
        q_len: usize,
        kv_len: usize,
        dtype: DType,
    ) -> Result<Self> {
        let rows = context.dim(0)?;
        let device = context.device();
        let queries = Tensor::arange(0u32, q_len as u32, device)?.reshape((1, q_len))?;
        let limit = queries
            .broadcast_minimum(&last.reshape((rows, 1))?)?
            .broadcast_add(&context.reshape((rows, 1))?)?
            .reshape((rows, 1, q_len, 1))?;
        let keys = Tensor::arange(0u32, kv_len as u32, device)?.reshape((1, 1, 1, kv_len))?;
        Self::from_allowed(&keys.broadcast_le(&limit)?, dtype)
    }

    /// The additive bias.
    pub fn bias(&self) -> &Tensor {
        &self.bias
    }

    /// Checks that the bias broadcasts to scores of shape `(batch, heads, q_len, kv_len)`: its batch is 1 or
    /// `batch`, its head dimension 1, its query dimension 1 or `q_len`, its key dimension `kv_len`.
    pub(crate) fn check_broadcasts_to(&self, scores: &Shape) -> Result<()> {
        let fits = |mask: usize, target: usize| mask == target || mask == 1;
        let ok = match (self.bias.dims(), scores.dims()) {
            (&[mb, mh, mq, mk], &[b, _, q, k]) => fits(mb, b) && mh == 1 && fits(mq, q) && mk == k,
            _ => false,
        };
        if !ok {
            return Err(LayerError::MaskShape {
                mask: self.bias.shape().clone(),
                scores: scores.clone(),
            }
            .into());
        }
        Ok(())
    }

    fn from_allowed(allowed: &Tensor, dtype: DType) -> Result<Self> {
        let attends_nothing = allowed.max_keepdim(D::Minus1)?.eq(0u8)?;
        let allowed = allowed.broadcast_maximum(&attends_nothing)?;
        let dtype = compute_dtype(dtype);
        let blocked = match dtype {
            DType::F64 => f64::MIN,
            _ => f64::from(f32::MIN),
        };
        let shape = allowed.shape();
        let open = Tensor::zeros((), dtype, allowed.device())?.broadcast_as(shape)?;
        let closed = Tensor::full(blocked, (), allowed.device())?
            .to_dtype(dtype)?
            .broadcast_as(shape)?;
        Ok(Self {
            bias: allowed.where_cond(&open, &closed)?,
        })
    }
}

/// `(q_len, kv_len)` u8, 1 where key `j <= kv_len - q_len + i`.
fn causal_allowed(q_len: usize, kv_len: usize, device: &Device) -> Result<Tensor> {
    if q_len > kv_len {
        return Err(LayerError::CausalLengths { q_len, kv_len }.into());
    }
    let offset = (kv_len - q_len) as u32;
    let query_pos = Tensor::arange(offset, offset + q_len as u32, device)?.reshape((q_len, 1))?;
    let key_pos = Tensor::arange(0u32, kv_len as u32, device)?.reshape((1, kv_len))?;
    key_pos.broadcast_le(&query_pos)
}

fn key_valid_dims(key_valid: &Tensor) -> Result<(usize, usize)> {
    key_valid.dims2().map_err(|_| {
        LayerError::KeyValidShape {
            got: key_valid.shape().clone(),
        }
        .into()
    })
}

fn key_valid_u8(key_valid: &Tensor) -> Result<Tensor> {
    key_valid.ne(&key_valid.zeros_like()?)
}
