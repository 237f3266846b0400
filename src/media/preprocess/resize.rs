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

use std::borrow::Cow;

use fast_image_resize::images::{Image, ImageRef};
use fast_image_resize::{FilterType, PixelType, ResizeAlg, ResizeOptions, Resizer};
use image::RgbImage;

use super::error::PreprocessError;

/// Largest output accepted (2^28 pixels, 768 MiB as RGB8): a shortest-edge resize of a long thin strip would
/// otherwise ask for an allocation that aborts the process instead of failing one image.
const MAX_OUTPUT_PIXELS: u64 = 1 << 28;

/// The PIL resampling filters that resize by convolution (PIL's NEAREST is not a convolution and is not offered).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Resample {
    Lanczos,
    Bilinear,
    Bicubic,
    Box,
    Hamming,
}

impl Resample {
    /// Reads the integer code `preprocessor_config.json` stores in `resample` (PIL's `Image.Resampling` values).
    pub fn from_pil_code(code: u32) -> Result<Self, PreprocessError> {
        match code {
            1 => Ok(Self::Lanczos),
            2 => Ok(Self::Bilinear),
            3 => Ok(Self::Bicubic),
            4 => Ok(Self::Box),
            5 => Ok(Self::Hamming),
            _ => Err(PreprocessError::ConfigInvalid {
                field: "resample",
                reason: format!(
                    "PIL resampling code {code} is not supported (1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming)"
                ),
            }),
        }
    }

    fn filter(self) -> FilterType {
        match self {
            Self::Lanczos => FilterType::Lanczos3,
            Self::Bilinear => FilterType::Bilinear,
            Self::Bicubic => FilterType::CatmullRom,
            Self::Box => FilterType::Box,
            Self::Hamming => FilterType::Hamming,
        }
    }
}

/// Resizes `src` to `width` x `height` the way `PIL.Image.resize` does; an image already at that size is borrowed,
/// not copied (PIL also skips the resampling then).
pub fn resize_rgb(
    src: &RgbImage,
    width: u32,
    height: u32,
    resample: Resample,
) -> Result<Cow<'_, RgbImage>, PreprocessError> {
    if width == 0 || height == 0 {
        return Err(PreprocessError::ZeroSize {
            what: "resize target",
            width: u64::from(width),
            height: u64::from(height),
        });
    }
    if u64::from(width) * u64::from(height) > MAX_OUTPUT_PIXELS {
        return Err(PreprocessError::Resize {
            from_width: src.width(),
            from_height: src.height(),
            to_width: width,
            to_height: height,
            reason: format!("the output would exceed {MAX_OUTPUT_PIXELS} pixels"),
        });
    }
    let mut resizer = Resizer::new();
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(resample.filter()));
    let mut image = Cow::Borrowed(src);
    if vertical_first(src.width(), src.height(), width, height) {
        image = Cow::Owned(resize_pass(
            &mut resizer,
            &options,
            &image,
            image.width(),
            height,
        )?);
    }
    if image.width() != width {
        image = Cow::Owned(resize_pass(
            &mut resizer,
            &options,
            &image,
            width,
            image.height(),
        )?);
    }
    if image.height() != height {
        image = Cow::Owned(resize_pass(&mut resizer, &options, &image, width, height)?);
    }
    Ok(image)
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
