//! Pillow-compatible resampling of 8-bit RGB images on fast_image_resize.
//!
//! transformers' slow image processors resize uint8 images with `PIL.Image.resize`: a separable convolution with
//! the filter widened by the downscale factor (antialiasing), fixed-point weights, one pass per axis with the
//! intermediate image rounded to uint8. fast_image_resize's `Convolution` algorithm uses the same filter functions
//! (its `CatmullRom` is PIL's BICUBIC, a = -0.5), the same widening and the same pixel-centre mapping, but it picks
//! its own pass order, and the intermediate rounding then lands elsewhere. Running the passes as two one-axis
//! resizes in Pillow's order restores PIL's result up to weight precision: fast_image_resize quantises weights to
//! i16 (about 14 fractional bits) where PIL keeps 22, so a small fraction of output pixels differ from PIL's by one
//! grey level (measured in tests/preprocess_parity.rs).

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use super::error::PreprocessError;
use super::resize::Resample;

/// Resizes `src` to `width` x `height` the way `PIL.Image.resize` does; the caller has checked the size and handled
/// the no-op case.
pub(super) fn resize(
    src: &RgbImage,
    width: u32,
    height: u32,
    resample: Resample,
) -> Result<RgbImage, PreprocessError> {
    let mut resizer = Resizer::new();
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(filter(resample)));
    let mut image = None;
    if vertical_first(src.width(), src.height(), width, height) {
        image = Some(resize_pass(
            &mut resizer,
            &options,
            src,
            src.width(),
            height,
        )?);
    }
    let current = image.as_ref().unwrap_or(src);
    if current.width() != width {
        image = Some(resize_pass(
            &mut resizer,
            &options,
            current,
            width,
            current.height(),
        )?);
    }
    let current = image.as_ref().unwrap_or(src);
    if current.height() != height {
        image = Some(resize_pass(&mut resizer, &options, current, width, height)?);
    }
    Ok(image.unwrap_or_else(|| src.clone()))
}

/// fast_image_resize's name for each PIL filter (its `CatmullRom` is PIL's BICUBIC, a = -0.5).
fn filter(resample: Resample) -> FilterType {
    match resample {
        Resample::Lanczos => FilterType::Lanczos3,
        Resample::Bilinear => FilterType::Bilinear,
        Resample::Bicubic => FilterType::CatmullRom,
        Resample::Box => FilterType::Box,
        Resample::Hamming => FilterType::Hamming,
    }
}

/// Pillow's pass order (Pillow 13, python-pillow/Pillow#9549): horizontal first, unless the height shrinks by more
/// than twice as many pixels as the width does. Pillow 12 and older always ran the horizontal pass first; the two
/// orders differ by one grey level in some pixels.
fn vertical_first(src_width: u32, src_height: u32, width: u32, height: u32) -> bool {
    let height_cut = i64::from(src_height) - i64::from(height);
    let width_cut = i64::from(src_width) - i64::from(width);
    width != src_width && height < src_height && height_cut > 2 * width_cut
}

/// One fast_image_resize call; callers change one axis per call so each call is a single convolution pass.
fn resize_pass(
    resizer: &mut Resizer,
    options: &ResizeOptions,
    src: &RgbImage,
    width: u32,
    height: u32,
) -> Result<RgbImage, PreprocessError> {
    let fail = |reason: String| PreprocessError::Resize {
        from_width: src.width(),
        from_height: src.height(),
        to_width: width,
        to_height: height,
        reason,
    };
    let src_view = ImageRef::new(src.width(), src.height(), src.as_raw(), PixelType::U8x3)
        .map_err(|e| fail(e.to_string()))?;
    let mut dst = Image::new(width, height, PixelType::U8x3);
    resizer
        .resize(&src_view, &mut dst, options)
        .map_err(|e| fail(e.to_string()))?;
    RgbImage::from_raw(width, height, dst.into_vec())
        .ok_or_else(|| fail("resized buffer has the wrong length".to_string()))
}
