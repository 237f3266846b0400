//! The one error type of the preprocessing library.

use std::path::PathBuf;

/// Why an image (or a processor configuration) could not be turned into model inputs.
///
/// Per-image variants are reject reasons a corpus builder can record and move on from; the `Config*` variants mean
/// the processor itself is unusable.
#[derive(Debug, thiserror::Error)]
pub enum PreprocessError {
    #[error("cannot decode image: {0}")]
    Decode(#[source] image::ImageError),

    #[error("cannot decode JPEG: {0}")]
    Jpeg(String),

    #[error("cannot decode JPEG: the data ends before the image does (truncated file)")]
    JpegTruncated,

    #[error("{what} has zero size ({width}x{height})")]
    ZeroSize {
        what: &'static str,
        width: u64,
        height: u64,
    },

    #[error("absolute aspect ratio must be smaller than 200, got {ratio} ({width}x{height})")]
    AspectRatio { width: u64, height: u64, ratio: f64 },

    #[error(
        "image is {width}x{height} but do_resize is false and both sides must be multiples of {factor} \
         (patch_size * merge_size)"
    )]
    NotPatchAligned {
        width: u32,
        height: u32,
        factor: u32,
    },

    #[error("image has colour type {color:?} but do_convert_rgb is false, and only 8-bit RGB is usable as it is")]
    NotRgb { color: image::ColorType },

    #[error("resize {from_width}x{from_height} -> {to_width}x{to_height} failed: {reason}")]
    Resize {
        from_width: u32,
        from_height: u32,
        to_width: u32,
        to_height: u32,
        reason: String,
    },

    #[error("cannot read preprocessor config {path}: {source}")]
    ConfigIo {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// serde_json's message carries the line and column.
    #[error("cannot parse preprocessor config{}: {source}", path.as_ref().map(|p| format!(" {}", p.display())).unwrap_or_default())]
    ConfigParse {
        path: Option<PathBuf>,
        #[source]
        source: serde_json::Error,
    },

    #[error("preprocessor config: missing required value `{field}`")]
    ConfigMissing { field: &'static str },

    #[error("preprocessor config: invalid `{field}`: {reason}")]
    ConfigInvalid { field: &'static str, reason: String },
}
