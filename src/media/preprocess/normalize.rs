//! Rescale and normalise, folded into one lookup table per channel.

use super::config::{channel_values, PreprocessorConfig};
use super::error::PreprocessError;
use super::resize::ImageBackend;

/// transformers' default `rescale_factor`.
const DEFAULT_RESCALE: f64 = 1.0 / 255.0;

/// transformers' `OPENAI_CLIP_MEAN` / `OPENAI_CLIP_STD` (CLIP, Qwen2-VL).
pub const OPENAI_CLIP_MEAN: [f64; 3] = [0.48145466, 0.4578275, 0.40821073];
pub const OPENAI_CLIP_STD: [f64; 3] = [0.26862954, 0.26130258, 0.27577711];
/// transformers' `IMAGENET_STANDARD_MEAN` / `IMAGENET_STANDARD_STD` (SigLIP): maps [0, 1] onto [-1, 1].
pub const IMAGENET_STANDARD_MEAN: [f64; 3] = [0.5; 3];
pub const IMAGENET_STANDARD_STD: [f64; 3] = [0.5; 3];

/// How an 8-bit channel value becomes a model input: optionally times `rescale_factor`, then optionally
/// `(v - mean) / std`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Normalization {
    pub do_rescale: bool,
    pub rescale_factor: f64,
    pub do_normalize: bool,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Normalization {
    /// Channel values passed through unchanged (as floats), for tests that follow pixels through a layout.
    #[cfg(test)]
    pub(crate) fn identity() -> Self {
        Self {
            do_rescale: false,
            rescale_factor: 1.0,
            do_normalize: false,
            mean: [0.0; 3],
            std: [1.0; 3],
        }
    }

    /// Reads `do_rescale`, `rescale_factor`, `do_normalize`, `image_mean` and `image_std`, with transformers'
    /// defaults for everything but the processor-specific mean and std.
    pub fn from_config(
        config: &PreprocessorConfig,
        default_mean: [f64; 3],
        default_std: [f64; 3],
    ) -> Result<Self, PreprocessError> {
        let rescale_factor = config.rescale_factor.unwrap_or(DEFAULT_RESCALE);
        if !rescale_factor.is_finite() {
            return Err(PreprocessError::ConfigInvalid {
                field: "rescale_factor",
                reason: format!("must be finite, got {rescale_factor}"),
            });
        }
        let std = channel_values(config.image_std.as_ref(), default_std, "image_std")?;
        if std.contains(&0.0) {
            return Err(PreprocessError::ConfigInvalid {
                field: "image_std",
                reason: format!("a zero standard deviation divides by zero: {std:?}"),
            });
        }
        Ok(Self {
            do_rescale: config.do_rescale.unwrap_or(true),
            rescale_factor,
            do_normalize: config.do_normalize.unwrap_or(true),
            mean: channel_values(config.image_mean.as_ref(), default_mean, "image_mean")?,
            std,
        })
    }
}

/// The output value of every (channel, u8) pair, precomputed.
///
/// A u8 input has only 256 values per channel, so the table is exact and turns the per-pixel work into one load.
/// Each entry is computed in the precision and order of the backend being reproduced, which is what makes the
/// result bit-identical to transformers':
/// - PIL processors (numpy): `rescale` multiplies in float64 and casts to float32, `normalize` subtracts and
///   divides in float32.
/// - torchvision processors fuse the two steps: mean and std are float32 tensors multiplied by `1 / rescale_factor`
///   (rounded to float32 first, as torch rounds a Python scalar to the tensor's type), then the pixel is
///   `(v - mean') / std'` in float32. Rescale alone is `v * rescale_factor` in float32.
#[derive(Debug, Clone)]
pub struct ChannelLut {
    table: [[f32; 256]; 3],
}

impl ChannelLut {
    pub fn new(norm: &Normalization, backend: ImageBackend) -> Self {
        let mut table = [[0f32; 256]; 3];
        for (c, row) in table.iter_mut().enumerate() {
            for (v, out) in row.iter_mut().enumerate() {
                *out = match backend {
                    ImageBackend::Pil => numpy_value(norm, c, v),
                    ImageBackend::Torchvision => torch_value(norm, c, v),
                };
            }
        }
        Self { table }
    }

    /// The table of one channel (0 red, 1 green, 2 blue).
    #[inline]
    pub fn channel(&self, c: usize) -> &[f32; 256] {
        &self.table[c]
    }
}

/// transformers' PIL processors: numpy's `rescale` then `normalize`.
fn numpy_value(norm: &Normalization, c: usize, v: usize) -> f32 {
    let mut x = if norm.do_rescale {
        (v as f64 * norm.rescale_factor) as f32
    } else {
        v as f32
    };
    if norm.do_normalize {
        x = (x - norm.mean[c]) / norm.std[c];
    }
    x
}

/// transformers' torchvision processors: `rescale_and_normalize`, fused when both steps are on.
fn torch_value(norm: &Normalization, c: usize, v: usize) -> f32 {
    let x = v as f32;
    match (norm.do_rescale, norm.do_normalize) {
        (true, true) => {
            let unscale = (1.0 / norm.rescale_factor) as f32;
            (x - norm.mean[c] * unscale) / (norm.std[c] * unscale)
        }
        (false, true) => (x - norm.mean[c]) / norm.std[c],
        (true, false) => x * norm.rescale_factor as f32,
        (false, false) => x,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_rescale_then_normalise() {
        let norm = Normalization {
            do_rescale: true,
            rescale_factor: 1.0 / 255.0,
            do_normalize: true,
            mean: [0.5, 0.25, 0.0],
            std: [0.5, 0.25, 2.0],
        };
        let lut = ChannelLut::new(&norm, ImageBackend::Pil);
        assert_eq!(lut.channel(0)[0], -1.0);
        assert_eq!(lut.channel(0)[255], 1.0);
        assert_eq!(lut.channel(1)[0], -1.0);
        assert_eq!(lut.channel(2)[255], 0.5);
    }

    #[test]
    fn identity_when_both_steps_are_off() {
        let norm = Normalization {
            do_rescale: false,
            rescale_factor: 1.0 / 255.0,
            do_normalize: false,
            mean: [0.5; 3],
            std: [0.5; 3],
        };
        let lut = ChannelLut::new(&norm, ImageBackend::Pil);
        assert!((0..256).all(|v| lut.channel(1)[v] == v as f32));
    }
}
