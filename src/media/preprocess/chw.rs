//! Planar (CHW) float output with an optional centre crop, as CLIP-family towers take it.

use image::RgbImage;

use super::normalize::ChannelLut;

/// One image as a `(c, h, w)` row-major f32 array.
#[derive(Debug, Clone, PartialEq)]
pub struct ChwPixels {
    pub data: Vec<f32>,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

/// Normalises a `height` x `width` window centred on `image` into CHW.
///
/// The window follows transformers' `center_crop`: its top-left corner sits at `floor((H - height) / 2)`,
/// `floor((W - width) / 2)`, and where it overhangs a smaller image the overhang is zero pixels (padded before
/// rescaling, so a pad value normalises like a black pixel). With the window equal to the image size this is a
/// plain HWC -> CHW conversion.
pub fn centre_window_chw(image: &RgbImage, lut: &ChannelLut, height: u32, width: u32) -> ChwPixels {
    let (src_w, src_h) = (i64::from(image.width()), i64::from(image.height()));
    let top = (src_h - i64::from(height)).div_euclid(2);
    let left = (src_w - i64::from(width)).div_euclid(2);
    let (h, w) = (height as usize, width as usize);
    // The output columns that fall inside the image, and where they start in it.
    let col_start = (-left).clamp(0, width.into()) as usize;
    let col_end = (src_w - left).clamp(0, width.into()) as usize;
    let src_col = (left + col_start as i64).max(0) as usize;
    let mut data = Vec::with_capacity(3 * h * w);
    let raw = image.as_raw();
    for c in 0..3 {
        let table = lut.channel(c);
        let pad = table[0];
        for y in 0..h {
            let src_row = top + y as i64;
            if !(0..src_h).contains(&src_row) || col_start >= col_end {
                data.extend(std::iter::repeat_n(pad, w));
                continue;
            }
            let row_start = (src_row as usize * src_w as usize + src_col) * 3;
            let pixels = &raw[row_start..row_start + (col_end - col_start) * 3];
            data.extend(std::iter::repeat_n(pad, col_start));
            data.extend(pixels.chunks_exact(3).map(|px| table[usize::from(px[c])]));
            data.extend(std::iter::repeat_n(pad, w - col_end));
        }
    }
    ChwPixels { data, c: 3, h, w }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::media::preprocess::normalize::Normalization;
    use crate::media::preprocess::ImageBackend;

    fn identity() -> ChannelLut {
        ChannelLut::new(&Normalization::identity(), ImageBackend::Pil)
    }

    fn ramp(width: u32, height: u32) -> RgbImage {
        RgbImage::from_fn(width, height, |x, y| {
            image::Rgb([(10 * y + x) as u8, 100, 200])
        })
    }

    #[test]
    fn crops_the_centre_with_floor_offsets() {
        // 5x4 -> 2x3: top = (4 - 3) // 2 = 0, left = (5 - 2) // 2 = 1.
        let out = centre_window_chw(&ramp(5, 4), &identity(), 3, 2);
        assert_eq!((out.c, out.h, out.w), (3, 3, 2));
        assert_eq!(&out.data[..6], &[1.0, 2.0, 11.0, 12.0, 21.0, 22.0]);
        assert!(out.data[6..12].iter().all(|&v| v == 100.0));
    }

    #[test]
    fn pads_a_small_image_with_zero_pixels() {
        // 2x1 in a 4x3 window: top = (1 - 3) // 2 = -1, left = (2 - 4) // 2 = -1.
        let out = centre_window_chw(&ramp(2, 1), &identity(), 3, 4);
        let red = &out.data[..12];
        assert_eq!(red, &[0., 0., 0., 0., 0., 0., 1., 0., 0., 0., 0., 0.]);
        let green = &out.data[12..24];
        assert_eq!(green[5], 100.0);
        assert_eq!(green[0], 0.0);
    }
}
