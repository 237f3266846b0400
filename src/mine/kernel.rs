//! The inner-product kernel behind exact top-k.
//!
//! Every score is one fused multiply-add chain over the dimensions in ascending order, started from +0:
//! `acc = fma(d[k], q[k], acc)` for k = 0, 1, ..., dim - 1. Each step rounds exactly once, so the result depends
//! only on the two vectors: not on the tile a pair lands in, the chunk or shard its document sits in, the query
//! block, the thread, or whether the AVX-512, AVX2 or portable path computed it. A BLAS sgemm does not promise
//! that (its depth blocking follows the cache sizes of the machine and it switches to gemv for one query), and
//! mining needs it: chunked, sharded and single-pass runs must rank the same documents with the same scores,
//! ties included, on every host of a job array.
//!
//! The kernel is a register-tiled outer product: [`TILE_ROWS`] documents (broadcast side, packed once per corpus
//! chunk) by [`PANEL`] queries (vector side, packed once per query block), both stored dimension-major so that
//! each is one sequential stream. The dimension is walked in blocks of [`DEPTH`] so that a query panel stays in
//! L1 while the document tiles stream past; between blocks a partial sum is parked in the score buffer and
//! reloaded, which continues the same chain exactly.

use rayon::prelude::*;

use super::matrix::Matrix;

/// Queries per packed panel: three AVX-512 vectors, six AVX2 vectors.
pub(crate) const PANEL: usize = 48;
/// Documents per register tile.
const TILE_ROWS: usize = 8;
/// Dimensions per pass over a query panel (PANEL x DEPTH f32 = 24 KiB, which stays in L1 while the document
/// tiles stream past). Tile shape and depth were measured against the alternatives on the §10 shapes.
const DEPTH: usize = 128;

/// The instruction set the kernel runs with, detected once per top-k call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Isa {
    #[cfg(target_arch = "x86_64")]
    Avx512,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    Portable,
}

impl Isa {
    /// The fastest path this CPU supports.
    pub(crate) fn detect() -> Self {
        Self::supported()[0]
    }

    /// Every path this CPU can run, fastest first (tests check that they agree bit for bit).
    pub(crate) fn supported() -> Vec<Self> {
        let mut all = Vec::new();
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected;
            if is_x86_feature_detected!("avx512f") {
                all.push(Isa::Avx512);
            }
            if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                all.push(Isa::Avx2);
            }
        }
        all.push(Isa::Portable);
        all
    }
}

/// A block of queries packed for the kernel: panels of [`PANEL`] queries, each stored dimension-major
/// (`PANEL` values for dimension 0, then for dimension 1, ...), zero-padded up to a whole panel.
pub(crate) struct PackedQueries {
    data: Vec<f32>,
    dim: usize,
    width: usize,
}

impl PackedQueries {
    pub(crate) fn pack(queries: &Matrix<'_>) -> Self {
        let dim = queries.dim();
        let width = queries.rows().div_ceil(PANEL) * PANEL;
        let mut data = vec![0.0f32; width * dim];
        for query in 0..queries.rows() {
            let (panel, lane) = (query / PANEL, query % PANEL);
            let base = panel * PANEL * dim + lane;
            for (k, &value) in queries.row(query).iter().enumerate() {
                data[base + k * PANEL] = value;
            }
        }
        Self { data, dim, width }
    }

    /// Queries including the padding: the row length of a score block.
    pub(crate) fn width(&self) -> usize {
        self.width
    }

    fn panel(&self, index: usize) -> &[f32] {
        &self.data[index * PANEL * self.dim..(index + 1) * PANEL * self.dim]
    }
}

/// A chunk of documents packed for the kernel: tiles of [`TILE_ROWS`] documents, each stored dimension-major
/// (`TILE_ROWS` values for dimension 0, then for dimension 1, ...), zero-padded up to a whole tile. The buffer is
/// reused from chunk to chunk.
#[derive(Default)]
pub(crate) struct PackedDocs {
    data: Vec<f32>,
    rows: usize,
    dim: usize,
}

impl PackedDocs {
    /// Packs `docs`, tiles in parallel on rayon's current pool.
    pub(crate) fn pack(&mut self, docs: &Matrix<'_>) {
        let dim = docs.dim();
        self.rows = docs.rows();
        self.dim = dim;
        self.data.clear();
        self.data
            .resize(self.rows.div_ceil(TILE_ROWS) * TILE_ROWS * dim, 0.0);
        self.data
            .par_chunks_exact_mut(TILE_ROWS * dim)
            .enumerate()
            .for_each(|(tile, out)| {
                let first = tile * TILE_ROWS;
                for row in first..(first + TILE_ROWS).min(docs.rows()) {
                    let lane = out.iter_mut().skip(row - first).step_by(TILE_ROWS);
                    for (slot, &value) in lane.zip(docs.row(row)) {
                        *slot = value;
                    }
                }
            });
    }

    /// Documents in the chunk (without padding).
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    fn tile(&self, index: usize) -> &[f32] {
        &self.data[index * TILE_ROWS * self.dim..(index + 1) * TILE_ROWS * self.dim]
    }
}

/// Fills `scores[row * width + query]` with the score of document row `row` of `docs` against packed query
/// `query` (padding columns get scores against zero vectors, which callers ignore).
pub(crate) fn score_block(
    isa: Isa,
    docs: &PackedDocs,
    queries: &PackedQueries,
    scores: &mut [f32],
) {
    let (rows, dim, width) = (docs.rows, docs.dim, queries.width());
    assert_eq!(dim, queries.dim, "score_block: dimension mismatch");
    assert_eq!(scores.len(), rows * width, "score_block: score buffer size");
    if rows == 0 {
        return;
    }
    for start in (0..dim).step_by(DEPTH) {
        let depth = DEPTH.min(dim - start);
        for panel_index in 0..width / PANEL {
            let panel = &queries.panel(panel_index)[start * PANEL..(start + depth) * PANEL];
            for tile_index in 0..rows.div_ceil(TILE_ROWS) {
                let first = tile_index * TILE_ROWS;
                let live = TILE_ROWS.min(rows - first);
                let tile_docs =
                    &docs.tile(tile_index)[start * TILE_ROWS..(start + depth) * TILE_ROWS];
                let out_offset = first * width + panel_index * PANEL;
                let tile = Tile {
                    docs: tile_docs.as_ptr(),
                    panel: panel.as_ptr(),
                    depth,
                    out: scores[out_offset..].as_mut_ptr(),
                    out_stride: width,
                    live,
                    accumulate: start > 0,
                };
                // SAFETY: the document tile holds depth x TILE_ROWS values and the panel depth x PANEL
                // values (both sliced above); the live output rows `first..first + live` each have PANEL
                // writable values at `out_offset + i * width`, inside `scores` (asserted to hold
                // rows x width). The ISA came from detection on this CPU.
                unsafe { tile.run(isa) };
            }
        }
    }
}

/// One register tile: `TILE_ROWS` documents x `PANEL` queries over `depth` dimensions.
struct Tile {
    docs: *const f32,
    panel: *const f32,
    depth: usize,
    out: *mut f32,
    out_stride: usize,
    live: usize,
    accumulate: bool,
}

impl Tile {
    /// # Safety
    /// `docs` must have `depth x TILE_ROWS` readable values, `panel` `depth x PANEL`, `out + i * out_stride`
    /// `PANEL` writable values for `i < live`, and `isa` must be supported by this CPU.
    unsafe fn run(&self, isa: Isa) {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::tile_avx512(self),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::tile_avx2(self),
            Isa::Portable => self.run_portable(),
        }
    }

    /// # Safety
    /// As [`Tile::run`].
    unsafe fn run_portable(&self) {
        for row in 0..self.live {
            let out = self.out.add(row * self.out_stride);
            for lane in 0..PANEL {
                let mut acc = if self.accumulate { *out.add(lane) } else { 0.0 };
                for k in 0..self.depth {
                    acc = (*self.docs.add(k * TILE_ROWS + row))
                        .mul_add(*self.panel.add(k * PANEL + lane), acc);
                }
                *out.add(lane) = acc;
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::{Tile, PANEL, TILE_ROWS};

    /// # Safety
    /// As [`Tile::run`], on a CPU with AVX-512F.
    // The AVX-512 intrinsics are stable since Rust 1.89; the crate's dependencies (arrow, parquet, image) already
    // need 1.88, above the 1.85 that Cargo.toml states.
    #[clippy::msrv = "1.89"]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_avx512(tile: &Tile) {
        const VECTORS: usize = PANEL / 16;
        let mut acc = [[_mm512_setzero_ps(); VECTORS]; TILE_ROWS];
        if tile.accumulate {
            for (row, acc) in acc.iter_mut().enumerate() {
                if row < tile.live {
                    let out = tile.out.add(row * tile.out_stride);
                    for (v, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm512_loadu_ps(out.add(16 * v));
                    }
                }
            }
        }
        for k in 0..tile.depth {
            let queries: [__m512; VECTORS] =
                std::array::from_fn(|v| _mm512_loadu_ps(tile.panel.add(k * PANEL + 16 * v)));
            for (row, acc) in acc.iter_mut().enumerate() {
                let doc = _mm512_set1_ps(*tile.docs.add(k * TILE_ROWS + row));
                for (acc, &query) in acc.iter_mut().zip(&queries) {
                    *acc = _mm512_fmadd_ps(doc, query, *acc);
                }
            }
        }
        for (row, acc) in acc.iter().enumerate() {
            if row < tile.live {
                let out = tile.out.add(row * tile.out_stride);
                for (v, acc) in acc.iter().enumerate() {
                    _mm512_storeu_ps(out.add(16 * v), *acc);
                }
            }
        }
    }

    /// The AVX2 tile is four sub-tiles of 4 documents x 24 queries: 12 ymm accumulators, 3 query vectors and a
    /// broadcast fill the 16 registers.
    const SUB_ROWS: usize = 4;
    const SUB_LANES: usize = 24;
    const SUB_VECTORS: usize = SUB_LANES / 8;

    /// # Safety
    /// As [`Tile::run`], on a CPU with AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_avx2(tile: &Tile) {
        for first_row in (0..TILE_ROWS).step_by(SUB_ROWS) {
            for first_lane in (0..PANEL).step_by(SUB_LANES) {
                sub_tile_avx2(tile, first_row, first_lane);
            }
        }
    }

    #[target_feature(enable = "avx2,fma")]
    unsafe fn sub_tile_avx2(tile: &Tile, first_row: usize, first_lane: usize) {
        let mut acc = [[_mm256_setzero_ps(); SUB_VECTORS]; SUB_ROWS];
        let live = |i: usize| first_row + i < tile.live;
        let out_at = |i: usize| tile.out.add((first_row + i) * tile.out_stride + first_lane);
        if tile.accumulate {
            for (i, acc) in acc.iter_mut().enumerate() {
                if live(i) {
                    for (v, acc) in acc.iter_mut().enumerate() {
                        *acc = _mm256_loadu_ps(out_at(i).add(8 * v));
                    }
                }
            }
        }
        for k in 0..tile.depth {
            let queries: [__m256; SUB_VECTORS] = std::array::from_fn(|v| {
                _mm256_loadu_ps(tile.panel.add(k * PANEL + first_lane + 8 * v))
            });
            for (i, acc) in acc.iter_mut().enumerate() {
                let doc = _mm256_set1_ps(*tile.docs.add(k * TILE_ROWS + first_row + i));
                for (acc, &query) in acc.iter_mut().zip(&queries) {
                    *acc = _mm256_fmadd_ps(doc, query, *acc);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            if live(i) {
                for (v, acc) in acc.iter().enumerate() {
                    _mm256_storeu_ps(out_at(i).add(8 * v), *acc);
                }
            }
        }
    }

    /// # Safety
    /// `a` and `b` have the same length; the CPU has FMA.
    #[target_feature(enable = "fma")]
    pub(super) unsafe fn inner_product_fma(a: &[f32], b: &[f32]) -> f32 {
        super::chain(a, b)
    }
}

/// The score of one pair, bit-identical to what [`score_block`] computes for it. Used for scores the top-k pass
/// does not produce (positives, which it excludes; random negatives outside the top-k).
pub(crate) fn inner_product(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "inner_product: length mismatch");
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("fma") {
            // SAFETY: lengths are equal and the CPU has FMA.
            return unsafe { x86::inner_product_fma(a, b) };
        }
    }
    chain(a, b)
}

#[inline(always)]
fn chain(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .fold(0.0f32, |acc, (&x, &y)| x.mul_add(y, acc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn random(rng: &mut ChaCha8Rng, len: usize) -> Vec<f32> {
        (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
    }

    /// Every path, on shapes that exercise partial tiles, partial panels and several depth blocks, equals the
    /// scalar FMA chain bit for bit.
    #[test]
    fn every_path_equals_the_scalar_chain() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        for &(docs, queries, dim) in &[
            (1, 1, 1),
            (13, 33, 5),
            (25, 70, 300),
            (12, 32, 256),
            (7, 3, 777),
        ] {
            let d = random(&mut rng, docs * dim);
            let q = random(&mut rng, queries * dim);
            let (d, q) = (
                Matrix::new("docs", &d, dim).unwrap(),
                Matrix::new("queries", &q, dim).unwrap(),
            );
            let packed = PackedQueries::pack(&q);
            let mut packed_docs = PackedDocs::default();
            packed_docs.pack(&d);
            for isa in Isa::supported() {
                let mut scores = vec![f32::NAN; docs * packed.width()];
                score_block(isa, &packed_docs, &packed, &mut scores);
                for row in 0..docs {
                    for query in 0..queries {
                        let expected = chain(d.row(row), q.row(query));
                        let got = scores[row * packed.width() + query];
                        assert_eq!(
                            got.to_bits(),
                            expected.to_bits(),
                            "{isa:?} {docs}x{queries}x{dim}"
                        );
                        assert_eq!(
                            inner_product(d.row(row), q.row(query)).to_bits(),
                            expected.to_bits()
                        );
                    }
                }
            }
        }
    }
}
