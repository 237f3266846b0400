//! The backward pass: probabilities recomputed tile by tile from the saved log-sum-exp.
//!
//! With `P = exp(S - lse)` and `D_i = rowsum(dO_i * O_i)` (which equals `sum_j P_ij dP_ij`), the softmax backward
//! is `dS = P * (dP - D)` where `dP = dO V^T`; then `dQ = scale * dS K`, `dK = scale * dS^T Q`, `dV = P^T dO`.
//! Each tile contributes its share to all three, so nothing larger than a tile is ever formed.
//!
//! Work is split by `(batch, query head)` pair. Query heads that share a key/value head would race on its `dK`
//! and `dV`, so each pair accumulates into its own `(kv_len, head_dim)` buffers and the group's buffers are summed
//! afterwards.

use super::vector::{axpy, dot};
use super::{BlockSizes, Geometry, HeadInputs};
use crate::models::layers::key_spans::KeySpans;
use rayon::prelude::*;
use std::ops::Range;

/// What the forward pass leaves for the backward pass, as contiguous f32.
pub(super) struct Saved<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub out: &'a [f32],
    pub grad_out: &'a [f32],
    pub log_sum_exp: &'a [f32],
}

/// Gradients of q `(batch, heads, q_len, head_dim)`, k and v `(batch, kv_heads, kv_len, head_dim)`.
pub(super) struct Grads {
    pub q: Vec<f32>,
    pub k: Vec<f32>,
    pub v: Vec<f32>,
}

pub(super) fn backward(
    g: &Geometry,
    saved: &Saved,
    mask: &KeySpans,
    scale: f32,
    blocks: BlockSizes,
) -> Grads {
    let (q_size, kv_size) = (g.q_len * g.head_dim, g.kv_len * g.head_dim);
    let pairs = g.batch * g.heads;
    let mut grad_q = vec![0f32; pairs * q_size];
    let mut per_head_k = vec![0f32; pairs * kv_size];
    let mut per_head_v = vec![0f32; pairs * kv_size];
    grad_q
        .par_chunks_mut(q_size)
        .zip(per_head_k.par_chunks_mut(kv_size))
        .zip(per_head_v.par_chunks_mut(kv_size))
        .enumerate()
        .for_each(|(pair, ((grad_q, grad_k), grad_v))| {
            let head = HeadInputs::of(g, pair, saved.q, saved.k, saved.v);
            let rows = &RowsOf {
                out: &saved.out[pair * q_size..][..q_size],
                grad_out: &saved.grad_out[pair * q_size..][..q_size],
                log_sum_exp: &saved.log_sum_exp[pair * g.q_len..][..g.q_len],
            };
            let mut tile = Tile::new(blocks, g.head_dim);
            for start in (0..g.q_len).step_by(blocks.queries) {
                let queries = start..(start + blocks.queries).min(g.q_len);
                tile.load_rows(rows, queries.clone());
                for keys in mask.key_blocks(head.batch, queries.clone(), blocks.keys) {
                    let step = TileStep {
                        head: &head,
                        rows,
                        mask,
                        queries: queries.clone(),
                        keys,
                        scale,
                    };
                    tile.accumulate(&step, grad_q, grad_k, grad_v);
                }
            }
        });
    Grads {
        q: grad_q,
        k: sum_over_groups(g, &per_head_k),
        v: sum_over_groups(g, &per_head_v),
    }
}

/// One `(batch, head)` pair's saved per-query rows: `out` and `grad_out` `(q_len, head_dim)`, `log_sum_exp`
/// `(q_len)`.
struct RowsOf<'a> {
    out: &'a [f32],
    grad_out: &'a [f32],
    log_sum_exp: &'a [f32],
}

/// One tile of the backward pass: queries `queries` against keys `keys` of one `(batch, head)` pair.
struct TileStep<'a> {
    head: &'a HeadInputs<'a>,
    rows: &'a RowsOf<'a>,
    mask: &'a KeySpans,
    queries: Range<usize>,
    keys: Range<usize>,
    scale: f32,
}

/// Per-tile buffers, reused across tiles.
struct Tile {
    head_dim: usize,
    block_keys: usize,
    /// `D_i` of the current query block.
    delta: Vec<f32>,
    /// `(rows, block_keys)` probabilities, then `dS` in place; 0 where masked.
    probs: Vec<f32>,
    grad_scores: Vec<f32>,
}

impl Tile {
    fn new(blocks: BlockSizes, head_dim: usize) -> Self {
        Self {
            head_dim,
            block_keys: blocks.keys,
            delta: vec![0.0; blocks.queries],
            probs: vec![0.0; blocks.queries * blocks.keys],
            grad_scores: vec![0.0; blocks.queries * blocks.keys],
        }
    }

    /// Computes `D_i = rowsum(dO_i * O_i)` for a new query block.
    fn load_rows(&mut self, rows: &RowsOf, queries: Range<usize>) {
        let d = self.head_dim;
        for (delta, query) in self.delta.iter_mut().zip(queries) {
            *delta = dot(
                &rows.grad_out[query * d..][..d],
                &rows.out[query * d..][..d],
            );
        }
    }

    /// Adds the tile's share of `dQ` (rows of `grad_q`), `dK` and `dV` (rows of this pair's buffers).
    fn accumulate(
        &mut self,
        step: &TileStep,
        grad_q: &mut [f32],
        grad_k: &mut [f32],
        grad_v: &mut [f32],
    ) {
        let d = self.head_dim;
        let head = step.head;
        self.probabilities(step);
        for (r, query) in step.queries.clone().enumerate() {
            let grad_out = &step.rows.grad_out[query * d..][..d];
            let probs = &self.probs[r * self.block_keys..][..step.keys.len()];
            let grad_scores = &mut self.grad_scores[r * self.block_keys..][..step.keys.len()];
            for ((&p, ds), key) in probs
                .iter()
                .zip(grad_scores.iter_mut())
                .zip(step.keys.clone())
            {
                *ds = if p == 0.0 {
                    0.0
                } else {
                    p * (dot(grad_out, &head.v[key * d..][..d]) - self.delta[r])
                };
            }
        }
        for (r, query) in step.queries.clone().enumerate() {
            let (q_row, grad_out) = (
                &head.q[query * d..][..d],
                &step.rows.grad_out[query * d..][..d],
            );
            let probs = &self.probs[r * self.block_keys..][..step.keys.len()];
            let grad_scores = &self.grad_scores[r * self.block_keys..][..step.keys.len()];
            let grad_q_row = &mut grad_q[query * d..][..d];
            for ((&p, &ds), key) in probs.iter().zip(grad_scores).zip(step.keys.clone()) {
                if p == 0.0 {
                    continue;
                }
                axpy(p, grad_out, &mut grad_v[key * d..][..d]);
                axpy(step.scale * ds, &head.k[key * d..][..d], grad_q_row);
                axpy(step.scale * ds, q_row, &mut grad_k[key * d..][..d]);
            }
        }
    }

    /// `P = exp(scale * q k^T - lse)` for the tile, 0 where masked.
    fn probabilities(&mut self, step: &TileStep) {
        let d = self.head_dim;
        let head = step.head;
        let valid = step.mask.key_valid(head.batch);
        for (r, query) in step.queries.clone().enumerate() {
            let row_keys = step.mask.row(head.batch, query);
            let (q_row, lse) = (&head.q[query * d..][..d], step.rows.log_sum_exp[query]);
            let probs = &mut self.probs[r * self.block_keys..][..step.keys.len()];
            for (p, key) in probs.iter_mut().zip(step.keys.clone()) {
                *p = if row_keys.allows(key as u32, valid) {
                    (step.scale * dot(q_row, &head.k[key * d..][..d]) - lse).exp()
                } else {
                    0.0
                };
            }
        }
    }
}

/// Sums per-query-head `(batch, heads, kv_len, head_dim)` buffers over each key/value head's group.
fn sum_over_groups(g: &Geometry, per_head: &[f32]) -> Vec<f32> {
    let kv_size = g.kv_len * g.head_dim;
    let group = g.heads / g.kv_heads;
    let mut summed = vec![0f32; g.batch * g.kv_heads * kv_size];
    summed
        .par_chunks_mut(kv_size)
        .enumerate()
        .for_each(|(kv_pair, summed)| {
            let first_head = kv_pair * group;
            for head in first_head..first_head + group {
                axpy(1.0, &per_head[head * kv_size..][..kv_size], summed);
            }
        });
    summed
}
