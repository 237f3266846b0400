//! Qwen2-VL / Qwen2.5-VL image processing: smart_resize, bicubic resize, CLIP normalisation, patchify, as either of
//! transformers' backends does it (torchvision by default, PIL on request; see [`ImageBackend`]).

use image::RgbImage;

use super::config::{PreprocessorConfig, ProcessorKind, SizeConfig, SizeDict};
use super::error::PreprocessError;
use super::normalize::{ChannelLut, Normalization, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD};
use super::patchify::{patchify, PatchLayout};
use super::processor::ImagePreprocessor;
use super::resize::{resize_rgb, ImageBackend, Resample};
use super::smart_resize::smart_resize;

/// transformers' class defaults for `Qwen2VLImageProcessor`.
const DEFAULT_MIN_PIXELS: u64 = 56 * 56;
const DEFAULT_MAX_PIXELS: u64 = 28 * 28 * 1280;
const DEFAULT_PATCH_SIZE: u32 = 14;
const DEFAULT_MERGE_SIZE: u32 = 2;
const DEFAULT_TEMPORAL_PATCH_SIZE: u32 = 2;

/// Every setting of a Qwen2-VL image processor.
#[derive(Debug, Clone, PartialEq)]
pub struct Qwen2VlParams {
    pub min_pixels: u64,
    pub max_pixels: u64,
    pub patch_size: u32,
    pub merge_size: u32,
    pub temporal_patch_size: u32,
    pub do_resize: bool,
    pub resample: Resample,
    pub normalization: Normalization,
    pub do_convert_rgb: bool,
    /// Whose resize and normalisation arithmetic to reproduce.
    pub backend: ImageBackend,
}

impl Qwen2VlParams {
    /// These settings with the pixel bounds a stage's config gives in place of the model's (`None` keeps the
    /// model's): a run can trade image detail for memory and speed without editing the model directory.
    pub fn with_bounds(mut self, (min_pixels, max_pixels): (Option<u64>, Option<u64>)) -> Self {
        self.min_pixels = min_pixels.unwrap_or(self.min_pixels);
        self.max_pixels = max_pixels.unwrap_or(self.max_pixels);
        self
    }

    /// These settings with the backend a stage's config names in place of the model directory's (`None` keeps it):
    /// a model is scored with the image processor it was trained with.
    pub fn with_backend(mut self, backend: Option<ImageBackend>) -> Self {
        self.backend = backend.unwrap_or(self.backend);
        self
    }
}

impl Default for Qwen2VlParams {
    fn default() -> Self {
        Self {
            min_pixels: DEFAULT_MIN_PIXELS,
            max_pixels: DEFAULT_MAX_PIXELS,
            patch_size: DEFAULT_PATCH_SIZE,
            merge_size: DEFAULT_MERGE_SIZE,
            temporal_patch_size: DEFAULT_TEMPORAL_PATCH_SIZE,
            do_resize: true,
            resample: Resample::Bicubic,
            normalization: Normalization {
                do_rescale: true,
                rescale_factor: 1.0 / 255.0,
                do_normalize: true,
                mean: OPENAI_CLIP_MEAN.map(|v| v as f32),
                std: OPENAI_CLIP_STD.map(|v| v as f32),
            },
            do_convert_rgb: true,
            backend: ImageBackend::default(),
        }
    }
}

impl Qwen2VlParams {
    /// Reads a Qwen2-VL `preprocessor_config.json`; absent fields take transformers' class defaults.
    ///
    /// The pixel bounds come, in transformers' order of precedence, from top-level `min_pixels` / `max_pixels`,
    /// else from `size` (`shortest_edge` / `longest_edge`, or the older `min_pixels` / `max_pixels` keys; both are
    /// pixel counts here, not side lengths). A `size` that lacks a bound is an error naming the bound.
    pub fn from_config(config: &PreprocessorConfig) -> Result<Self, PreprocessError> {
        config.check_kind(ProcessorKind::Qwen2Vl)?;
        let size = match &config.size {
            None => None,
            Some(SizeConfig::Dict(dict)) => Some(dict),
            Some(SizeConfig::Int(_)) => {
                return Err(PreprocessError::ConfigInvalid {
                    field: "size",
                    reason: "Qwen2-VL expects {\"shortest_edge\": min_pixels, \"longest_edge\": max_pixels}, got an integer"
                        .to_string(),
                })
            }
        };
        let min_pixels = pixel_bound(
            config.min_pixels,
            size,
            |d| d.shortest_edge.or(d.min_pixels),
            "size.shortest_edge",
            DEFAULT_MIN_PIXELS,
        )?;
        let max_pixels = pixel_bound(
            config.max_pixels,
            size,
            |d| d.longest_edge.or(d.max_pixels),
            "size.longest_edge",
            DEFAULT_MAX_PIXELS,
        )?;
        Ok(Self {
            min_pixels,
            max_pixels,
            patch_size: config.patch_size.unwrap_or(DEFAULT_PATCH_SIZE),
            merge_size: config.merge_size.unwrap_or(DEFAULT_MERGE_SIZE),
            temporal_patch_size: config
                .temporal_patch_size
                .unwrap_or(DEFAULT_TEMPORAL_PATCH_SIZE),
            do_resize: config.do_resize.unwrap_or(true),
            resample: config.resample_or(Resample::Bicubic)?,
            normalization: Normalization::from_config(config, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD)?,
            do_convert_rgb: config.do_convert_rgb.unwrap_or(true),
            backend: config.backend(),
        })
    }

    fn layout(&self) -> PatchLayout {
        PatchLayout {
            patch_size: self.patch_size as usize,
            merge_size: self.merge_size as usize,
            temporal_patch_size: self.temporal_patch_size as usize,
        }
    }
}

fn pixel_bound(
    top_level: Option<u64>,
    size: Option<&SizeDict>,
    from_size: impl Fn(&SizeDict) -> Option<u64>,
    field: &'static str,
    default: u64,
) -> Result<u64, PreprocessError> {
    match (top_level, size) {
        (Some(value), _) => Ok(value),
        (None, Some(dict)) => from_size(dict).ok_or(PreprocessError::ConfigMissing { field }),
        (None, None) => Ok(default),
    }
}

/// A still image as Qwen2-VL's vision tower takes it.
#[derive(Debug, Clone, PartialEq)]
pub struct QwenPixels {
    /// `(num_patches, patch_dim)` row-major, transformers' `pixel_values` for this image.
    pub patches: Vec<f32>,
    pub num_patches: usize,
    /// 3 * temporal_patch_size * patch_size^2 (1176 for Qwen2-VL).
    pub patch_dim: usize,
    /// transformers' `image_grid_thw`: `[1, height / patch_size, width / patch_size]`.
    pub grid_thw: [usize; 3],
    pub merge_size: usize,
}

impl QwenPixels {
    /// How many `<|image_pad|>` tokens the prompt needs for this image: the merger folds merge_size^2 patches
    /// into one token.
    pub fn num_vision_tokens(&self) -> usize {
        self.num_patches / (self.merge_size * self.merge_size)
    }
}

/// Qwen2-VL's image processor, ready to run (the normalisation table is built once).
#[derive(Debug, Clone)]
pub struct Qwen2VlProcessor {
    params: Qwen2VlParams,
    lut: ChannelLut,
}

impl Qwen2VlProcessor {
    pub fn new(params: Qwen2VlParams) -> Result<Self, PreprocessError> {
        for (field, value) in [
            ("patch_size", params.patch_size),
            ("merge_size", params.merge_size),
            ("temporal_patch_size", params.temporal_patch_size),
        ] {
            if value == 0 {
                return Err(PreprocessError::ConfigInvalid {
                    field,
                    reason: "must be at least 1".to_string(),
                });
            }
        }
        if params.max_pixels == 0 {
            return Err(PreprocessError::ConfigInvalid {
                field: "max_pixels",
                reason: "must be at least 1".to_string(),
            });
        }
        params.backend.check(params.resample)?;
        let lut = ChannelLut::new(&params.normalization, params.backend);
        Ok(Self { params, lut })
    }

    pub fn from_config(config: &PreprocessorConfig) -> Result<Self, PreprocessError> {
        Self::new(Qwen2VlParams::from_config(config)?)
    }

    pub fn params(&self) -> &Qwen2VlParams {
        &self.params
    }

    /// The `(height, width)` an image of this size is processed at.
    pub fn target_size(&self, height: u32, width: u32) -> Result<(u32, u32), PreprocessError> {
        let factor = self.params.patch_size * self.params.merge_size;
        if !self.params.do_resize {
            if height == 0 || width == 0 {
                return Err(PreprocessError::ZeroSize {
                    what: "image",
                    width: u64::from(width),
                    height: u64::from(height),
                });
            }
            if height % factor != 0 || width % factor != 0 {
                return Err(PreprocessError::NotPatchAligned {
                    width,
                    height,
                    factor,
                });
            }
            return Ok((height, width));
        }
        let (h, w) = smart_resize(
            u64::from(height),
            u64::from(width),
            u64::from(factor),
            self.params.min_pixels,
            self.params.max_pixels,
        )?;
        let side = |v: u64| {
            u32::try_from(v).map_err(|_| PreprocessError::ConfigInvalid {
                field: "min_pixels",
                reason: format!(
                    "smart_resize asks for a side of {v} pixels for a {width}x{height} image"
                ),
            })
        };
        Ok((side(h)?, side(w)?))
    }

    /// transformers' `image_grid_thw` for an image of this size, without processing it.
    pub fn grid_thw(&self, height: u32, width: u32) -> Result<[usize; 3], PreprocessError> {
        let (h, w) = self.target_size(height, width)?;
        let p = self.params.patch_size as usize;
        Ok([1, h as usize / p, w as usize / p])
    }

    /// How many vision tokens an image of this size becomes, for building the prompt before (or without)
    /// processing the pixels.
    pub fn num_vision_tokens(&self, height: u32, width: u32) -> Result<usize, PreprocessError> {
        let [t, h, w] = self.grid_thw(height, width)?;
        let merge = self.params.merge_size as usize;
        Ok(t * h * w / (merge * merge))
    }
}

impl ImagePreprocessor for Qwen2VlProcessor {
    type Output = QwenPixels;

    fn converts_to_rgb(&self) -> bool {
        self.params.do_convert_rgb
    }

    fn preprocess_rgb(&self, image: &RgbImage) -> Result<QwenPixels, PreprocessError> {
        let (height, width) = self.target_size(image.height(), image.width())?;
        let resized = resize_rgb(
            image,
            width,
            height,
            self.params.resample,
            self.params.backend,
        )?;
        let layout = self.params.layout();
        let (patches, grid_h, grid_w) = patchify(&resized, &self.lut, layout)?;
        Ok(QwenPixels {
            num_patches: grid_h * grid_w,
            patch_dim: layout.patch_dim(),
            grid_thw: [1, grid_h, grid_w],
            merge_size: layout.merge_size,
            patches,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Qwen/Qwen2-VL-2B-Instruct's preprocessor_config.json (transformers 4 style: top-level pixel bounds).
    const QWEN2_VL_2B: &str = r#"{
      "min_pixels": 3136,
      "max_pixels": 12845056,
      "patch_size": 14,
      "temporal_patch_size": 2,
      "merge_size": 2,
      "image_mean": [0.48145466, 0.4578275, 0.40821073],
      "image_std": [0.26862954, 0.26130258, 0.27577711],
      "image_processor_type": "Qwen2VLImageProcessor",
      "processor_class": "Qwen2VLProcessor"
    }"#;

    /// The same settings as transformers 5 saves them: bounds inside `size`, every flag spelled out.
    const QWEN2_VL_V5: &str = r#"{
      "do_convert_rgb": true, "do_normalize": true, "do_rescale": true, "do_resize": true,
      "image_mean": [0.48145466, 0.4578275, 0.40821073],
      "image_processor_type": "Qwen2VLImageProcessorFast",
      "image_std": [0.26862954, 0.26130258, 0.27577711],
      "merge_size": 2, "patch_size": 14, "resample": 3, "rescale_factor": 0.00392156862745098,
      "size": {"longest_edge": 12845056, "shortest_edge": 3136},
      "temporal_patch_size": 2
    }"#;

    fn params(json: &str) -> Result<Qwen2VlParams, PreprocessError> {
        Qwen2VlParams::from_config(&PreprocessorConfig::from_json_str(json)?)
    }

    #[test]
    fn reads_both_config_generations_alike() {
        let v4 = params(QWEN2_VL_2B).unwrap();
        assert_eq!(v4, params(QWEN2_VL_V5).unwrap());
        assert_eq!((v4.min_pixels, v4.max_pixels), (3136, 12_845_056));
        assert_eq!(v4.normalization, Qwen2VlParams::default().normalization);
        assert_eq!(v4.resample, Resample::Bicubic);
    }

    #[test]
    fn top_level_bounds_override_size_and_old_size_keys_work() {
        let p = params(r#"{"min_pixels": 100, "size": {"shortest_edge": 5, "longest_edge": 999}}"#)
            .unwrap();
        assert_eq!((p.min_pixels, p.max_pixels), (100, 999));
        let old = params(r#"{"size": {"min_pixels": 784, "max_pixels": 3136}}"#).unwrap();
        assert_eq!((old.min_pixels, old.max_pixels), (784, 3136));
    }

    #[test]
    fn config_errors_name_the_field() {
        let missing = params(r#"{"size": {"shortest_edge": 3136}}"#).unwrap_err();
        assert!(matches!(
            missing,
            PreprocessError::ConfigMissing {
                field: "size.longest_edge"
            }
        ));
        let mean = params(r#"{"image_mean": [0.5, 0.5]}"#).unwrap_err();
        assert!(matches!(
            mean,
            PreprocessError::ConfigInvalid {
                field: "image_mean",
                ..
            }
        ));
        let std = params(r#"{"image_std": 0.0}"#).unwrap_err();
        assert!(matches!(
            std,
            PreprocessError::ConfigInvalid {
                field: "image_std",
                ..
            }
        ));
        let other = params(r#"{"image_processor_type": "CLIPImageProcessor"}"#).unwrap_err();
        assert!(matches!(
            other,
            PreprocessError::ConfigInvalid {
                field: "image_processor_type",
                ..
            }
        ));
        let nearest = params(r#"{"resample": 0}"#).unwrap_err();
        assert!(matches!(
            nearest,
            PreprocessError::ConfigInvalid {
                field: "resample",
                ..
            }
        ));
        let zero = Qwen2VlProcessor::from_config(
            &PreprocessorConfig::from_json_str(r#"{"merge_size": 0}"#).unwrap(),
        );
        assert!(matches!(
            zero,
            Err(PreprocessError::ConfigInvalid {
                field: "merge_size",
                ..
            })
        ));
    }

    #[test]
    fn backend_follows_the_class_name_and_the_setting() {
        assert_eq!(
            params(QWEN2_VL_V5).unwrap().backend,
            ImageBackend::Torchvision
        );
        assert_eq!(params("{}").unwrap().backend, ImageBackend::Torchvision);
        let pil = params(r#"{"image_processor_type": "Qwen2VLImageProcessorPil"}"#).unwrap();
        assert_eq!(pil.backend, ImageBackend::Pil);
        let chosen = pil.clone().with_backend(Some(ImageBackend::Torchvision));
        assert_eq!(chosen.backend, ImageBackend::Torchvision);
        assert_eq!(pil.clone().with_backend(None), pil);
        let boxed = Qwen2VlProcessor::new(Qwen2VlParams {
            resample: Resample::Box,
            ..Qwen2VlParams::default()
        });
        assert!(matches!(
            boxed,
            Err(PreprocessError::ConfigInvalid {
                field: "resample",
                ..
            })
        ));
    }

    #[test]
    fn type_errors_report_the_line() {
        let err = params("{\n  \"patch_size\": \"14\"\n}").unwrap_err();
        assert!(matches!(err, PreprocessError::ConfigParse { .. }));
        assert!(err.to_string().contains("line 2"), "{err}");
    }

    #[test]
    fn counts_vision_tokens_without_touching_pixels() {
        let qwen =
            Qwen2VlProcessor::from_config(&PreprocessorConfig::from_json_str(QWEN2_VL_2B).unwrap())
                .unwrap();
        // 480x640 -> 476x644 -> a 34x46 patch grid -> 1564 patches, 391 tokens after the 2x2 merge.
        assert_eq!(qwen.target_size(480, 640).unwrap(), (476, 644));
        assert_eq!(qwen.grid_thw(480, 640).unwrap(), [1, 34, 46]);
        assert_eq!(qwen.num_vision_tokens(480, 640).unwrap(), 391);
    }
}

/// How many vision tokens a set of images becomes within a processor's pixel bounds: what a run's prompts will
/// hold, shown in training logs and by `umrank inspect` so that `min_pixels` / `max_pixels` can be chosen.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageTokenCounts {
    pub images: usize,
    pub min: usize,
    pub median: usize,
    pub max: usize,
    pub total: u64,
}

impl ImageTokenCounts {
    /// The counts' distribution; `None` for no images.
    pub fn of(mut counts: Vec<usize>) -> Option<Self> {
        counts.sort_unstable();
        Some(Self {
            images: counts.len(),
            min: *counts.first()?,
            median: counts[counts.len() / 2],
            max: *counts.last()?,
            total: counts.iter().map(|&c| c as u64).sum(),
        })
    }
}

impl std::fmt::Display for ImageTokenCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} images of {} to {} tokens (median {}, {} in all)",
            self.images, self.min, self.max, self.median, self.total
        )
    }
}
