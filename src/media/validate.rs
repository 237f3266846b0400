//! Deciding whether a byte string is an image umrank can use, before trusting it with memory or a model.
//!
//! The order matters: the format is sniffed from magic bytes (file names and Content-Type headers lie), the
//! structure is checked for truncation, the dimensions are read from the header and checked against the pixel cap
//! before anything is allocated for pixels (a small file can declare an enormous image), and only then is the image
//! fully decoded, under allocation limits, to find corrupt data.

use std::io::{self, Cursor};

use image::{ImageError, ImageFormat, ImageReader, Limits};

use super::preprocess::jpeg::decode_jpeg;
use super::preprocess::PreprocessError;
use super::reject::{ImageReject, RejectCode};
use super::truncation::find_truncation;

/// The pixel cap PIL applies by default (`Image.MAX_IMAGE_PIXELS`), so that data that loads in the Python
/// ecosystem loads here and a decompression bomb that PIL refuses is refused here too.
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// The image formats umrank decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Format {
    Png,
    Jpeg,
    Gif,
    WebP,
    Bmp,
}

impl Format {
    fn from_image_format(format: ImageFormat) -> Option<Self> {
        match format {
            ImageFormat::Png => Some(Format::Png),
            ImageFormat::Jpeg => Some(Format::Jpeg),
            ImageFormat::Gif => Some(Format::Gif),
            ImageFormat::WebP => Some(Format::WebP),
            ImageFormat::Bmp => Some(Format::Bmp),
            _ => None,
        }
    }

    pub fn image_format(self) -> ImageFormat {
        match self {
            Format::Png => ImageFormat::Png,
            Format::Jpeg => ImageFormat::Jpeg,
            Format::Gif => ImageFormat::Gif,
            Format::WebP => ImageFormat::WebP,
            Format::Bmp => ImageFormat::Bmp,
        }
    }

    /// The name stored in the `format` column of the images dataset.
    pub fn as_str(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Jpeg => "jpeg",
            Format::Gif => "gif",
            Format::WebP => "webp",
            Format::Bmp => "bmp",
        }
    }
}

/// What validation learned about an image that passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageInfo {
    pub width: u32,
    pub height: u32,
    pub format: Format,
}

/// Checks that `bytes` hold a complete, decodable image of a supported format with at most `max_pixels` pixels.
pub fn validate(bytes: &[u8], max_pixels: u64) -> Result<ImageInfo, ImageReject> {
    let format = sniff(bytes)?;
    if let Some(why) = find_truncation(format, bytes) {
        return Err(ImageReject::new(RejectCode::Truncated, why));
    }
    let (width, height) = ImageReader::with_format(Cursor::new(bytes), format.image_format())
        .into_dimensions()
        .map_err(|err| decoder_reject(format, err))?;
    check_dimensions(format, width, height, max_pixels)?;
    decode(bytes, format, width, height, max_pixels)?;
    Ok(ImageInfo {
        width,
        height,
        format,
    })
}

fn sniff(bytes: &[u8]) -> Result<Format, ImageReject> {
    if bytes.is_empty() {
        return Err(ImageReject::new(
            RejectCode::NotAnImage,
            "the data is empty",
        ));
    }
    match image::guess_format(bytes) {
        Ok(format) => {
            Format::from_image_format(format).ok_or_else(|| unsupported(&format!("{format:?}")))
        }
        Err(_) => match undecodable_image_kind(bytes) {
            Some(name) => Err(unsupported(name)),
            None => {
                let head = &bytes[..bytes.len().min(8)];
                Err(ImageReject::new(
                    RejectCode::NotAnImage,
                    format!(
                        "no known image signature (data starts with {})",
                        hex::encode(head)
                    ),
                ))
            }
        },
    }
}

fn unsupported(name: &str) -> ImageReject {
    ImageReject::new(
        RejectCode::UnsupportedFormat,
        format!("{name} images are not supported (png, jpeg, gif, webp and bmp are)"),
    )
}

/// Image formats that the image crate does not even recognise, named so that their reject says "unsupported"
/// rather than "not an image": a photo collection with HEIC files needs converting, not cleaning.
fn undecodable_image_kind(bytes: &[u8]) -> Option<&'static str> {
    const HEIF_BRANDS: [&[u8]; 5] = [b"heic", b"heix", b"hevc", b"mif1", b"msf1"];
    let brand = bytes.get(4..12);
    if brand.is_some_and(|b| b.starts_with(b"ftyp") && HEIF_BRANDS.contains(&&b[4..])) {
        Some("HEIF")
    } else if bytes.starts_with(&[0xFF, 0x0A]) || bytes.starts_with(b"\0\0\0\x0cJXL \r\n\x87\n") {
        Some("JPEG XL")
    } else if bytes.starts_with(b"\0\0\0\x0cjP  \r\n\x87\n")
        || bytes.starts_with(&[0xFF, 0x4F, 0xFF, 0x51])
    {
        Some("JPEG 2000")
    } else {
        None
    }
}

fn check_dimensions(
    format: Format,
    width: u32,
    height: u32,
    max_pixels: u64,
) -> Result<(), ImageReject> {
    let pixels = u64::from(width) * u64::from(height);
    if pixels == 0 {
        return Err(ImageReject::new(
            RejectCode::ZeroSize,
            format!(
                "{} header declares a {width}x{height} image",
                format.as_str()
            ),
        ));
    }
    if pixels > max_pixels {
        return Err(ImageReject::new(
            RejectCode::TooManyPixels,
            format!(
                "{} header declares {width}x{height} = {pixels} pixels, over the cap of {max_pixels}",
                format.as_str()
            ),
        ));
    }
    Ok(())
}

/// Decodes the whole image (the first frame of an animation) and drops the pixels: only success matters here.
/// JPEG goes through the decoder preprocessing uses ([`decode_jpeg`]), so that what passes here decodes there
/// and a file libjpeg (and so Pillow) reads is not refused by another decoder's stricter rules.
fn decode(
    bytes: &[u8],
    format: Format,
    width: u32,
    height: u32,
    max_pixels: u64,
) -> Result<(), ImageReject> {
    if format == Format::Jpeg {
        return decode_jpeg(bytes).map(drop).map_err(jpeg_reject);
    }
    let mut reader = ImageReader::with_format(Cursor::new(bytes), format.image_format());
    let mut limits = Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(decode_budget(max_pixels));
    reader.limits(limits);
    reader
        .decode()
        .map(drop)
        .map_err(|err| decoder_reject(format, err))
}

/// Room for an image at the pixel cap in 16-bit RGBA, and never less than the image crate's own default, so the
/// allocation limit only stops decoders that allocate far beyond what the declared size needs.
fn decode_budget(max_pixels: u64) -> u64 {
    const IMAGE_CRATE_DEFAULT: u64 = 512 * 1024 * 1024;
    max_pixels.saturating_mul(8).max(IMAGE_CRATE_DEFAULT)
}

fn jpeg_reject(err: PreprocessError) -> ImageReject {
    let code = match err {
        PreprocessError::JpegTruncated => RejectCode::Truncated,
        _ => RejectCode::Corrupt,
    };
    ImageReject::new(code, err.to_string())
}

fn decoder_reject(format: Format, err: ImageError) -> ImageReject {
    let name = format.as_str();
    match err {
        ImageError::IoError(io) if io.kind() == io::ErrorKind::UnexpectedEof => ImageReject::new(
            RejectCode::Truncated,
            format!("{name} data ends early: {io}"),
        ),
        ImageError::Limits(limit) => ImageReject::new(
            RejectCode::TooManyPixels,
            format!("decoding the {name} image needs more than its memory limit: {limit}"),
        ),
        ImageError::Unsupported(unsupported) => ImageReject::new(
            RejectCode::UnsupportedFormat,
            format!("{name}: {unsupported}"),
        ),
        other => ImageReject::new(
            RejectCode::Corrupt,
            format!("{name} does not decode: {other}"),
        ),
    }
}
