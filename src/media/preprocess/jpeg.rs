//! JPEG decoding with libjpeg-turbo's algorithms, so that pixels equal what transformers' processors see.
//!
//! transformers' image processors take PIL images, and PIL decodes JPEG with libjpeg-turbo: the accurate integer
//! IDCT, "fancy" (triangular) chroma upsampling and libjpeg's fixed-point YCbCr conversion. The `image` crate's
//! decoder rounds its IDCT and upsamples chroma its own way, which moves many pixels by a level or two and a
//! reranker's logits by up to 1e-2. Here the JPEG goes through MozJPEG, a libjpeg-turbo fork whose decoder is
//! libjpeg-turbo's, built from source by cargo with the C compiler (no SIMD assembly, whose output is the C
//! code's bit for bit). tests/it/jpeg_decode.rs checks the pixels against Pillow's on real photographs in every
//! layout (chroma subsampling, progressive, restart markers, greyscale, CMYK).
//!
//! Colour follows Pillow: greyscale stays greyscale (converted to RGB by replication later, as `convert("RGB")`
//! does); three components come out as RGB; four-component JPEGs (CMYK, YCCK) are read as CMYK, inverted as
//! Pillow inverts every four-component JPEG ("Adobe conventions"), then converted with Pillow's CMYK-to-RGB
//! formula. EXIF orientation is not applied, as neither PIL's `Image.open` nor the processors apply it.
//!
//! libjpeg treats a file that ends early as a warning and pads the image with grey; Pillow refuses such a file
//! ("image file is truncated"), and so does this decoder, so that a cut-off download is an error, never an image
//! with a grey bottom. Other warnings (extraneous bytes before a marker and the like) pass, as they do in Pillow.

use std::os::raw::c_int;

use image::DynamicImage;
use mozjpeg::{ColorSpace, Decompress};
use mozjpeg_sys::{jpeg_common_struct, jpeg_error_mgr, JWRN_JPEG_EOF};

use super::error::PreprocessError;

/// Whether `bytes` start like a JPEG file (SOI, then a marker).
pub fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xFF, 0xD8, 0xFF])
}

/// Decodes a JPEG as Pillow does. libjpeg reports fatal errors by unwinding out of the C code; they are caught
/// here and returned, so a corrupt file is an error, never a panic.
pub fn decode_jpeg(bytes: &[u8]) -> Result<DynamicImage, PreprocessError> {
    match std::panic::catch_unwind(|| decode_unchecked(bytes)) {
        Ok(result) => result.map_err(|err| PreprocessError::Jpeg(err.to_string())),
        Err(payload) if payload.is::<Truncated>() => Err(PreprocessError::JpegTruncated),
        Err(payload) => Err(PreprocessError::Jpeg(panic_message(payload.as_ref()))),
    }
}

/// The unwinding payload of libjpeg's premature-end warning.
struct Truncated;

fn decode_unchecked(bytes: &[u8]) -> std::io::Result<DynamicImage> {
    let decompress = Decompress::with_err(error_manager()).from_mem(bytes)?;
    let (width, height) = (decompress.width() as u32, decompress.height() as u32);
    match decompress.color_space() {
        ColorSpace::JCS_GRAYSCALE => {
            let mut started = decompress.grayscale()?;
            let pixels: Vec<u8> = started.read_scanlines()?;
            started.finish()?;
            Ok(DynamicImage::ImageLuma8(image_from(width, height, pixels)?))
        }
        ColorSpace::JCS_CMYK | ColorSpace::JCS_YCCK => {
            let mut started = decompress.to_colorspace(ColorSpace::JCS_CMYK)?;
            let pixels: Vec<[u8; 4]> = started.read_scanlines()?;
            started.finish()?;
            let rgb = pixels.iter().flat_map(|&cmyk| inverted_cmyk_to_rgb(cmyk));
            Ok(DynamicImage::ImageRgb8(image_from(
                width,
                height,
                rgb.collect(),
            )?))
        }
        _ => {
            let mut started = decompress.rgb()?;
            let pixels: Vec<u8> = started.read_scanlines()?;
            started.finish()?;
            Ok(DynamicImage::ImageRgb8(image_from(width, height, pixels)?))
        }
    }
}

/// An `image` buffer over decoded samples, which libjpeg sized from the same header.
fn image_from<P: image::Pixel<Subpixel = u8>>(
    width: u32,
    height: u32,
    samples: Vec<u8>,
) -> std::io::Result<image::ImageBuffer<P, Vec<u8>>> {
    image::ImageBuffer::from_raw(width, height, samples).ok_or_else(|| {
        std::io::Error::other(format!(
            "decoded samples do not fill a {width}x{height} image"
        ))
    })
}

/// Pillow's reading of libjpeg's four-component output (`CMYK;I`: every channel inverted) followed by its
/// `cmyk2rgb`: each channel `(255 - k) - (c * (255 - k)) / 255`, the division rounded as Pillow's `MULDIV255`.
fn inverted_cmyk_to_rgb(raw: [u8; 4]) -> [u8; 3] {
    let [c, m, y, k] = raw.map(|v| 255 - u32::from(v));
    let not_k = 255 - k;
    [c, m, y].map(|ink| (not_k - mul_div_255(ink, not_k)) as u8)
}

/// `a * b / 255` rounded, for `a, b <= 255`, by Pillow's shift formula.
fn mul_div_255(a: u32, b: u32) -> u32 {
    let t = a * b + 128;
    ((t >> 8) + t) >> 8
}

/// libjpeg's standard error manager, with fatal errors and the premature-end warning unwinding to
/// [`decode_jpeg`]'s `catch_unwind` and every other message silenced.
fn error_manager() -> jpeg_error_mgr {
    // SAFETY: `jpeg_error_mgr` is a plain C struct for which all-zero bytes are valid (null pointers, `None`
    // callbacks), and `jpeg_std_error` then fills every field.
    let mut manager: jpeg_error_mgr = unsafe { std::mem::zeroed() };
    unsafe { mozjpeg_sys::jpeg_std_error(&mut manager) };
    manager.error_exit = Some(unwind_on_error);
    manager.emit_message = Some(unwind_on_truncation);
    manager
}

unsafe extern "C-unwind" fn unwind_on_error(cinfo: &mut jpeg_common_struct) {
    std::panic::resume_unwind(Box::new(libjpeg_message(cinfo)));
}

/// `msg_level` -1 is a warning; the one that means the data ran out is fatal here.
unsafe extern "C-unwind" fn unwind_on_truncation(cinfo: &mut jpeg_common_struct, msg_level: c_int) {
    // SAFETY: libjpeg calls this with the `cinfo` whose `err` points at the manager it was created with.
    let code = unsafe { cinfo.err.as_ref() }.map_or(0, |err| err.msg_code);
    if msg_level < 0 && code == JWRN_JPEG_EOF as c_int {
        std::panic::resume_unwind(Box::new(Truncated));
    }
}

/// The text libjpeg has for the current message code.
fn libjpeg_message(cinfo: &mut jpeg_common_struct) -> String {
    // SAFETY: as above, `err` is the live error manager.
    let Some(err) = (unsafe { cinfo.err.as_ref() }) else {
        return "libjpeg failed".to_string();
    };
    let (code, format) = (err.msg_code, err.format_message);
    let Some(format) = format else {
        return format!("libjpeg error {code}");
    };
    let mut buffer = [0u8; 80];
    // SAFETY: `format_message` writes at most JMSG_LENGTH_MAX (80) bytes, NUL included, into the buffer it is
    // given; the binding declares that buffer as a shared reference, so the call goes through a pointer type
    // with the same ABI.
    let format: unsafe extern "C-unwind" fn(&mut jpeg_common_struct, *mut u8) =
        unsafe { std::mem::transmute(format) };
    unsafe { format(cinfo, buffer.as_mut_ptr()) };
    let text = buffer.split(|&b| b == 0).next().unwrap_or_default();
    String::from_utf8_lossy(text).into_owned()
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "libjpeg failed".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmyk_conversion_follows_pillows_integer_formula() {
        // Inverted input: raw 255 is ink 0.
        assert_eq!(inverted_cmyk_to_rgb([255, 255, 255, 255]), [255, 255, 255]);
        assert_eq!(inverted_cmyk_to_rgb([0, 0, 0, 255]), [0, 0, 0]);
        assert_eq!(inverted_cmyk_to_rgb([255, 255, 255, 0]), [0, 0, 0]);
        // ink 100 at black 55: 200 - round(100 * 200 / 255) = 200 - 78.
        assert_eq!(inverted_cmyk_to_rgb([155, 255, 255, 200]), [122, 200, 200]);
    }

    #[test]
    fn corrupt_data_is_an_error_not_a_panic() {
        let mut bytes = vec![0xFF, 0xD8, 0xFF, 0xDB, 0x00, 0x02];
        bytes.extend_from_slice(&[0x13; 64]);
        let err = decode_jpeg(&bytes).unwrap_err().to_string();
        assert!(err.contains("JPEG"), "{err}");
        assert!(is_jpeg(&bytes));
        assert!(!is_jpeg(b"\x89PNG\r\n"));
    }
}
