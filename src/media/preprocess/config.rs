//! `preprocessor_config.json` as Hugging Face writes it, read leniently and interpreted by each processor.
//!
//! The file's fields mean different things to different processors (Qwen2-VL's `size.shortest_edge` is a pixel
//! *count*, CLIP's is a side length), so this module only parses: [`PreprocessorConfig`] keeps every field optional,
//! and the processors' `from_config` constructors apply transformers' per-class defaults and validate. Unknown
//! fields are ignored, as transformers ignores them.

use std::path::Path;

use serde::Deserialize;

use super::error::PreprocessError;
use super::resize::{ImageBackend, Resample};

/// The fields of a `preprocessor_config.json` that image preprocessing reads. `None` means absent or `null`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct PreprocessorConfig {
    pub image_processor_type: Option<String>,
    /// What older configs (e.g. openai/clip-vit-base-patch32) name the processor by instead.
    pub feature_extractor_type: Option<String>,
    pub do_resize: Option<bool>,
    pub size: Option<SizeConfig>,
    /// A PIL resampling code (0 nearest, 1 lanczos, 2 bilinear, 3 bicubic, 4 box, 5 hamming).
    pub resample: Option<u32>,
    pub do_center_crop: Option<bool>,
    pub crop_size: Option<SizeConfig>,
    pub do_rescale: Option<bool>,
    pub rescale_factor: Option<f64>,
    pub do_normalize: Option<bool>,
    pub image_mean: Option<ChannelValues>,
    pub image_std: Option<ChannelValues>,
    pub do_convert_rgb: Option<bool>,
    pub min_pixels: Option<u64>,
    pub max_pixels: Option<u64>,
    pub patch_size: Option<u32>,
    pub temporal_patch_size: Option<u32>,
    pub merge_size: Option<u32>,
}

/// `size` / `crop_size`: a bare integer in old feature-extractor configs, otherwise a dict whose keys depend on the
/// processor (`{"shortest_edge"}`, `{"height", "width"}`, Qwen2-VL's `{"shortest_edge", "longest_edge"}` pixel
/// counts, or the older `{"min_pixels", "max_pixels"}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum SizeConfig {
    Int(u64),
    Dict(SizeDict),
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct SizeDict {
    pub shortest_edge: Option<u64>,
    pub longest_edge: Option<u64>,
    pub height: Option<u64>,
    pub width: Option<u64>,
    pub min_pixels: Option<u64>,
    pub max_pixels: Option<u64>,
}

/// `image_mean` / `image_std`: per channel, or one value for all channels (transformers accepts both).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ChannelValues {
    Same(f64),
    PerChannel(Vec<f64>),
}

/// The image processor families this library reproduces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProcessorKind {
    Qwen2Vl,
    Clip,
    Siglip,
}

impl PreprocessorConfig {
    /// The file's name in a model directory.
    pub const FILE_NAME: &'static str = "preprocessor_config.json";

    pub fn from_json_str(json: &str) -> Result<Self, PreprocessError> {
        serde_json::from_str(json)
            .map_err(|source| PreprocessError::ConfigParse { path: None, source })
    }

    pub fn from_file(path: &Path) -> Result<Self, PreprocessError> {
        let json = std::fs::read_to_string(path).map_err(|source| PreprocessError::ConfigIo {
            path: path.to_path_buf(),
            source,
        })?;
        serde_json::from_str(&json).map_err(|source| PreprocessError::ConfigParse {
            path: Some(path.to_path_buf()),
            source,
        })
    }

    /// The processor family named by `image_processor_type` (or the older `feature_extractor_type`). The `Fast`
    /// (torchvision) and `Pil` variants are the same processor for our purposes, and Qwen2.5-VL checkpoints name
    /// Qwen2-VL's processor.
    pub fn kind(&self) -> Result<ProcessorKind, PreprocessError> {
        let name = self
            .processor_name()
            .ok_or(PreprocessError::ConfigMissing {
                field: "image_processor_type",
            })?;
        let base = name
            .strip_suffix("Fast")
            .or_else(|| name.strip_suffix("Pil"))
            .unwrap_or(name);
        match base {
            "Qwen2VLImageProcessor" => Ok(ProcessorKind::Qwen2Vl),
            "CLIPImageProcessor" | "CLIPFeatureExtractor" => Ok(ProcessorKind::Clip),
            "SiglipImageProcessor" => Ok(ProcessorKind::Siglip),
            _ => Err(PreprocessError::ConfigInvalid {
                field: "image_processor_type",
                reason: format!("`{name}` is not one of Qwen2VLImageProcessor, CLIPImageProcessor, SiglipImageProcessor"),
            }),
        }
    }

    /// Rejects a config that names a different processor family than the one being built from it; a config without
    /// `image_processor_type` is accepted, since the caller chose the family.
    pub(crate) fn check_kind(&self, expected: ProcessorKind) -> Result<(), PreprocessError> {
        if self.processor_name().is_none() {
            return Ok(());
        }
        let kind = self.kind()?;
        if kind == expected {
            Ok(())
        } else {
            Err(PreprocessError::ConfigInvalid {
                field: "image_processor_type",
                reason: format!("config is for {kind:?}, not {expected:?}"),
            })
        }
    }

    /// The backend the file names: transformers 5 calls its PIL processors `...Pil`; every other name
    /// (`Qwen2VLImageProcessor`, transformers 4's `...Fast`, none at all) is what `AutoImageProcessor` loads by
    /// default, the torchvision one.
    pub fn backend(&self) -> ImageBackend {
        match self.processor_name() {
            Some(name) if name.ends_with("Pil") => ImageBackend::Pil,
            _ => ImageBackend::Torchvision,
        }
    }

    fn processor_name(&self) -> Option<&str> {
        self.image_processor_type
            .as_deref()
            .or(self.feature_extractor_type.as_deref())
    }

    pub(crate) fn resample_or(&self, default: Resample) -> Result<Resample, PreprocessError> {
        self.resample.map_or(Ok(default), Resample::from_pil_code)
    }
}

/// Normalisation constants, resolved to one value per RGB channel.
///
/// Values stay f64 until this point and are then rounded once to f32, as `np.array(python_floats, dtype=float32)`
/// does; writing the defaults as f32 literals would round decimal -> f32 directly, which can differ in the last bit.
pub(crate) fn channel_values(
    values: Option<&ChannelValues>,
    default: [f64; 3],
    field: &'static str,
) -> Result<[f32; 3], PreprocessError> {
    let resolved = match values {
        None => default.map(|v| v as f32),
        Some(ChannelValues::Same(v)) => [*v as f32; 3],
        Some(ChannelValues::PerChannel(v)) => match v.as_slice() {
            [r, g, b] => [*r as f32, *g as f32, *b as f32],
            _ => {
                return Err(PreprocessError::ConfigInvalid {
                    field,
                    reason: format!("expected 3 values (one per RGB channel), got {}", v.len()),
                })
            }
        },
    };
    if resolved.iter().all(|v| v.is_finite()) {
        Ok(resolved)
    } else {
        Err(PreprocessError::ConfigInvalid {
            field,
            reason: format!("values must be finite, got {resolved:?}"),
        })
    }
}

/// A side length that must fit an image dimension.
pub(crate) fn side(value: u64, field: &'static str) -> Result<u32, PreprocessError> {
    match u32::try_from(value) {
        Ok(v) if v > 0 => Ok(v),
        _ => Err(PreprocessError::ConfigInvalid {
            field,
            reason: format!("must be between 1 and {}, got {value}", u32::MAX),
        }),
    }
}
