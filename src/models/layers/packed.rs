//! Attention over packed variable-length sequences, described by cumulative lengths (`cu_seqlens`) as in
//! flash-attn's varlen API.
//!
//! Several sequences are concatenated into one `(total_tokens, heads, head_dim)` row; each token attends only
//! within its own sequence, causally or not. The decoder packs a group's documents this way instead of padding
//! them, the vision tower packs the images of a batch, and Qwen2.5-VL's window attention is the same thing with
//! one "sequence" per window.
//!
//! The blocked kernel runs on the row itself: each token's keys are one span (its sequence, or its sequence up
//! to itself), so [`blocked_attention`] skips every key block outside the diagonal blocks and the cost is
//! `sum(len^2)` with no padding and no copies. The reference kernel cannot skip: masking a `(total, total)` score
//! matrix block-diagonally would cost `total^2` per head, more than padding. For it the tokens are gathered into a
//! padded `(sequences, max_len)` batch with `index_select` (whose backward is an `index_add`, linear in the
//! tokens), attended with [`scaled_dot_product_attention`], and gathered back, so the cost is
//! `sequences * max_len^2`. Both layouts are built once per batch in [`PackedAttention::new`] and shared by every
//! layer.

use crate::models::layers::attention::{scaled_dot_product_attention, AttentionKernel};
use crate::models::layers::key_spans::{KeySpans, Span};
use crate::models::layers::layer_error::LayerError;
use crate::models::layers::mask::AttentionMask;
use candle_core::{DType, Device, Result, Tensor};

/// The layout of one packed batch, reusable across layers.
#[derive(Debug, Clone)]
pub struct PackedAttention {
    total: usize,
    sequences: usize,
    max_len: usize,
    /// `(sequences * max_len)` token index for each padded slot; padding slots point at their sequence's first
    /// token and are masked out as keys.
    to_padded: Tensor,
    /// `(total)` padded slot of each token.
    from_padded: Tensor,
    mask: AttentionMask,
    /// The keys of each token of the row, for the blocked kernel.
    row: KeySpans,
}

impl PackedAttention {
    /// `cu_seqlens` is `[0, len_0, len_0 + len_1, ..., total]`. Zero-length sequences (repeated offsets) are
    /// allowed and ignored. `dtype` is the model's dtype (the mask is built in its softmax dtype).
    pub fn new(cu_seqlens: &[usize], causal: bool, dtype: DType, device: &Device) -> Result<Self> {
        let lengths = sequence_lengths(cu_seqlens)?;
        let total = cu_seqlens[cu_seqlens.len() - 1];
        let sequences = lengths.len();
        let max_len = lengths.iter().map(|&(_, len)| len).max().unwrap_or(0);

        let mut to_padded = Vec::with_capacity(sequences * max_len);
        let mut from_padded = Vec::with_capacity(total);
        for (seq, &(start, len)) in lengths.iter().enumerate() {
            let slot0 = seq * max_len;
            to_padded.extend((0..max_len).map(|p| (start + if p < len { p } else { 0 }) as u32));
            from_padded.extend((0..len).map(|p| (slot0 + p) as u32));
        }
        let row = row_spans(&lengths, total, causal)?;
        let mask = if causal {
            AttentionMask::causal(max_len, max_len, dtype, device)?
        } else {
            let lens: Vec<u32> = lengths.iter().map(|&(_, len)| len as u32).collect();
            let lens = Tensor::from_vec(lens, (sequences, 1), device)?;
            let slots = Tensor::arange(0u32, max_len as u32, device)?.reshape((1, max_len))?;
            AttentionMask::key_padding(&slots.broadcast_lt(&lens)?, dtype)?
        };
        Ok(Self {
            total,
            sequences,
            max_len,
            to_padded: Tensor::from_vec(to_padded, sequences * max_len, device)?,
            from_padded: Tensor::from_vec(from_padded, total, device)?,
            mask,
            row,
        })
    }

    /// Total number of tokens in the packed row.
    pub fn total_tokens(&self) -> usize {
        self.total
    }

    /// Attention for `q` of shape `(total, heads, head_dim)` and `k`, `v` of shape `(total, kv_heads, head_dim)`;
    /// returns `(total, heads, head_dim)`. See [`scaled_dot_product_attention`] for heads and `scale`.
    pub fn forward(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        scale: f64,
        kernel: AttentionKernel,
    ) -> Result<Tensor> {
        if kernel.runs_blocked(q, k, v) {
            for (name, xs) in [("q", q), ("k", k), ("v", v)] {
                check_tokens(name, xs, self.total)?;
            }
            return attend_row(q, k, v, &self.row, scale, kernel);
        }
        let q_padded = self.pad(q, "q")?;
        let k_padded = self.pad(k, "k")?;
        let v_padded = self.pad(v, "v")?;
        let out =
            scaled_dot_product_attention(&q_padded, &k_padded, &v_padded, Some(&self.mask), scale)?;
        let (_, heads, _, head_dim) = out.dims4()?;
        out.transpose(1, 2)?
            .reshape((self.sequences * self.max_len, heads, head_dim))?
            .index_select(&self.from_padded, 0)
    }

    /// `(total, heads, head_dim)` to `(sequences, heads, max_len, head_dim)`.
    fn pad(&self, xs: &Tensor, name: &'static str) -> Result<Tensor> {
        let (_, heads, head_dim) = xs.dims3()?;
        check_tokens(name, xs, self.total)?;
        xs.index_select(&self.to_padded, 0)?
            .reshape((self.sequences, self.max_len, heads, head_dim))?
            .transpose(1, 2)?
            .contiguous()
    }
}

/// Blocked attention on `kernel` over one row of tokens, `(total, heads, head_dim)` in and out.
pub(crate) fn attend_row(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    row: &KeySpans,
    scale: f64,
    kernel: AttentionKernel,
) -> Result<Tensor> {
    let heads_first = |xs: &Tensor| xs.transpose(0, 1)?.unsqueeze(0);
    kernel
        .attend_blocked(
            &heads_first(q)?,
            &heads_first(k)?,
            &heads_first(v)?,
            Some(row),
            scale,
        )?
        .squeeze(0)?
        .transpose(0, 1)
}

/// Each token's keys: its own sequence, up to itself when `causal`.
fn row_spans(lengths: &[(usize, usize)], total: usize, causal: bool) -> Result<KeySpans> {
    let mut rows = vec![[Span::default(); 2]; total];
    for &(start, len) in lengths {
        for (position, row) in rows[start..start + len].iter_mut().enumerate() {
            let end = start + if causal { position + 1 } else { len };
            row[0] = Span::new(start..end);
        }
    }
    Ok(KeySpans::new(1, total, total, rows, None)?)
}

/// `(start, len)` of each non-empty sequence.
fn sequence_lengths(cu_seqlens: &[usize]) -> Result<Vec<(usize, usize)>> {
    let invalid = |reason| LayerError::CuSeqlens {
        cu_seqlens: cu_seqlens.to_vec(),
        reason,
    };
    match cu_seqlens.first() {
        None => return Err(invalid("it is empty").into()),
        Some(&first) if first != 0 => return Err(invalid("it must start at 0").into()),
        Some(_) => {}
    }
    if cu_seqlens.windows(2).any(|w| w[1] < w[0]) {
        return Err(invalid("offsets must not decrease").into());
    }
    let lengths: Vec<(usize, usize)> = cu_seqlens
        .windows(2)
        .map(|w| (w[0], w[1] - w[0]))
        .filter(|&(_, len)| len > 0)
        .collect();
    if lengths.is_empty() {
        return Err(invalid("it describes no tokens").into());
    }
    if cu_seqlens[cu_seqlens.len() - 1] > u32::MAX as usize {
        return Err(invalid("more than u32::MAX tokens").into());
    }
    Ok(lengths)
}

/// Checks that `xs`, named `name` in the error, holds one row per token of a packed row of `total` tokens.
pub(crate) fn check_tokens(name: &'static str, xs: &Tensor, total: usize) -> Result<()> {
    let tokens = xs.dim(0)?;
    if tokens != total {
        return Err(LayerError::PackedTokens {
            tensor: name,
            got: tokens,
            expected: total,
        }
        .into());
    }
    Ok(())
}
