//! From encoded bytes or a decoded image to the 8-bit RGB transformers' `convert_rgb` produces.

use std::borrow::Cow;

use image::{DynamicImage, RgbImage, RgbaImage};

use super::error::PreprocessError;
use super::jpeg::{decode_jpeg, is_jpeg};

/// Decodes JPEG as libjpeg-turbo does (see [`super::jpeg`]) and any other format the `image` crate was built
/// with (the format is sniffed from the bytes).
///
/// EXIF orientation is not applied: transformers' image processors do not apply it either.
pub fn decode(bytes: &[u8]) -> Result<DynamicImage, PreprocessError> {
    let image = if is_jpeg(bytes) {
        decode_jpeg(bytes)?
    } else {
        image::load_from_memory(bytes).map_err(PreprocessError::Decode)?
    };
    check_not_empty(image.width(), image.height())?;
    Ok(image)
}

/// The RGB8 view of `image`, composited over white if it has alpha; borrows when it already is RGB8.
///
/// 16-bit and float images are first reduced to 8 bits by the `image` crate (rounding), which can be one level
/// away from what PIL's 16-bit modes give; 8-bit inputs, the norm for web images, convert exactly as PIL does.
///
/// With `convert` false (`do_convert_rgb: false`) only RGB8 input is accepted, since transformers would then feed
/// the raw channels (one for grey, four for RGBA) to a three-channel normalisation and fail.
pub fn rgb8(image: &DynamicImage, convert: bool) -> Result<Cow<'_, RgbImage>, PreprocessError> {
    check_not_empty(image.width(), image.height())?;
    match image {
        DynamicImage::ImageRgb8(rgb) => Ok(Cow::Borrowed(rgb)),
        _ if !convert => Err(PreprocessError::NotRgb {
            color: image.color(),
        }),
        _ if image.color().has_alpha() => Ok(Cow::Owned(composite_over_white(&image.to_rgba8()))),
        _ => Ok(Cow::Owned(image.to_rgb8())),
    }
}

/// Owning variant of [`rgb8`]: a decoded RGB8 image is moved, not copied.
pub fn into_rgb8(image: DynamicImage, convert: bool) -> Result<RgbImage, PreprocessError> {
    match image {
        DynamicImage::ImageRgb8(rgb) => {
            check_not_empty(rgb.width(), rgb.height())?;
            Ok(rgb)
        }
        other => rgb8(&other, convert).map(Cow::into_owned),
    }
}

fn check_not_empty(width: u32, height: u32) -> Result<(), PreprocessError> {
    if width == 0 || height == 0 {
        return Err(PreprocessError::ZeroSize {
            what: "image",
            width: u64::from(width),
            height: u64::from(height),
        });
    }
    Ok(())
}

/// `PIL.Image.alpha_composite(white, image).convert("RGB")`, which is what transformers' `convert_to_rgb` does to
/// any image with transparency. The integer arithmetic is Pillow's (AlphaComposite.c: 7 extra bits of precision
/// and a rounded division by 255), so the result is bit-identical rather than one level off in places.
fn composite_over_white(rgba: &RgbaImage) -> RgbImage {
    let mut out = RgbImage::new(rgba.width(), rgba.height());
    for (dst, src) in out.pixels_mut().zip(rgba.pixels()) {
        let [r, g, b, a] = src.0;
        dst.0 = [r, g, b].map(|channel| over_white(channel, a));
    }
    out
}

/// One channel of Pillow's `ImagingAlphaComposite` with an opaque white destination.
fn over_white(channel: u8, alpha: u8) -> u8 {
    const PRECISION_BITS: u32 = 7;
    const WHITE: u32 = 255;
    let alpha = u32::from(alpha);
    if alpha == 0 {
        return WHITE as u8;
    }
    let blend = WHITE * (255 - alpha);
    let out_alpha_255 = alpha * 255 + blend;
    let src_coef = alpha * 255 * 255 * (1 << PRECISION_BITS) / out_alpha_255;
    let dst_coef = 255 * (1 << PRECISION_BITS) - src_coef;
    let mixed = u32::from(channel) * src_coef + WHITE * dst_coef + (0x80 << PRECISION_BITS);
    // Pillow's SHIFTFORDIV255: a rounded division by 255 for values below 2^16 * 255.
    let divided = ((mixed >> 8) + mixed) >> 8;
    (divided >> PRECISION_BITS) as u8
}
