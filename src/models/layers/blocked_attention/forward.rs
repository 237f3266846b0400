//! The forward pass: an online softmax over key blocks.
//!
//! Each query row keeps a running maximum `m`, a running sum `l` of `exp(s - m)` and an unnormalised output
//! `acc = sum exp(s - m) v`. A new block of scores raises `m` to `m'`, so what was accumulated is rescaled by
//! `exp(m - m')` before the block's terms are added. After the last block `out = acc / l` and the row's
//! log-sum-exp is `m + ln l`, which is all the backward pass needs to recompute any probability exactly.

use super::vector::{axpy, dot};
use super::{BlockSizes, Geometry, HeadInputs};
use crate::models::layers::key_spans::KeySpans;
use rayon::prelude::*;

/// Returns the output `(batch, heads, q_len, head_dim)` and the log-sum-exp `(batch, heads, q_len)`.
pub(super) fn forward(
    g: &Geometry,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    mask: &KeySpans,
    scale: f32,
    blocks: BlockSizes,
) -> (Vec<f32>, Vec<f32>) {
    let mut out = vec![0f32; g.batch * g.heads * g.q_len * g.head_dim];
    let mut log_sum_exp = vec![0f32; g.batch * g.heads * g.q_len];
    out.par_chunks_mut(g.q_len * g.head_dim)
        .zip(log_sum_exp.par_chunks_mut(g.q_len))
        .enumerate()
        .for_each(|(pair, (out, log_sum_exp))| {
            let head = HeadInputs::of(g, pair, q, k, v);
            let mut tile = Tile::new(blocks, g.head_dim);
            for start in (0..g.q_len).step_by(blocks.queries) {
                let rows = start..(start + blocks.queries).min(g.q_len);
                tile.reset(rows.len());
                for keys in mask.key_blocks(head.batch, rows.clone(), blocks.keys) {
                    tile.add_keys(&head, mask, rows.clone(), keys, scale);
                }
                let d = g.head_dim;
                tile.finish(
                    &mut out[rows.start * d..rows.end * d],
                    &mut log_sum_exp[rows],
                );
            }
        });
    (out, log_sum_exp)
}

/// One query block's running state, reused across blocks.
struct Tile {
    head_dim: usize,
    block_keys: usize,
    rows: usize,
    /// `(rows, block_keys)` scores of the current key block; `-inf` where masked.
    scores: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
    /// `(rows, head_dim)` unnormalised output.
    acc: Vec<f32>,
}

impl Tile {
    fn new(blocks: BlockSizes, head_dim: usize) -> Self {
        Self {
            head_dim,
            block_keys: blocks.keys,
            rows: 0,
            scores: vec![0.0; blocks.queries * blocks.keys],
            max: vec![0.0; blocks.queries],
            sum: vec![0.0; blocks.queries],
            acc: vec![0.0; blocks.queries * head_dim],
        }
    }

    fn reset(&mut self, rows: usize) {
        self.rows = rows;
        self.max[..rows].fill(f32::NEG_INFINITY);
        self.sum[..rows].fill(0.0);
        self.acc[..rows * self.head_dim].fill(0.0);
    }

    /// Folds keys `keys` into queries `queries` (absolute positions).
    fn add_keys(
        &mut self,
        head: &HeadInputs,
        mask: &KeySpans,
        queries: std::ops::Range<usize>,
        keys: std::ops::Range<usize>,
        scale: f32,
    ) {
        let d = self.head_dim;
        let valid = mask.key_valid(head.batch);
        for (r, query) in queries.enumerate() {
            let row_keys = mask.row(head.batch, query);
            let q_row = &head.q[query * d..][..d];
            let scores = &mut self.scores[r * self.block_keys..][..keys.len()];
            for (score, key) in scores.iter_mut().zip(keys.clone()) {
                *score = if row_keys.allows(key as u32, valid) {
                    scale * dot(q_row, &head.k[key * d..][..d])
                } else {
                    f32::NEG_INFINITY
                };
            }
            let block_max = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            if block_max == f32::NEG_INFINITY {
                continue;
            }
            let new_max = self.max[r].max(block_max);
            let rescale = (self.max[r] - new_max).exp();
            let acc = &mut self.acc[r * d..][..d];
            acc.iter_mut().for_each(|a| *a *= rescale);
            let mut sum = self.sum[r] * rescale;
            for (&score, key) in scores.iter().zip(keys.clone()) {
                if score != f32::NEG_INFINITY {
                    let p = (score - new_max).exp();
                    sum += p;
                    axpy(p, &head.v[key * d..][..d], acc);
                }
            }
            self.sum[r] = sum;
            self.max[r] = new_max;
        }
    }

    /// Writes `acc / sum` and `max + ln(sum)` for the block's rows. Every row saw at least one key: a row with no
    /// visible key was given all keys by [`KeySpans`].
    fn finish(&self, out: &mut [f32], log_sum_exp: &mut [f32]) {
        let d = self.head_dim;
        for r in 0..self.rows {
            let inv = 1.0 / self.sum[r];
            for (o, a) in out[r * d..][..d].iter_mut().zip(&self.acc[r * d..][..d]) {
                *o = a * inv;
            }
            log_sum_exp[r] = self.max[r] + self.sum[r].ln();
        }
    }
}
