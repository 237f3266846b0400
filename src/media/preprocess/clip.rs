//! CLIP- and SigLIP-style image processing: resize (shortest edge or exact), optional centre crop, normalise, CHW.
//!
//! transformers' `CLIPImageProcessor` and `SiglipImageProcessor` are the same pipeline with different defaults
//! (CLIP: shortest edge 224 then a 224 centre crop, OpenAI CLIP mean/std; SigLIP: an exact 224x224 resize, mean and
//! std 0.5), so one processor serves both. It resizes and normalises as the PIL processors do (`CLIPImageProcessorPil`),
//! the reference the embedders were checked against.

use std::borrow::Cow;

use image::RgbImage;
use serde::Serialize;

use super::chw::{centre_window_chw, ChwPixels};
use super::config::{side, PreprocessorConfig, ProcessorKind, SizeConfig};
use super::error::PreprocessError;
use super::normalize::{
    ChannelLut, Normalization, IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD, OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
};
use super::processor::ImagePreprocessor;
use super::resize::{resize_rgb, ImageBackend, Resample};

const DEFAULT_SIDE: u32 = 224;

/// How the image is resized before any crop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ResizeTarget {
    /// Scale so the shorter side has this length; the longer side is truncated, as transformers'
    /// `get_resize_output_image_size` does.
    ShortestEdge(u32),
    Exact {
        height: u32,
        width: u32,
    },
}

impl ResizeTarget {
    /// The `(height, width)` an image of this size is resized to.
    pub fn output_size(self, height: u32, width: u32) -> (u32, u32) {
        match self {
            Self::Exact { height, width } => (height, width),
            Self::ShortestEdge(edge) => {
                let (short, long) = if width <= height {
                    (width, height)
                } else {
                    (height, width)
                };
                let new_long = (f64::from(edge) * f64::from(long) / f64::from(short)) as u32;
                if width <= height {
                    (new_long, edge)
                } else {
                    (edge, new_long)
                }
            }
        }
    }
}

/// Every setting of a CLIP/SigLIP image processor. Serialisable, so that an embedder's fingerprint covers every
/// setting that changes its vectors.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClipParams {
    pub do_resize: bool,
    pub size: ResizeTarget,
    pub resample: Resample,
    /// `(height, width)` of the centre crop when `do_center_crop` is set.
    pub center_crop: Option<(u32, u32)>,
    pub normalization: Normalization,
    pub do_convert_rgb: bool,
}

impl ClipParams {
    /// `CLIPImageProcessor`'s class defaults.
    pub fn clip() -> Self {
        Self {
            do_resize: true,
            size: ResizeTarget::ShortestEdge(DEFAULT_SIDE),
            resample: Resample::Bicubic,
            center_crop: Some((DEFAULT_SIDE, DEFAULT_SIDE)),
            normalization: default_normalization(OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
            do_convert_rgb: true,
        }
    }

    /// The `(height, width)` of every output image, when it does not depend on the input: the crop, else an
    /// exact resize. A vision tower with fixed position embeddings needs one.
    pub fn fixed_output(&self) -> Option<(u32, u32)> {
        match (self.center_crop, self.do_resize, self.size) {
            (Some(crop), _, _) => Some(crop),
            (None, true, ResizeTarget::Exact { height, width }) => Some((height, width)),
            _ => None,
        }
    }

    /// `SiglipImageProcessor`'s class defaults.
    pub fn siglip() -> Self {
        Self {
            do_resize: true,
            size: ResizeTarget::Exact {
                height: DEFAULT_SIDE,
                width: DEFAULT_SIDE,
            },
            resample: Resample::Bicubic,
            center_crop: None,
            normalization: default_normalization(IMAGENET_STANDARD_MEAN, IMAGENET_STANDARD_STD),
            do_convert_rgb: true,
        }
    }

    /// Reads a CLIP or SigLIP `preprocessor_config.json` (`image_processor_type` picks which class defaults fill
    /// the absent fields). `size` is `{"shortest_edge"}` or `{"height", "width"}` (a bare integer means shortest
    /// edge); `crop_size` is `{"height", "width"}` or an integer side.
    pub fn from_config(config: &PreprocessorConfig) -> Result<Self, PreprocessError> {
        let (defaults, mean, std) = match config.kind()? {
            ProcessorKind::Clip => (Self::clip(), OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
            ProcessorKind::Siglip => (
                Self::siglip(),
                IMAGENET_STANDARD_MEAN,
                IMAGENET_STANDARD_STD,
            ),
            ProcessorKind::Qwen2Vl => {
                return Err(PreprocessError::ConfigInvalid {
                    field: "image_processor_type",
                    reason:
                        "a Qwen2-VL config needs Qwen2VlProcessor, not the CLIP-style processor"
                            .to_string(),
                })
            }
        };
        let size = match &config.size {
            None => defaults.size,
            Some(size) => resize_target(size)?,
        };
        let do_center_crop = config
            .do_center_crop
            .unwrap_or(defaults.center_crop.is_some());
        let center_crop = match (&config.crop_size, defaults.center_crop) {
            _ if !do_center_crop => None,
            (Some(crop), _) => Some(crop_size(crop)?),
            (None, Some(default)) => Some(default),
            (None, None) => return Err(PreprocessError::ConfigMissing { field: "crop_size" }),
        };
        Ok(Self {
            do_resize: config.do_resize.unwrap_or(true),
            size,
            resample: config.resample_or(defaults.resample)?,
            center_crop,
            normalization: Normalization::from_config(config, mean, std)?,
            do_convert_rgb: config.do_convert_rgb.unwrap_or(true),
        })
    }
}

fn default_normalization(mean: [f64; 3], std: [f64; 3]) -> Normalization {
    Normalization {
        do_rescale: true,
        rescale_factor: 1.0 / 255.0,
        do_normalize: true,
        mean: mean.map(|v| v as f32),
        std: std.map(|v| v as f32),
    }
}

fn resize_target(size: &SizeConfig) -> Result<ResizeTarget, PreprocessError> {
    match size {
        SizeConfig::Int(edge) => Ok(ResizeTarget::ShortestEdge(side(*edge, "size")?)),
        SizeConfig::Dict(dict) => match (dict.shortest_edge, dict.longest_edge, dict.height, dict.width) {
            (Some(edge), None, _, _) => Ok(ResizeTarget::ShortestEdge(side(edge, "size.shortest_edge")?)),
            (Some(_), Some(_), _, _) => Err(PreprocessError::ConfigInvalid {
                field: "size",
                reason: "shortest_edge together with longest_edge is not supported by the CLIP-style processor"
                    .to_string(),
            }),
            (None, _, Some(height), Some(width)) => Ok(ResizeTarget::Exact {
                height: side(height, "size.height")?,
                width: side(width, "size.width")?,
            }),
            (None, _, None, _) => Err(PreprocessError::ConfigMissing { field: "size.height" }),
            (None, _, Some(_), None) => Err(PreprocessError::ConfigMissing { field: "size.width" }),
        },
    }
}

fn crop_size(crop: &SizeConfig) -> Result<(u32, u32), PreprocessError> {
    match crop {
        SizeConfig::Int(n) => {
            let n = side(*n, "crop_size")?;
            Ok((n, n))
        }
        SizeConfig::Dict(dict) => {
            let height = dict.height.ok_or(PreprocessError::ConfigMissing {
                field: "crop_size.height",
            })?;
            let width = dict.width.ok_or(PreprocessError::ConfigMissing {
                field: "crop_size.width",
            })?;
            Ok((
                side(height, "crop_size.height")?,
                side(width, "crop_size.width")?,
            ))
        }
    }
}

/// A CLIP- or SigLIP-style image processor, ready to run.
#[derive(Debug, Clone)]
pub struct ClipProcessor {
    params: ClipParams,
    lut: ChannelLut,
}

impl ClipProcessor {
    pub fn new(params: ClipParams) -> Self {
        let lut = ChannelLut::new(&params.normalization, ImageBackend::Pil);
        Self { params, lut }
    }

    pub fn from_config(config: &PreprocessorConfig) -> Result<Self, PreprocessError> {
        ClipParams::from_config(config).map(Self::new)
    }

    pub fn params(&self) -> &ClipParams {
        &self.params
    }
}

impl ImagePreprocessor for ClipProcessor {
    type Output = ChwPixels;

    fn converts_to_rgb(&self) -> bool {
        self.params.do_convert_rgb
    }

    fn preprocess_rgb(&self, image: &RgbImage) -> Result<ChwPixels, PreprocessError> {
        let resized = if self.params.do_resize {
            let (height, width) = self.params.size.output_size(image.height(), image.width());
            resize_rgb(
                image,
                width,
                height,
                self.params.resample,
                ImageBackend::Pil,
            )?
        } else {
            Cow::Borrowed(image)
        };
        let (height, width) = self
            .params
            .center_crop
            .unwrap_or((resized.height(), resized.width()));
        Ok(centre_window_chw(&resized, &self.lut, height, width))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shortest_edge_truncates_the_long_side() {
        // 61x301 -> short side 30, long side int(30 * 301 / 61) = int(148.03) = 148.
        assert_eq!(
            ResizeTarget::ShortestEdge(30).output_size(61, 301),
            (30, 148)
        );
        assert_eq!(
            ResizeTarget::ShortestEdge(30).output_size(301, 61),
            (148, 30)
        );
        assert_eq!(ResizeTarget::ShortestEdge(40).output_size(40, 40), (40, 40));
    }

    /// openai/clip-vit-base-patch32: the old feature-extractor spelling, integer sizes, no image_processor_type.
    const OPENAI_CLIP: &str = r#"{
      "crop_size": 224, "do_center_crop": true, "do_normalize": true, "do_resize": true,
      "feature_extractor_type": "CLIPFeatureExtractor",
      "image_mean": [0.48145466, 0.4578275, 0.40821073],
      "image_std": [0.26862954, 0.26130258, 0.27577711],
      "resample": 3, "size": 224
    }"#;

    /// google/siglip-base-patch16-224.
    const SIGLIP: &str = r#"{
      "do_normalize": true, "do_rescale": true, "do_resize": true,
      "image_mean": [0.5, 0.5, 0.5], "image_processor_type": "SiglipImageProcessor",
      "image_std": [0.5, 0.5, 0.5], "processor_class": "SiglipProcessor",
      "resample": 3, "rescale_factor": 0.00392156862745098, "size": {"height": 224, "width": 224}
    }"#;

    fn params(json: &str) -> Result<ClipParams, PreprocessError> {
        ClipParams::from_config(&PreprocessorConfig::from_json_str(json)?)
    }

    #[test]
    fn real_configs_resolve_to_the_class_defaults() {
        assert_eq!(params(OPENAI_CLIP).unwrap(), ClipParams::clip());
        assert_eq!(params(SIGLIP).unwrap(), ClipParams::siglip());
    }

    #[test]
    fn config_errors_name_the_field() {
        let untyped = params(r#"{"size": 224}"#).unwrap_err();
        assert!(matches!(
            untyped,
            PreprocessError::ConfigMissing {
                field: "image_processor_type"
            }
        ));
        let no_width =
            params(r#"{"image_processor_type": "SiglipImageProcessor", "size": {"height": 5}}"#);
        assert!(matches!(
            no_width,
            Err(PreprocessError::ConfigMissing {
                field: "size.width"
            })
        ));
        let crop =
            params(r#"{"image_processor_type": "SiglipImageProcessor", "do_center_crop": true}"#);
        assert!(matches!(
            crop,
            Err(PreprocessError::ConfigMissing { field: "crop_size" })
        ));
        let zero = params(
            r#"{"image_processor_type": "CLIPImageProcessor", "crop_size": {"height": 0, "width": 3}}"#,
        );
        assert!(matches!(
            zero,
            Err(PreprocessError::ConfigInvalid {
                field: "crop_size.height",
                ..
            })
        ));
        let qwen = params(r#"{"image_processor_type": "Qwen2VLImageProcessor"}"#);
        assert!(matches!(
            qwen,
            Err(PreprocessError::ConfigInvalid {
                field: "image_processor_type",
                ..
            })
        ));
    }
}
