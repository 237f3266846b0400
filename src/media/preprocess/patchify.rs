//! Qwen2-VL's flattened patch layout, written straight from the resized u8 image.

use image::RgbImage;

use super::error::PreprocessError;
use super::normalize::ChannelLut;

/// The vision encoder's patch geometry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PatchLayout {
    /// Side of one square patch, in pixels (14 for Qwen2-VL).
    pub patch_size: usize,
    /// Side of the square of patches the merger folds into one LLM token (2).
    pub merge_size: usize,
    /// Frames per patch (2); a still image is repeated to fill them.
    pub temporal_patch_size: usize,
}

impl PatchLayout {
    /// Values per patch: channel x frame x row x column.
    pub fn patch_dim(&self) -> usize {
        3 * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Both image sides must be multiples of this (patch_size * merge_size).
    pub fn factor(&self) -> usize {
        self.patch_size * self.merge_size
    }
}

/// Normalises `image` and lays it out as transformers' Qwen2-VL `pixel_values`, `(num_patches, patch_dim)`
/// row-major, returning the values and the (grid_h, grid_w) patch grid.
///
/// Patches are ordered by merge block row, merge block column, then row and column inside the block, so the
/// patches one LLM token merges are adjacent; inside a patch the order is channel, frame, row, column. Doing the
/// lookup-table normalisation while scattering into that order touches every output value once, instead of
/// normalising a CHW image and then transposing it as numpy does.
pub fn patchify(
    image: &RgbImage,
    lut: &ChannelLut,
    layout: PatchLayout,
) -> Result<(Vec<f32>, usize, usize), PreprocessError> {
    let (width, height) = (image.width() as usize, image.height() as usize);
    let factor = layout.factor();
    if factor == 0 || width % factor != 0 || height % factor != 0 {
        return Err(PreprocessError::NotPatchAligned {
            width: image.width(),
            height: image.height(),
            factor: factor as u32,
        });
    }
    let (p, m) = (layout.patch_size, layout.merge_size);
    let (grid_h, grid_w) = (height / p, width / p);
    let plane = p * p;
    let frames = layout.temporal_patch_size;
    let origins = (0..grid_h / m).flat_map(move |block_row| {
        (0..grid_w / m).flat_map(move |block_col| {
            (0..m).flat_map(move |mh| {
                (0..m).map(move |mw| ((block_row * m + mh) * p, (block_col * m + mw) * p))
            })
        })
    });
    let luts = [lut.channel(0), lut.channel(1), lut.channel(2)];
    let raw = image.as_raw();
    // Each patch is assembled in a small buffer that stays in L1 and then appended: the multi-megabyte output is
    // written exactly once, with no zero-fill pass before it.
    let mut out = Vec::with_capacity(grid_h * grid_w * layout.patch_dim());
    let mut patch = vec![0f32; layout.patch_dim()];
    for (y0, x0) in origins {
        let (red, rest) = patch.split_at_mut(frames * plane);
        let (green, blue) = rest.split_at_mut(frames * plane);
        for row in 0..p {
            let start = ((y0 + row) * width + x0) * 3;
            let pixels = raw[start..start + 3 * p].chunks_exact(3);
            let dst = row * p..row * p + p;
            let (r, g, b) = (
                &mut red[dst.clone()],
                &mut green[dst.clone()],
                &mut blue[dst],
            );
            for (((px, r), g), b) in pixels.zip(r).zip(g).zip(b) {
                *r = luts[0][usize::from(px[0])];
                *g = luts[1][usize::from(px[1])];
                *b = luts[2][usize::from(px[2])];
            }
        }
        for channel in [red, green, blue] {
            let (first, repeats) = channel.split_at_mut(plane);
            for frame in repeats.chunks_exact_mut(plane) {
                frame.copy_from_slice(first);
            }
        }
        out.extend_from_slice(&patch);
    }
    Ok((out, grid_h, grid_w))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::preprocess::normalize::Normalization;
    use crate::media::preprocess::ImageBackend;

    /// A transcription of transformers' numpy reshape/transpose, index by index, on a tiny image.
    #[test]
    fn matches_transformers_index_arithmetic() {
        let (p, m, t) = (2usize, 2usize, 3usize);
        let (h, w) = (8usize, 4usize);
        let image = RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let v = (y as usize * w + x as usize) as u8;
            image::Rgb([v, v + 100, v + 200])
        });
        let identity = ChannelLut::new(&Normalization::identity(), ImageBackend::Pil);
        let layout = PatchLayout {
            patch_size: p,
            merge_size: m,
            temporal_patch_size: t,
        };
        let (out, gh, gw) = patchify(&image, &identity, layout).unwrap();
        assert_eq!((gh, gw), (4, 2));
        let dim = layout.patch_dim();
        // numpy: reshape(C, gh/m, m, p, gw/m, m, p).transpose(1, 4, 2, 5, 0, 3, 6), frame axis after C.
        for bh in 0..gh / m {
            for bw in 0..gw / m {
                for mh in 0..m {
                    for mw in 0..m {
                        let patch = ((bh * (gw / m) + bw) * m + mh) * m + mw;
                        for c in 0..3 {
                            for f in 0..t {
                                for r in 0..p {
                                    for col in 0..p {
                                        let y = (bh * m + mh) * p + r;
                                        let x = (bw * m + mw) * p + col;
                                        let want = (y * w + x) as f32 + 100.0 * c as f32;
                                        let at = patch * dim + ((c * t + f) * p + r) * p + col;
                                        assert_eq!(
                                            out[at], want,
                                            "patch {patch} c {c} f {f} r {r} col {col}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
