//! The blocked algorithm written in candle tensor ops over tiles, so that it runs on any device candle has.
//!
//! On a GPU the tile products are cuBLAS matmuls and the softmax steps elementwise kernels; on the CPU the same
//! code runs through candle's CPU backend, which is how the tests check it (against the reference attention, for
//! every mask layout) without a GPU. It is the algorithm of [`super::forward`] and [`super::backward`] with the
//! tile loop over whole `(batch, head)` slabs instead of one pair at a time: per tile, `S = scale q k^T` plus the
//! tile's mask bias, the online softmax update, and in the backward pass `P = exp(S - lse)`, `dP = dO v^T`,
//! `dS = P * (dP - D)` and the three products. Everything is computed in f32 whatever the inputs' dtype.
//!
//! Query heads of one key/value group are stacked along the rows of a tile, `(batch, kv_heads, group * rows,
//! head_dim)`, so one batched matmul serves the whole group and `P^T dO` sums the group's share of `dV` (and
//! `dS^T Q` its share of `dK`) without a separate reduction.
//!
//! Masked scores get `-inf`, and each row's running maximum starts at [`FLOOR`] instead of `-inf`: a tile in
//! which a row sees no key then leaves the row's state untouched (`exp(-inf - FLOOR) = 0`) instead of producing
//! `exp(-inf + inf)`. Every row sees at least one key (the [`KeySpans`] rule), so the final maximum is a real
//! score.

use super::BlockSizes;
use crate::models::layers::key_spans::KeySpans;
use candle_core::{DType, Device, Result, Tensor, D};
use std::collections::BTreeSet;
use std::ops::Range;

/// The starting value of each row's running maximum: below any score, but finite.
const FLOOR: f64 = -1e30;

/// The bytes one `(batch, heads, queries, keys)` f32 score tile may take on a device: the tile loop holds up to
/// six tiles at once (scores, probabilities, their gradients), so this bounds its working set to 1.5 GiB, small
/// beside a training GPU's memory, while keeping tiles large enough that each kernel launch does real work (a
/// padded group of 17 prompts over 16 heads gets 256 x 256 tiles).
const DEVICE_TILE_BYTES: usize = 256 << 20;

/// Tile sizes for the tensor path: as large as [`DEVICE_TILE_BYTES`] allows up to 1024 x 1024, at least 64 x 64.
pub fn device_block_sizes(batch: usize, heads: usize) -> BlockSizes {
    let mut side = 1024;
    while side > 64 && batch * heads * side * side * 4 > DEVICE_TILE_BYTES {
        side /= 2;
    }
    BlockSizes {
        queries: side,
        keys: side,
    }
}

/// The sizes of one call, with `group` query heads per key/value head.
#[derive(Debug, Clone, Copy)]
pub(super) struct Slabs {
    batch: usize,
    kv_heads: usize,
    group: usize,
    q_len: usize,
    kv_len: usize,
    head_dim: usize,
}

impl Slabs {
    pub(super) fn of(q: &Tensor, k: &Tensor) -> Result<Self> {
        let (batch, heads, q_len, head_dim) = q.dims4()?;
        let (_, kv_heads, kv_len, _) = k.dims4()?;
        Ok(Self {
            batch,
            kv_heads,
            group: heads / kv_heads,
            q_len,
            kv_len,
            head_dim,
        })
    }

    /// `(batch, heads, q_len, x)` as f32 `(batch, kv_heads, group, q_len, x)`.
    fn grouped(&self, t: &Tensor) -> Result<Tensor> {
        let last = t.dim(D::Minus1)?;
        t.to_dtype(DType::F32)?
            .reshape((self.batch, self.kv_heads, self.group, self.q_len, last))
    }

    /// Rows `rows` of a grouped tensor as one tile, `(batch, kv_heads, group * rows, x)`.
    fn rows(&self, grouped: &Tensor, rows: &Range<usize>) -> Result<Tensor> {
        let last = grouped.dim(D::Minus1)?;
        grouped
            .narrow(3, rows.start, rows.len())?
            .contiguous()?
            .reshape((self.batch, self.kv_heads, self.group * rows.len(), last))
    }

    /// A tile's rows back in grouped form, ready to be concatenated along the query axis.
    fn ungroup(&self, tile: &Tensor, rows: usize) -> Result<Tensor> {
        let last = tile.dim(D::Minus1)?;
        tile.reshape((self.batch, self.kv_heads, self.group, rows, last))
    }

    /// Concatenated grouped tiles as `(batch, heads, q_len, x)`.
    fn heads_major(&self, tiles: &[Tensor]) -> Result<Tensor> {
        let joined = Tensor::cat(tiles, 3)?;
        let last = joined.dim(D::Minus1)?;
        joined.reshape((self.batch, self.kv_heads * self.group, self.q_len, last))
    }
}

/// The mask of each tile a query block visits.
struct TileMask<'a> {
    mask: &'a KeySpans,
    slabs: Slabs,
    device: &'a Device,
}

impl TileMask<'_> {
    /// The key blocks that some batch row's queries `rows` may see, in key order.
    fn key_blocks(&self, rows: &Range<usize>, block: usize) -> Vec<Range<usize>> {
        let batch_rows = self.mask.batch().min(self.slabs.batch);
        let starts: BTreeSet<usize> = (0..batch_rows)
            .flat_map(|b| self.mask.key_blocks(b, rows.clone(), block))
            .map(|keys| keys.start)
            .collect();
        starts
            .into_iter()
            .map(|start| start..(start + block).min(self.slabs.kv_len))
            .collect()
    }

    /// Scores `(batch, kv_heads, group * rows, keys)` with `-inf` where the mask hides a key, unchanged when the
    /// tile hides nothing.
    fn apply(&self, scores: Tensor, rows: &Range<usize>, keys: &Range<usize>) -> Result<Tensor> {
        let Some(bias) = self.bias(rows, keys)? else {
            return Ok(scores);
        };
        let s = &self.slabs;
        scores
            .reshape((s.batch, s.kv_heads, s.group, rows.len(), keys.len()))?
            .broadcast_add(&bias)?
            .reshape((s.batch, s.kv_heads, s.group * rows.len(), keys.len()))
    }

    /// The tile's bias `(mask batch, 1, 1, rows, keys)`: 0 where visible, `-inf` where hidden; `None` when every
    /// key of the tile is visible to every row.
    fn bias(&self, rows: &Range<usize>, keys: &Range<usize>) -> Result<Option<Tensor>> {
        let batch_rows = self.mask.batch().min(self.slabs.batch);
        let mut bias = Vec::with_capacity(batch_rows * rows.len() * keys.len());
        for b in 0..batch_rows {
            let valid = self.mask.key_valid(b);
            for query in rows.clone() {
                let row = self.mask.row(b, query);
                bias.extend(keys.clone().map(|key| {
                    if row.allows(key as u32, valid) {
                        0f32
                    } else {
                        f32::NEG_INFINITY
                    }
                }));
            }
        }
        if bias.iter().all(|&x| x == 0.0) {
            return Ok(None);
        }
        Tensor::from_vec(
            bias,
            (batch_rows, 1, 1, rows.len(), keys.len()),
            self.device,
        )
        .map(Some)
    }
}

/// The query blocks of `q_len` queries.
fn query_blocks(q_len: usize, block: usize) -> impl Iterator<Item = Range<usize>> {
    (0..q_len)
        .step_by(block)
        .map(move |start| start..(start + block).min(q_len))
}

/// Returns the f32 output `(batch, heads, q_len, head_dim)` and log-sum-exp `(batch, heads, q_len)`. The inputs
/// are read as values only: nothing is recorded for autograd.
pub(super) fn forward(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: &KeySpans,
    scale: f64,
    blocks: BlockSizes,
) -> Result<(Tensor, Tensor)> {
    let slabs = Slabs::of(q, k)?;
    let tiles = TileMask {
        mask,
        slabs,
        device: q.device(),
    };
    let q = slabs.grouped(&q.detach())?;
    let (k, v) = (
        k.detach().to_dtype(DType::F32)?,
        v.detach().to_dtype(DType::F32)?,
    );
    let (mut outs, mut sums) = (Vec::new(), Vec::new());
    for rows in query_blocks(slabs.q_len, blocks.queries) {
        let q_tile = slabs.rows(&q, &rows)?;
        let tile_rows = (slabs.batch, slabs.kv_heads, slabs.group * rows.len(), 1);
        let mut max = Tensor::full(FLOOR as f32, tile_rows, q.device())?;
        let mut sum = Tensor::zeros(tile_rows, DType::F32, q.device())?;
        let mut acc = q_tile.zeros_like()?;
        for keys in tiles.key_blocks(&rows, blocks.keys) {
            let k_tile = k.narrow(2, keys.start, keys.len())?.contiguous()?;
            let v_tile = v.narrow(2, keys.start, keys.len())?.contiguous()?;
            let scores = (q_tile.matmul(&k_tile.t()?)? * scale)?;
            let scores = tiles.apply(scores, &rows, &keys)?;
            let new_max = max.maximum(&scores.max_keepdim(D::Minus1)?)?;
            let probs = scores.broadcast_sub(&new_max)?.exp()?;
            let rescale = (max - &new_max)?.exp()?;
            sum = ((sum * &rescale)? + probs.sum_keepdim(D::Minus1)?)?;
            acc = (acc.broadcast_mul(&rescale)? + probs.matmul(&v_tile)?)?;
            max = new_max;
        }
        outs.push(slabs.ungroup(&acc.broadcast_div(&sum)?, rows.len())?);
        sums.push(slabs.ungroup(&(max + sum.log()?)?, rows.len())?);
    }
    let out = slabs.heads_major(&outs)?;
    let log_sum_exp = slabs.heads_major(&sums)?.squeeze(D::Minus1)?;
    Ok((out, log_sum_exp))
}

/// What the backward pass reads: the op's inputs, output and output gradient, and the forward's log-sum-exp.
pub(super) struct Saved<'a> {
    pub q: &'a Tensor,
    pub k: &'a Tensor,
    pub v: &'a Tensor,
    pub out: &'a Tensor,
    pub grad_out: &'a Tensor,
    pub log_sum_exp: &'a Tensor,
}

/// Gradients of q, k and v, each in its input's dtype.
pub(super) fn backward(
    saved: &Saved,
    mask: &KeySpans,
    scale: f64,
    blocks: BlockSizes,
) -> Result<(Tensor, Tensor, Tensor)> {
    let slabs = Slabs::of(saved.q, saved.k)?;
    let tiles = TileMask {
        mask,
        slabs,
        device: saved.q.device(),
    };
    let q = slabs.grouped(saved.q)?;
    let grad_out = slabs.grouped(saved.grad_out)?;
    let row_dot = (slabs.grouped(saved.out)? * &grad_out)?.sum_keepdim(D::Minus1)?;
    let log_sum_exp = slabs.grouped(&saved.log_sum_exp.unsqueeze(D::Minus1)?)?;
    let (k, v) = (saved.k.to_dtype(DType::F32)?, saved.v.to_dtype(DType::F32)?);
    let key_blocks = slabs.kv_len.div_ceil(blocks.keys);
    let mut grad_k: Vec<Option<Tensor>> = vec![None; key_blocks];
    let mut grad_v: Vec<Option<Tensor>> = vec![None; key_blocks];
    let mut grad_q = Vec::new();
    for rows in query_blocks(slabs.q_len, blocks.queries) {
        let q_tile = slabs.rows(&q, &rows)?;
        let grad_out_tile = slabs.rows(&grad_out, &rows)?;
        let row_dot = slabs.rows(&row_dot, &rows)?;
        let log_sum_exp = slabs.rows(&log_sum_exp, &rows)?;
        let mut grad_q_tile = q_tile.zeros_like()?;
        for keys in tiles.key_blocks(&rows, blocks.keys) {
            let k_tile = k.narrow(2, keys.start, keys.len())?.contiguous()?;
            let v_tile = v.narrow(2, keys.start, keys.len())?.contiguous()?;
            let scores = (q_tile.matmul(&k_tile.t()?)? * scale)?;
            let probs = tiles
                .apply(scores, &rows, &keys)?
                .broadcast_sub(&log_sum_exp)?
                .exp()?;
            let grad_probs = grad_out_tile.matmul(&v_tile.t()?)?;
            let grad_scores = (probs.clone() * grad_probs.broadcast_sub(&row_dot)?)?;
            grad_q_tile = (grad_q_tile + (grad_scores.matmul(&k_tile)? * scale)?)?;
            let index = keys.start / blocks.keys;
            add_to(
                &mut grad_k[index],
                (grad_scores.t()?.matmul(&q_tile)? * scale)?,
            )?;
            add_to(&mut grad_v[index], probs.t()?.matmul(&grad_out_tile)?)?;
        }
        grad_q.push(slabs.ungroup(&grad_q_tile, rows.len())?);
    }
    let grad_q = slabs.heads_major(&grad_q)?.to_dtype(saved.q.dtype())?;
    let grad_k = key_axis(grad_k, &slabs, blocks.keys, saved.q.device())?;
    let grad_v = key_axis(grad_v, &slabs, blocks.keys, saved.q.device())?;
    Ok((
        grad_q,
        grad_k.to_dtype(saved.k.dtype())?,
        grad_v.to_dtype(saved.v.dtype())?,
    ))
}

fn add_to(total: &mut Option<Tensor>, term: Tensor) -> Result<()> {
    *total = Some(match total.take() {
        Some(total) => (total + term)?,
        None => term,
    });
    Ok(())
}

/// Per key block gradients `(batch, kv_heads, keys, head_dim)` joined along the key axis, zeros for the blocks
/// no query saw.
fn key_axis(
    blocks: Vec<Option<Tensor>>,
    slabs: &Slabs,
    block: usize,
    device: &Device,
) -> Result<Tensor> {
    let parts = blocks
        .into_iter()
        .enumerate()
        .map(|(index, grad)| match grad {
            Some(grad) => Ok(grad),
            None => {
                let keys = block.min(slabs.kv_len - index * block);
                Tensor::zeros(
                    (slabs.batch, slabs.kv_heads, keys, slabs.head_dim),
                    DType::F32,
                    device,
                )
            }
        })
        .collect::<Result<Vec<_>>>()?;
    Tensor::cat(&parts, 2)
}
