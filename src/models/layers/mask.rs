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
//! A mask is kept as the description it was built from and turned, on first use, into what the kernel at hand
//! needs: the dense bias for [`crate::models::layers::attention::scaled_dot_product_attention`] (built on the device from
//! `arange` comparisons, never element by element on the host), or [`KeySpans`] for
//! [`crate::models::layers::blocked_attention`] (built on the host from per-row numbers, `O(rows + keys)`). A model that runs
//! blocked never allocates the `(q_len, kv_len)` bias.

use crate::models::formats::precision::compute_dtype;
use crate::models::layers::key_spans::{KeySpans, Span};
use crate::models::layers::layer_error::LayerError;
use candle_core::{DType, Device, Result, Shape, Tensor, D};
use std::sync::{Arc, OnceLock};

/// An additive bias of shape `(batch or 1, 1, q_len, kv_len)` (or `(batch, 1, 1, kv_len)` when it does not
/// depend on the query), broadcast over heads, in the dtype the attention softmax runs in; or the same mask as
/// [`KeySpans`]. Cloning shares the forms already built.
#[derive(Debug, Clone)]
pub struct AttentionMask {
    inner: Arc<Forms>,
}

#[derive(Debug)]
struct Forms {
    pattern: Pattern,
    dtype: DType,
    bias: OnceLock<Tensor>,
    spans: OnceLock<KeySpans>,
}

/// What a mask was built from.
#[derive(Debug)]
enum Pattern {
    Causal {
        q_len: usize,
        kv_len: usize,
        device: Device,
    },
    KeyPadding {
        key_valid: Tensor,
    },
    CausalKeyPadding {
        key_valid: Tensor,
        q_len: usize,
    },
    CausalAfterContext {
        context: Tensor,
        last: Tensor,
        q_len: usize,
        kv_len: usize,
    },
}

impl AttentionMask {
    /// Causal attention of `q_len` queries over `kv_len` keys. When `kv_len > q_len` the queries are the last
    /// `q_len` positions (keys before them are a cached or shared prefix), so query `i` sees keys
    /// `0..=kv_len - q_len + i`.
    pub fn causal(q_len: usize, kv_len: usize, dtype: DType, device: &Device) -> Result<Self> {
        check_causal(q_len, kv_len)?;
        Ok(Self::new(
            Pattern::Causal {
                q_len,
                kv_len,
                device: device.clone(),
            },
            dtype,
        ))
    }

    /// Bidirectional attention over a padded batch. `key_valid` has shape `(batch, kv_len)`, nonzero for real
    /// tokens and zero for padding (transformers' `attention_mask`), on either side.
    pub fn key_padding(key_valid: &Tensor, dtype: DType) -> Result<Self> {
        key_valid_dims(key_valid)?;
        let key_valid = key_valid_u8(key_valid)?;
        Ok(Self::new(Pattern::KeyPadding { key_valid }, dtype))
    }

    /// Causal attention over a padded batch: the intersection of [`Self::causal`] and [`Self::key_padding`].
    /// Causality is by index in the padded row, which is right for left and right padding alike because padding
    /// does not reorder the real tokens.
    pub fn causal_key_padding(key_valid: &Tensor, q_len: usize, dtype: DType) -> Result<Self> {
        let (_, kv_len) = key_valid_dims(key_valid)?;
        check_causal(q_len, kv_len)?;
        let key_valid = key_valid_u8(key_valid)?;
        Ok(Self::new(
            Pattern::CausalKeyPadding { key_valid, q_len },
            dtype,
        ))
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
        Ok(Self::new(
            Pattern::CausalAfterContext {
                context: context.clone(),
                last: last.clone(),
                q_len,
                kv_len,
            },
            dtype,
        ))
    }

    fn new(pattern: Pattern, dtype: DType) -> Self {
        Self {
            inner: Arc::new(Forms {
                pattern,
                dtype: compute_dtype(dtype),
                bias: OnceLock::new(),
                spans: OnceLock::new(),
            }),
        }
    }

    /// The additive bias, built on first use.
    pub fn bias(&self) -> Result<&Tensor> {
        if let Some(bias) = self.inner.bias.get() {
            return Ok(bias);
        }
        let bias = from_allowed(&self.allowed()?, self.inner.dtype)?;
        Ok(self.inner.bias.get_or_init(|| bias))
    }

    /// The mask as [`KeySpans`] for attention of `batch` rows of `q_len` queries over `kv_len` keys, built on
    /// first use.
    pub fn key_spans(&self, batch: usize, q_len: usize, kv_len: usize) -> Result<&KeySpans> {
        self.check_broadcasts_to(&Shape::from((batch, 1, q_len, kv_len)))?;
        if let Some(spans) = self.inner.spans.get() {
            return Ok(spans);
        }
        let spans = self.build_spans()?;
        Ok(self.inner.spans.get_or_init(|| spans))
    }

    /// The bias's shape, known without building it.
    fn dims(&self) -> Result<[usize; 4]> {
        Ok(match &self.inner.pattern {
            Pattern::Causal { q_len, kv_len, .. } => [1, 1, *q_len, *kv_len],
            Pattern::KeyPadding { key_valid } => {
                let (batch, kv_len) = key_valid.dims2()?;
                [batch, 1, 1, kv_len]
            }
            Pattern::CausalKeyPadding { key_valid, q_len } => {
                let (batch, kv_len) = key_valid.dims2()?;
                [batch, 1, *q_len, kv_len]
            }
            Pattern::CausalAfterContext {
                context,
                q_len,
                kv_len,
                ..
            } => [context.dim(0)?, 1, *q_len, *kv_len],
        })
    }

    /// Checks that the bias broadcasts to scores of shape `(batch, heads, q_len, kv_len)`: its batch is 1 or
    /// `batch`, its head dimension 1, its query dimension 1 or `q_len`, its key dimension `kv_len`.
    pub(crate) fn check_broadcasts_to(&self, scores: &Shape) -> Result<()> {
        let fits = |mask: usize, target: usize| mask == target || mask == 1;
        let dims = self.dims()?;
        let ok = match (dims, scores.dims()) {
            ([mb, mh, mq, mk], &[b, _, q, k]) => fits(mb, b) && mh == 1 && fits(mq, q) && mk == k,
            _ => false,
        };
        if !ok {
            return Err(LayerError::MaskShape {
                mask: Shape::from(dims.to_vec()),
                scores: scores.clone(),
            }
            .into());
        }
        Ok(())
    }

    /// u8 of the bias's shape, 1 where a query may attend to a key (before the attends-to-nothing rule).
    fn allowed(&self) -> Result<Tensor> {
        match &self.inner.pattern {
            Pattern::Causal {
                q_len,
                kv_len,
                device,
            } => causal_allowed(*q_len, *kv_len, device)?.reshape((1, 1, *q_len, *kv_len)),
            Pattern::KeyPadding { key_valid } => {
                let (batch, kv_len) = key_valid.dims2()?;
                key_valid.reshape((batch, 1, 1, kv_len))
            }
            Pattern::CausalKeyPadding { key_valid, q_len } => {
                let (batch, kv_len) = key_valid.dims2()?;
                let causal = causal_allowed(*q_len, kv_len, key_valid.device())?
                    .reshape((1, 1, *q_len, kv_len))?;
                causal.broadcast_mul(&key_valid.reshape((batch, 1, 1, kv_len))?)
            }
            Pattern::CausalAfterContext {
                context,
                last,
                q_len,
                kv_len,
            } => {
                let rows = context.dim(0)?;
                let device = context.device();
                let queries = Tensor::arange(0u32, *q_len as u32, device)?.reshape((1, *q_len))?;
                let limit = queries
                    .broadcast_minimum(&last.reshape((rows, 1))?)?
                    .broadcast_add(&context.reshape((rows, 1))?)?
                    .reshape((rows, 1, *q_len, 1))?;
                let keys =
                    Tensor::arange(0u32, *kv_len as u32, device)?.reshape((1, 1, 1, *kv_len))?;
                keys.broadcast_le(&limit)
            }
        }
    }

    fn build_spans(&self) -> Result<KeySpans> {
        let causal = |end: usize| [Span::new(0..end), Span::default()];
        let spans = match &self.inner.pattern {
            Pattern::Causal { q_len, kv_len, .. } => {
                let offset = kv_len - q_len;
                let rows = (0..*q_len).map(|i| causal(offset + i + 1)).collect();
                KeySpans::new(1, *q_len, *kv_len, rows, None)
            }
            Pattern::KeyPadding { key_valid } => {
                let (batch, kv_len) = key_valid.dims2()?;
                let rows = vec![causal(kv_len); batch];
                KeySpans::new(batch, 1, kv_len, rows, Some(host_flags(key_valid)?))
            }
            Pattern::CausalKeyPadding { key_valid, q_len } => {
                let (batch, kv_len) = key_valid.dims2()?;
                let offset = kv_len - q_len;
                let rows = (0..batch)
                    .flat_map(|_| (0..*q_len).map(|i| causal(offset + i + 1)))
                    .collect();
                KeySpans::new(batch, *q_len, kv_len, rows, Some(host_flags(key_valid)?))
            }
            Pattern::CausalAfterContext {
                context,
                last,
                q_len,
                kv_len,
            } => {
                let (context, last) = (context.to_vec1::<u32>()?, last.to_vec1::<u32>()?);
                let rows = context
                    .iter()
                    .zip(&last)
                    .flat_map(|(&context, &last)| {
                        (0..*q_len)
                            .map(move |i| causal(context as usize + i.min(last as usize) + 1))
                    })
                    .collect();
                KeySpans::new(context.len(), *q_len, *kv_len, rows, None)
            }
        };
        Ok(spans?)
    }
}

/// A `(batch, kv_len)` u8 tensor's entries as flags, batch-major.
fn host_flags(key_valid: &Tensor) -> Result<Vec<bool>> {
    Ok(key_valid
        .flatten_all()?
        .to_vec1::<u8>()?
        .into_iter()
        .map(|v| v != 0)
        .collect())
}

/// The bias for `allowed`, with every query that may attend to no key let attend to all of them.
fn from_allowed(allowed: &Tensor, dtype: DType) -> Result<Tensor> {
    let attends_nothing = allowed.max_keepdim(D::Minus1)?.eq(0u8)?;
    let allowed = allowed.broadcast_maximum(&attends_nothing)?;
    let blocked = match dtype {
        DType::F64 => f64::MIN,
        _ => f64::from(f32::MIN),
    };
    let shape = allowed.shape();
    let open = Tensor::zeros((), dtype, allowed.device())?.broadcast_as(shape)?;
    let closed = Tensor::full(blocked, (), allowed.device())?
        .to_dtype(dtype)?
        .broadcast_as(shape)?;
    allowed.where_cond(&open, &closed)
}

fn check_causal(q_len: usize, kv_len: usize) -> Result<()> {
    if q_len > kv_len {
        return Err(LayerError::CausalLengths { q_len, kv_len }.into());
    }
    Ok(())
}

/// `(q_len, kv_len)` u8, 1 where key `j <= kv_len - q_len + i`.
fn causal_allowed(q_len: usize, kv_len: usize, device: &Device) -> Result<Tensor> {
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
