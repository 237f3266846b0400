//! torchvision's antialiased resize of uint8 images, the one transformers 5's default image processors run.
//!
//! `torchvision.transforms.v2.functional.resize` hands a uint8 CPU tensor straight to torch's
//! `_upsample_bicubic2d_aa` (or the bilinear / Lanczos variant), whose uint8 kernel is a port of Pillow-SIMD:
//! filter weights computed in f64 with PIL's filter widening and pixel-centre mapping, then quantised to i16 at a
//! precision chosen so the largest weight fits; every output value is an exact integer sum, rounded by adding half
//! and shifting, and clamped to 0..=255. Unlike Pillow 13 it always runs the horizontal pass first, rounds the
//! intermediate image to uint8, and uses the cubic filter in its own algebraic form (see [`Filter::weight`]). All
//! of that is integer arithmetic once the weights are fixed, so this module reproduces torch's output bit for bit
//! (tests/it/preprocess_parity.rs checks it against torchvision on real photographs).

use image::RgbImage;
use rayon::prelude::*;

use super::error::PreprocessError;
use super::resize::{no_torchvision_filter, Resample};

/// Output rows per parallel task: enough work per task to amortise the scheduling, small enough to balance.
const ROWS_PER_TASK: usize = 16;

/// The filters torch's uint8 kernel offers (`interp_size` taps at scale 1).
#[derive(Debug, Clone, Copy)]
enum Filter {
    Bilinear,
    Bicubic,
    Lanczos,
}

impl Filter {
    fn of(resample: Resample) -> Result<Self, PreprocessError> {
        match resample {
            Resample::Bilinear => Ok(Self::Bilinear),
            Resample::Bicubic => Ok(Self::Bicubic),
            Resample::Lanczos => Ok(Self::Lanczos),
            Resample::Box | Resample::Hamming => Err(no_torchvision_filter(resample)),
        }
    }

    fn interp_size(self) -> f64 {
        match self {
            Self::Bilinear => 2.0,
            Self::Bicubic => 4.0,
            Self::Lanczos => 6.0,
        }
    }

    /// The filter at `x`, written as torch writes it: the f64 rounding of each form decides the rare weight that
    /// lands on a quantisation boundary.
    fn weight(self, x: f64) -> f64 {
        let x = x.abs();
        match self {
            Self::Bilinear => {
                if x < 1.0 {
                    1.0 - x
                } else {
                    0.0
                }
            }
            // Keys' cubic with a = -0.5 (PIL's choice; torch uses it whenever antialiasing is on).
            Self::Bicubic => {
                const A: f64 = -0.5;
                if x < 1.0 {
                    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
                } else if x < 2.0 {
                    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
                } else {
                    0.0
                }
            }
            Self::Lanczos => {
                if x < 3.0 {
                    sinc(x) * sinc(x / 3.0)
                } else {
                    0.0
                }
            }
        }
    }
}

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

/// One axis's convolution: for each output index, the first input index, how many inputs it reads, and their
/// i16 weights (`taps` slots per output, unused slots zero), with `precision` fractional bits.
#[derive(Debug)]
struct AxisWeights {
    starts: Vec<usize>,
    sizes: Vec<usize>,
    weights: Vec<i32>,
    taps: usize,
    precision: u32,
}

impl AxisWeights {
    /// torch's `_compute_index_ranges_int16_weights` with `align_corners = False`, antialiasing on and no explicit
    /// scale factor (torchvision passes only the output size).
    fn new(input: usize, output: usize, filter: Filter) -> Self {
        let scale = input as f64 / output as f64;
        let (support, invscale) = if scale >= 1.0 {
            (filter.interp_size() * 0.5 * scale, 1.0 / scale)
        } else {
            (filter.interp_size() * 0.5, 1.0)
        };
        let taps = support.ceil() as usize * 2 + 1;
        let mut float_weights = vec![0.0f64; output * taps];
        let mut starts = Vec::with_capacity(output);
        let mut sizes = Vec::with_capacity(output);
        let mut max_weight = 0.0f64;
        for (i, row) in float_weights.chunks_exact_mut(taps).enumerate() {
            let center = scale * (i as f64 + 0.5);
            // `as i64` truncates toward zero, as torch's static_cast does (not floor).
            let start = ((center - support + 0.5) as i64).max(0);
            let end = ((center + support + 0.5) as i64).min(input as i64);
            let size = (end - start).clamp(0, taps as i64) as usize;
            let mut total = 0.0;
            for (j, w) in row[..size].iter_mut().enumerate() {
                *w = filter.weight(((j as i64 + start) as f64 - center + 0.5) * invscale);
                total += *w;
            }
            if total != 0.0 {
                for w in &mut row[..size] {
                    *w /= total;
                    max_weight = max_weight.max(*w);
                }
            }
            starts.push(start as usize);
            sizes.push(size);
        }
        let precision = weight_precision(max_weight);
        let unit = f64::from(1u32 << precision);
        let weights = float_weights
            .iter()
            .map(|&w| {
                let v = w * unit;
                // Round half away from zero, then keep the low 16 bits, as torch's `(int16_t)(int)` does.
                let rounded = if v < 0.0 {
                    (-0.5 + v) as i32
                } else {
                    (0.5 + v) as i32
                };
                i32::from(rounded as i16)
            })
            .collect();
        Self {
            starts,
            sizes,
            weights,
            taps,
            precision,
        }
    }

    fn taps_of(&self, out: usize) -> (usize, &[i32]) {
        let weights = &self.weights[out * self.taps..][..self.sizes[out]];
        (self.starts[out], weights)
    }

    /// The rounding term added before the shift: half of one output level.
    fn half(&self) -> i32 {
        (1i32 << self.precision) >> 1
    }

    /// An accumulated sum back to a pixel: drop the fraction (an arithmetic shift, so a negative sum floors), clamp.
    #[inline]
    fn finish(&self, sum: i32) -> u8 {
        (sum >> self.precision).clamp(0, 255) as u8
    }
}

/// The most fractional bits (at most 22) at which the largest weight, doubled, still fits an i16: torch's loop.
fn weight_precision(max_weight: f64) -> u32 {
    let mut precision = 0;
    while precision < 22 {
        let next = (0.5 + max_weight * f64::from(1u32 << (precision + 1))) as i32;
        if next >= 1 << 15 {
            break;
        }
        precision += 1;
    }
    precision
}

/// Resizes `src` to `width` x `height` as torchvision resizes a uint8 tensor with antialiasing; the caller has
/// checked the size and handled the no-op case.
pub(super) fn resize(
    src: &RgbImage,
    width: u32,
    height: u32,
    resample: Resample,
) -> Result<RgbImage, PreprocessError> {
    let filter = Filter::of(resample)?;
    let (src_w, src_h) = (src.width() as usize, src.height() as usize);
    let (dst_w, dst_h) = (width as usize, height as usize);
    let horizontal = (dst_w != src_w).then(|| {
        let axis = AxisWeights::new(src_w, dst_w, filter);
        horizontal_pass(src.as_raw(), src_w, src_h, dst_w, &axis)
    });
    let rows = horizontal.as_deref().unwrap_or(src.as_raw());
    let pixels = if dst_h != src_h {
        let axis = AxisWeights::new(src_h, dst_h, filter);
        vertical_pass(rows, dst_w, dst_h, &axis)
    } else {
        horizontal.unwrap_or_else(|| src.as_raw().clone())
    };
    RgbImage::from_raw(width, height, pixels).ok_or_else(|| PreprocessError::Resize {
        from_width: src.width(),
        from_height: src.height(),
        to_width: width,
        to_height: height,
        reason: "resized buffer has the wrong length".to_string(),
    })
}

/// Resamples each row of an RGB8 image from `src_w` to `dst_w` pixels. Transposed, the rows become columns and the
/// vertical pass's contiguous inner loop (two taps per vector multiply-add, [`add_weighted_pair`]) does the work;
/// the sums are integers, so the order they are taken in does not change a pixel.
fn horizontal_pass(
    src: &[u8],
    src_w: usize,
    rows: usize,
    dst_w: usize,
    axis: &AxisWeights,
) -> Vec<u8> {
    let columns = transpose(src, src_w, rows);
    let resized = vertical_pass(&columns, rows, dst_w, axis);
    transpose(&resized, rows, dst_w)
}

/// An RGB8 image `width` pixels wide and `height` tall, transposed (`height` wide, `width` tall). Row by row: a
/// tiled transpose measured slower here (the destination's lines stay in cache across source rows anyway).
fn transpose(src: &[u8], width: usize, height: usize) -> Vec<u8> {
    let mut out = vec![0u8; src.len()];
    for (y, row) in src.chunks_exact(width * 3).enumerate() {
        for (x, px) in row.chunks_exact(3).enumerate() {
            let at = (x * height + y) * 3;
            out[at..at + 3].copy_from_slice(px);
        }
    }
    out
}

/// Resamples the columns of an RGB8 image `width` pixels wide to `dst_h` rows: each output row is a weighted sum
/// of whole input rows, which keeps the inner loop contiguous.
fn vertical_pass(src: &[u8], width: usize, dst_h: usize, axis: &AxisWeights) -> Vec<u8> {
    let stride = width * 3;
    let mut out = vec![0u8; stride * dst_h];
    out.par_chunks_mut(stride * ROWS_PER_TASK)
        .enumerate()
        .for_each(|(task, out_rows)| {
            let mut sums = vec![0i32; stride];
            for (r, out_row) in out_rows.chunks_exact_mut(stride).enumerate() {
                let (start, weights) = axis.taps_of(task * ROWS_PER_TASK + r);
                sums.fill(axis.half());
                for (pair, w) in weights.chunks(2).enumerate() {
                    let row = |j: usize| &src[(start + 2 * pair + j) * stride..][..stride];
                    // An odd last tap pairs with a zero weight on the same row.
                    let (w1, row1) = w.get(1).map_or((0, row(0)), |&w1| (w1, row(1)));
                    add_weighted_pair(&mut sums, row(0), row1, [w[0], w1]);
                }
                for (o, &s) in out_row.iter_mut().zip(&sums) {
                    *o = axis.finish(s);
                }
            }
        });
    out
}

/// `sums[c] += w0 * row0[c] + w1 * row1[c]` for every column `c`: two taps of the vertical pass at once, which is
/// the shape of x86's multiply-add of 16-bit pairs (the weights fit i16 by construction, as in torch's kernel).
/// Integer sums are exact, so the vector and scalar paths give the same pixels.
fn add_weighted_pair(sums: &mut [i32], row0: &[u8], row1: &[u8], [w0, w1]: [i32; 2]) {
    let done = simd::add_weighted_pair(sums, row0, row1, [w0, w1]);
    for ((s, &a), &b) in sums[done..]
        .iter_mut()
        .zip(&row0[done..])
        .zip(&row1[done..])
    {
        *s += w0 * i32::from(a) + w1 * i32::from(b);
    }
}

#[cfg(target_arch = "x86_64")]
mod simd {
    use std::arch::x86_64::{
        __m128i, __m256i, _mm256_add_epi32, _mm256_cvtepu8_epi16, _mm256_loadu_si256,
        _mm256_madd_epi16, _mm256_set1_epi32, _mm256_storeu_si256, _mm_loadu_si128,
        _mm_unpackhi_epi8, _mm_unpacklo_epi8,
    };

    /// The columns it did, a multiple of 16 (none without AVX2); the caller finishes the rest.
    pub(super) fn add_weighted_pair(
        sums: &mut [i32],
        row0: &[u8],
        row1: &[u8],
        weights: [i32; 2],
    ) -> usize {
        if !is_x86_feature_detected!("avx2") {
            return 0;
        }
        // SAFETY: AVX2 is present (checked above).
        unsafe { add_weighted_pair_avx2(sums, row0, row1, weights) }
    }

    /// Interleaves 16 pixels of each row into (row0, row1) byte pairs, widens them to i16 and multiplies-adds each
    /// pair with (w0, w1): eight i32 column sums per instruction.
    #[target_feature(enable = "avx2")]
    fn add_weighted_pair_avx2(
        sums: &mut [i32],
        row0: &[u8],
        row1: &[u8],
        [w0, w1]: [i32; 2],
    ) -> usize {
        let columns = sums.len().min(row0.len()).min(row1.len());
        let pair = (u32::from(w1 as i16 as u16) << 16 | u32::from(w0 as i16 as u16)) as i32;
        let weights = _mm256_set1_epi32(pair);
        let mut c = 0;
        while c + 16 <= columns {
            // SAFETY: c + 16 <= the length of every slice read or written here.
            unsafe {
                let a = _mm_loadu_si128(row0.as_ptr().add(c).cast::<__m128i>());
                let b = _mm_loadu_si128(row1.as_ptr().add(c).cast::<__m128i>());
                let low = _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpacklo_epi8(a, b)), weights);
                let high =
                    _mm256_madd_epi16(_mm256_cvtepu8_epi16(_mm_unpackhi_epi8(a, b)), weights);
                let out = sums.as_mut_ptr().add(c).cast::<__m256i>();
                _mm256_storeu_si256(out, _mm256_add_epi32(_mm256_loadu_si256(out), low));
                let out = sums.as_mut_ptr().add(c + 8).cast::<__m256i>();
                _mm256_storeu_si256(out, _mm256_add_epi32(_mm256_loadu_si256(out), high));
            }
            c += 16;
        }
        c
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod simd {
    /// No vector path here: the caller does every column.
    pub(super) fn add_weighted_pair(_: &mut [i32], _: &[u8], _: &[u8], _: [i32; 2]) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_of_each_output_sum_to_one_unit() {
        for (input, output) in [(600, 333), (512, 517), (7, 56), (640, 28)] {
            let axis = AxisWeights::new(input, output, Filter::Bicubic);
            let unit = 1i64 << axis.precision;
            for out in 0..output {
                let (start, weights) = axis.taps_of(out);
                assert!(start + weights.len() <= input);
                let sum: i64 = weights.iter().map(|&w| i64::from(w)).sum();
                // Each weight rounds independently, so the sum can miss the unit by half a step per tap.
                assert!(
                    (sum - unit).abs() <= weights.len() as i64,
                    "{input}->{output} at {out}: {sum} vs {unit}"
                );
            }
        }
    }

    /// The horizontal pass written directly, one output pixel at a time: the reference for the transposed one.
    fn direct_horizontal_pass(
        src: &[u8],
        src_w: usize,
        rows: usize,
        dst_w: usize,
        axis: &AxisWeights,
    ) -> Vec<u8> {
        let mut out = vec![0u8; dst_w * rows * 3];
        out.par_chunks_mut(dst_w * 3 * ROWS_PER_TASK)
            .zip(src.par_chunks(src_w * 3 * ROWS_PER_TASK))
            .for_each(|(out_rows, in_rows)| {
                for (out_row, in_row) in out_rows
                    .chunks_exact_mut(dst_w * 3)
                    .zip(in_rows.chunks_exact(src_w * 3))
                {
                    for (x, out_px) in out_row.chunks_exact_mut(3).enumerate() {
                        let (start, weights) = axis.taps_of(x);
                        let mut sum = [axis.half(); 3];
                        let pixels = in_row[start * 3..].chunks_exact(3);
                        for (&w, px) in weights.iter().zip(pixels) {
                            for (s, &p) in sum.iter_mut().zip(px) {
                                *s += w * i32::from(p);
                            }
                        }
                        for (o, &s) in out_px.iter_mut().zip(&sum) {
                            *o = axis.finish(s);
                        }
                    }
                }
            });
        out
    }

    #[test]
    fn transposed_horizontal_pass_equals_the_direct_one() {
        let src = RgbImage::from_fn(53, 29, |x, y| {
            image::Rgb([
                (x * 37 + y * 11) as u8,
                (x * x + 3 * y) as u8,
                (200 + x * y) as u8,
            ])
        });
        for dst_w in [7, 26, 53 + 12, 140] {
            let axis = AxisWeights::new(53, dst_w, Filter::Bicubic);
            assert_eq!(
                horizontal_pass(src.as_raw(), 53, 29, dst_w, &axis),
                direct_horizontal_pass(src.as_raw(), 53, 29, dst_w, &axis),
                "53 -> {dst_w}"
            );
        }
    }

    #[test]
    fn transposing_twice_gives_the_image_back() {
        for (w, h) in [(1, 1), (31, 33), (70, 5), (64, 64)] {
            let src: Vec<u8> = (0..w * h * 3).map(|i| (i * 7 + i / 3) as u8).collect();
            let once = transpose(&src, w, h);
            assert_eq!(&once[..3], &src[..3]);
            let (x, y) = (w - 1, h / 2);
            assert_eq!(
                &once[(x * h + y) * 3..][..3],
                &src[(y * w + x) * 3..][..3],
                "{w}x{h}"
            );
            assert_eq!(transpose(&once, h, w), src, "{w}x{h}");
        }
    }

    #[test]
    fn paired_taps_add_like_single_ones() {
        let row0: Vec<u8> = (0..53u32).map(|c| (c * 97 + 13) as u8).collect();
        let row1: Vec<u8> = (0..53u32).map(|c| (c * 31 + 200) as u8).collect();
        for weights in [[16384, -2048], [-32768, 32767], [5, 0], [0, -1]] {
            let mut paired = vec![7i32; 53];
            add_weighted_pair(&mut paired, &row0, &row1, weights);
            let single: Vec<i32> = (0..53)
                .map(|c| 7 + weights[0] * i32::from(row0[c]) + weights[1] * i32::from(row1[c]))
                .collect();
            assert_eq!(paired, single, "{weights:?}");
        }
    }

    #[test]
    fn precision_keeps_the_largest_weight_inside_i16() {
        assert_eq!(weight_precision(1.0), 14);
        assert_eq!(weight_precision(0.25), 16);
        assert_eq!(weight_precision(0.0), 22);
    }

    #[test]
    fn flat_images_stay_flat() {
        let src = RgbImage::from_pixel(37, 23, image::Rgb([200, 17, 0]));
        for (w, h) in [(11, 9), (80, 50), (37, 5), (3, 23)] {
            let out = resize(&src, w, h, Resample::Bicubic).unwrap();
            assert!(out.pixels().all(|p| p.0 == [200, 17, 0]), "{w}x{h}");
        }
    }

    #[test]
    fn box_and_hamming_name_the_setting() {
        let src = RgbImage::new(4, 4);
        let err = resize(&src, 2, 2, Resample::Box).unwrap_err();
        assert!(err.to_string().contains("pil"), "{err}");
    }
}
