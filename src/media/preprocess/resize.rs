//! Resizing 8-bit RGB images as one of transformers' two image-processor backends does.
//!
//! transformers 5 ships each image processor twice: on torchvision (the default `AutoImageProcessor` gives when
//! torchvision is installed) and on PIL (the `...Pil` classes, transformers 4's "slow" processors). Both run a
//! separable, antialiased convolution with the same filters on uint8 pixels, but they round differently (weight
//! precision, pass order, the filter's algebraic form), so a resized pixel can differ by a few grey levels between
//! them. A model is best scored with the backend it was trained with; [`ImageBackend`] names it, and
//! [`resize_rgb`] reproduces either one.

use std::borrow::Cow;

use image::RgbImage;

use super::error::PreprocessError;
use super::{pil_resize, torchvision_resize};

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
}

/// Which of transformers' image-processor implementations to reproduce: the `image_processor` setting.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum ImageBackend {
    /// The torchvision processor (`Qwen2VLImageProcessor` in transformers 5, `...Fast` in transformers 4): what
    /// `AutoImageProcessor` / `AutoProcessor` load by default.
    #[default]
    Torchvision,
    /// The PIL processor (`Qwen2VLImageProcessorPil` in transformers 5, the plain class in transformers 4).
    Pil,
}

impl ImageBackend {
    /// The setting's spelling in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Self::Torchvision => "torchvision",
            Self::Pil => "pil",
        }
    }

    /// Whether this backend can resample with `resample`; torchvision has no box or Hamming filter for tensors.
    pub fn check(self, resample: Resample) -> Result<(), PreprocessError> {
        match (self, resample) {
            (Self::Torchvision, Resample::Box | Resample::Hamming) => {
                Err(no_torchvision_filter(resample))
            }
            _ => Ok(()),
        }
    }
}

/// The error for a filter torchvision's tensor resize does not have.
pub(super) fn no_torchvision_filter(resample: Resample) -> PreprocessError {
    PreprocessError::ConfigInvalid {
        field: "resample",
        reason: format!(
            "torchvision has no {resample:?} filter for tensors; use image_processor = \"pil\""
        ),
    }
}

impl std::fmt::Display for ImageBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ImageBackend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "torchvision" => Ok(Self::Torchvision),
            "pil" => Ok(Self::Pil),
            _ => Err(format!(
                "unknown image processor `{s}` (torchvision or pil)"
            )),
        }
    }
}

/// Resizes `src` to `width` x `height` as `backend` does; an image already at that size is borrowed, not copied
/// (both backends skip the resampling then).
pub fn resize_rgb(
    src: &RgbImage,
    width: u32,
    height: u32,
    resample: Resample,
    backend: ImageBackend,
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
    if (src.width(), src.height()) == (width, height) {
        return Ok(Cow::Borrowed(src));
    }
    let resized = match backend {
        ImageBackend::Torchvision => torchvision_resize::resize(src, width, height, resample)?,
        ImageBackend::Pil => pil_resize::resize(src, width, height, resample)?,
    };
    Ok(Cow::Owned(resized))
}
