//! The two vector kernels the tiles are made of, written so that the compiler vectorises them.
//!
//! Rust does not reorder floating-point additions, so a plain `zip().map().sum()` dot product runs one lane at a
//! time. Accumulating in independent lanes and adding them at the end lets it use SIMD registers.

const LANES: usize = 8;

/// `sum(a * b)`.
pub(super) fn dot(a: &[f32], b: &[f32]) -> f32 {
    debug_assert_eq!(a.len(), b.len());
    let mut lanes = [0f32; LANES];
    let (a_main, a_tail) = a.split_at(a.len() - a.len() % LANES);
    let (b_main, b_tail) = b.split_at(a_main.len());
    for (a, b) in a_main.chunks_exact(LANES).zip(b_main.chunks_exact(LANES)) {
        for lane in 0..LANES {
            lanes[lane] += a[lane] * b[lane];
        }
    }
    let tail: f32 = a_tail.iter().zip(b_tail).map(|(a, b)| a * b).sum();
    lanes.iter().sum::<f32>() + tail
}

/// `y += alpha * x`.
pub(super) fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    debug_assert_eq!(x.len(), y.len());
    for (y, x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}
