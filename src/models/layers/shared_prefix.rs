//! Attention for groups of sequences that begin with the same tokens, with the shared prefix computed once.
//!
//! A reranker's training group is one query against 1 + N documents: every prompt starts with the same system
//! turn, instruction and query, and only the document part differs. In a causal decoder the prefix's hidden
//! states do not depend on what follows, so they can be computed once per group and every document's suffix
//! attends to the prefix's keys and values plus its own, the suffix positions continuing after the prefix. The
//! result equals running each whole sequence on its own; the gradient reaches the prefix through every suffix
//! (the keys and values are gathered with `index_select`, whose backward sums the copies).
//!
//! The packed row holds, group after group, the prefix then each suffix. The blocked kernel runs on the row
//! itself: a prefix token sees its prefix up to itself, a suffix token its group's prefix and its own suffix up to
//! itself, two spans of the row, so nothing is gathered or copied and key blocks outside the spans are skipped.
//! For the reference kernel attention runs as two padded blocks, gathered from the row like
//! [`crate::models::layers::packed::PackedAttention`]: the prefixes, each causal over itself, and the suffixes, each query seeing
//! its group's whole prefix and its own suffix causally. Padding each block to its own longest row keeps the cost
//! at `prefixes * P^2 + suffixes * S * (P + S)` instead of `suffixes * (P + S)^2`.

use std::ops::Range;

use crate::models::layers::attention::{scaled_dot_product_attention, AttentionKernel};
use crate::models::layers::key_spans::{KeySpans, Span};
use crate::models::layers::layer_error::LayerError;
use crate::models::layers::mask::AttentionMask;
use crate::models::layers::packed::{attend_row, check_tokens};
use candle_core::{DType, Device, Result, Tensor};

/// One group's tokens in the packed row: its shared prefix (may be empty) and each sequence's own suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixGroup {
    pub prefix: Range<usize>,
    pub suffixes: Vec<Range<usize>>,
}

/// The layout of one shared-prefix row, reusable across layers.
#[derive(Debug, Clone)]
pub struct SharedPrefixAttention {
    total: usize,
    blocks: Vec<Block>,
    /// `(total)` slot of each row token in the blocks' outputs, concatenated.
    from_slots: Tensor,
    /// The keys of each token of the row, for the blocked kernel.
    row: KeySpans,
}

impl SharedPrefixAttention {
    /// `groups` must cover `0..total` exactly once with non-empty suffixes. `dtype` is the model's dtype.
    pub fn new(groups: &[PrefixGroup], dtype: DType, device: &Device) -> Result<Self> {
        let total = check_cover(groups)?;
        let prefixes: Vec<Segment> = groups
            .iter()
            .filter(|g| !g.prefix.is_empty())
            .map(|g| Segment {
                context: 0..0,
                own: g.prefix.clone(),
            })
            .collect();
        let suffixes: Vec<Segment> = groups
            .iter()
            .flat_map(|g| {
                g.suffixes.iter().map(|s| Segment {
                    context: g.prefix.clone(),
                    own: s.clone(),
                })
            })
            .collect();
        let mut blocks = Vec::with_capacity(2);
        let mut from_slots = vec![0u32; total];
        let mut offset = 0;
        for segments in [prefixes, suffixes] {
            if segments.is_empty() {
                continue;
            }
            let block = Block::new(&segments, dtype, device)?;
            for (row, segment) in segments.iter().enumerate() {
                for (p, token) in segment.own.clone().enumerate() {
                    from_slots[token] = (offset + row * block.q_len + p) as u32;
                }
            }
            offset += block.rows * block.q_len;
            blocks.push(block);
        }
        Ok(Self {
            total,
            blocks,
            from_slots: Tensor::from_vec(from_slots, total, device)?,
            row: row_spans(groups, total)?,
        })
    }

    /// Total number of tokens in the row.
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
        for (name, xs) in [("q", q), ("k", k), ("v", v)] {
            check_tokens(name, xs, self.total)?;
        }
        if kernel.runs_blocked(q, k, v) {
            return attend_row(q, k, v, &self.row, scale, kernel);
        }
        let outs = self
            .blocks
            .iter()
            .map(|block| block.forward(q, k, v, scale))
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&outs, 0)?.index_select(&self.from_slots, 0)
    }
}

/// Each token's keys in the row: a prefix token its prefix up to itself; a suffix token its group's prefix and
/// its suffix up to itself.
fn row_spans(groups: &[PrefixGroup], total: usize) -> Result<KeySpans> {
    let mut rows = vec![[Span::default(); 2]; total];
    for group in groups {
        for token in group.prefix.clone() {
            rows[token] = [Span::new(group.prefix.start..token + 1), Span::default()];
        }
        for suffix in &group.suffixes {
            for token in suffix.clone() {
                rows[token] = [
                    Span::new(group.prefix.clone()),
                    Span::new(suffix.start..token + 1),
                ];
            }
        }
    }
    Ok(KeySpans::new(1, total, total, rows, None)?)
}

/// Queries `own`, attending to all of `context` and causally to `own`.
struct Segment {
    context: Range<usize>,
    own: Range<usize>,
}

/// Segments padded to one shape: `rows` rows of `q_len` queries over `kv_len` keys.
#[derive(Debug, Clone)]
struct Block {
    rows: usize,
    q_len: usize,
    kv_len: usize,
    /// `(rows * q_len)` row token of each query slot; padding slots repeat the row's last query.
    queries: Tensor,
    /// `(rows * kv_len)` row token of each key slot: context, then own tokens, then padding (masked).
    keys: Tensor,
    mask: AttentionMask,
}

impl Block {
    fn new(segments: &[Segment], dtype: DType, device: &Device) -> Result<Self> {
        let rows = segments.len();
        let q_len = segments.iter().map(|s| s.own.len()).max().unwrap_or(0);
        let kv_len = segments
            .iter()
            .map(|s| s.context.len() + s.own.len())
            .max()
            .unwrap_or(0);
        let mut queries = Vec::with_capacity(rows * q_len);
        let mut keys = Vec::with_capacity(rows * kv_len);
        let mut context = Vec::with_capacity(rows);
        let mut last = Vec::with_capacity(rows);
        for segment in segments {
            let own = segment.own.len();
            queries.extend((0..q_len).map(|p| (segment.own.start + p.min(own - 1)) as u32));
            let real = segment.context.clone().chain(segment.own.clone());
            let padding = std::iter::repeat(segment.own.start);
            keys.extend(real.chain(padding).take(kv_len).map(|t| t as u32));
            context.push(segment.context.len() as u32);
            last.push((own - 1) as u32);
        }
        let context = Tensor::from_vec(context, rows, device)?;
        let last = Tensor::from_vec(last, rows, device)?;
        Ok(Self {
            rows,
            q_len,
            kv_len,
            queries: Tensor::from_vec(queries, rows * q_len, device)?,
            keys: Tensor::from_vec(keys, rows * kv_len, device)?,
            mask: AttentionMask::causal_after_context(&context, &last, q_len, kv_len, dtype)?,
        })
    }

    /// `(rows * q_len, heads, head_dim)` in slot order.
    fn forward(&self, q: &Tensor, k: &Tensor, v: &Tensor, scale: f64) -> Result<Tensor> {
        let gather = |xs: &Tensor, index: &Tensor, len: usize| -> Result<Tensor> {
            let (_, heads, head_dim) = xs.dims3()?;
            xs.index_select(index, 0)?
                .reshape((self.rows, len, heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let out = scaled_dot_product_attention(
            &gather(q, &self.queries, self.q_len)?,
            &gather(k, &self.keys, self.kv_len)?,
            &gather(v, &self.keys, self.kv_len)?,
            Some(&self.mask),
            scale,
        )?;
        let (_, heads, _, head_dim) = out.dims4()?;
        out.transpose(1, 2)?
            .reshape((self.rows * self.q_len, heads, head_dim))
    }
}

/// Checks that the groups' ranges tile `0..total` in order with non-empty suffixes, and returns `total`.
fn check_cover(groups: &[PrefixGroup]) -> Result<usize> {
    let mut next = 0;
    for (index, group) in groups.iter().enumerate() {
        let bad = |reason: String| -> Result<usize> {
            Err(LayerError::PrefixGroups {
                group: index,
                reason,
            }
            .into())
        };
        if group.suffixes.is_empty() {
            return bad("it has no suffix".into());
        }
        for range in std::iter::once(&group.prefix).chain(&group.suffixes) {
            if range.start != next || range.end < range.start {
                return bad(format!("range {range:?} does not start at token {next}"));
            }
            next = range.end;
        }
        if let Some(empty) = group.suffixes.iter().find(|s| s.is_empty()) {
            return bad(format!("suffix {empty:?} is empty"));
        }
    }
    if next == 0 || next > u32::MAX as usize {
        return Err(LayerError::PrefixGroups {
            group: groups.len(),
            reason: format!("the row has {next} tokens"),
        }
        .into());
    }
    Ok(next)
}
