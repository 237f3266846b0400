//! The vision tower's configuration, read from a Qwen2-VL or Qwen2.5-VL `config.json`.
//!
//! The two architectures share field names with different meanings: Qwen2-VL's `vision_config.hidden_size` is
//! the merger's output width (its blocks are `embed_dim` wide), Qwen2.5-VL's is the blocks' width (the output is
//! `out_hidden_size`). So the variant must be known before the fields can be read; it is decided by
//! `model_type`. transformers 4 wrote `in_chans` where 5 writes `in_channels`, and both write only the values that
//! differ from the class defaults, so a missing field takes transformers' default for that variant.

use crate::models::layers::activation::Activation;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// Which vision tower a checkpoint carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VisionVariant {
    /// LayerNorm blocks with a QuickGELU `fc1`/`fc2` MLP, global attention in every block, LayerNorm merger.
    Qwen2Vl,
    /// RMSNorm blocks with a gated `gate_proj`/`up_proj`/`down_proj` MLP, window attention except in the
    /// full-attention blocks, RMSNorm merger.
    Qwen25Vl,
}

impl VisionVariant {
    /// The variant named by a top-level or a `vision_config` `model_type` (transformers 4 gave the vision config
    /// the model's own type, 5 appends `_vision`).
    fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "qwen2_vl" | "qwen2_vl_vision" => Some(Self::Qwen2Vl),
            "qwen2_5_vl" | "qwen2_5_vl_vision" => Some(Self::Qwen25Vl),
            _ => None,
        }
    }
}

/// Qwen2.5-VL's window attention: which blocks attend within windows and how large a window is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowAttention {
    /// Window side in pixels (112 in the released checkpoints: 4 x 4 merged tokens).
    pub window_size: usize,
    /// The blocks that attend over the whole image; all others attend within windows.
    pub fullatt_block_indexes: Vec<usize>,
}

/// The resolved vision tower configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionConfig {
    pub variant: VisionVariant,
    pub depth: usize,
    /// Width of the patch embeddings and the blocks (Qwen2-VL's `embed_dim`, Qwen2.5-VL's `hidden_size`).
    pub hidden_size: usize,
    pub num_heads: usize,
    /// Width of the blocks' MLP (Qwen2-VL: `int(embed_dim * mlp_ratio)`).
    pub intermediate_size: usize,
    pub in_channels: usize,
    pub patch_size: usize,
    pub temporal_patch_size: usize,
    pub spatial_merge_size: usize,
    /// Present for Qwen2.5-VL only.
    pub window: Option<WindowAttention>,
    /// Width of the merged image tokens, the text model's hidden size.
    pub out_hidden_size: usize,
    pub hidden_act: Activation,
    /// Base of the 2-D rotary (10000 unless a transformers-5 `rope_parameters` says otherwise).
    pub rope_theta: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum VisionConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("config.json: `{field}` must be a JSON object")]
    NotAnObject { field: &'static str },
    #[error("config.json: no `vision_config`")]
    MissingVisionConfig,
    #[error("config.json: model_type {top:?} / vision_config.model_type {vision:?} is neither Qwen2-VL nor Qwen2.5-VL")]
    UnknownVariant {
        top: Option<String>,
        vision: Option<String>,
    },
    #[error("config.json: `{field}`: {source}")]
    Field {
        field: String,
        source: serde_json::Error,
    },
    #[error("config.json: `vision_config.{field}` is {value}: {reason}")]
    Invalid {
        field: &'static str,
        value: String,
        reason: &'static str,
    },
}

impl VisionConfig {
    /// Reads `config.json` at `path`.
    pub fn from_path(path: &Path) -> Result<Self, VisionConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| VisionConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let json: Value =
            serde_json::from_str(&text).map_err(|source| VisionConfigError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        Self::from_model_config(&json)
    }

    /// Reads the `vision_config` of a whole model config (transformers 4 or 5 layout).
    ///
    /// The merged tokens must be as wide as the text model's hidden states, so when the vision config does not
    /// say how wide they are, the text model's `hidden_size` (top level in transformers 4, `text_config` in 5)
    /// decides before transformers' class default does.
    pub fn from_model_config(config: &Value) -> Result<Self, VisionConfigError> {
        let top = as_object(config, "config.json")?;
        let vision = match top.get("vision_config") {
            Some(vision) => as_object(vision, "vision_config")?,
            None => return Err(VisionConfigError::MissingVisionConfig),
        };
        let variant = variant(top, vision)?;
        let text_hidden_size = text_hidden_size(top)?;
        let vf = |name| vision_field::<usize>(vision, name);
        let specific = match variant {
            VisionVariant::Qwen2Vl => VariantFields::qwen2_vl(vision)?,
            VisionVariant::Qwen25Vl => VariantFields::qwen2_5_vl(vision)?,
        };
        let rope_theta = match vision.get("rope_parameters") {
            Some(Value::Object(rope)) => {
                field(rope, "vision_config.rope_parameters.", "rope_theta")?
            }
            _ => None,
        };
        let in_channels = match vf("in_channels")? {
            Some(channels) => Some(channels),
            None => vf("in_chans")?,
        };
        let config = Self {
            variant,
            depth: vf("depth")?.unwrap_or(32),
            hidden_size: specific.hidden_size,
            num_heads: vf("num_heads")?.unwrap_or(16),
            intermediate_size: specific.intermediate_size,
            in_channels: in_channels.unwrap_or(3),
            patch_size: vf("patch_size")?.unwrap_or(14),
            temporal_patch_size: vf("temporal_patch_size")?.unwrap_or(2),
            spatial_merge_size: vf("spatial_merge_size")?.unwrap_or(2),
            window: specific.window,
            out_hidden_size: specific
                .out_hidden_size
                .or(text_hidden_size)
                .unwrap_or(3584),
            hidden_act: vision_field(vision, "hidden_act")?.unwrap_or(specific.default_act),
            rope_theta: rope_theta.unwrap_or(10000.0),
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), VisionConfigError> {
        let positive = [
            ("depth", self.depth),
            ("hidden_size", self.hidden_size),
            ("num_heads", self.num_heads),
            ("intermediate_size", self.intermediate_size),
            ("in_channels", self.in_channels),
            ("patch_size", self.patch_size),
            ("temporal_patch_size", self.temporal_patch_size),
            ("spatial_merge_size", self.spatial_merge_size),
            ("out_hidden_size", self.out_hidden_size),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(invalid(name, value, "must be positive"));
            }
        }
        if self.hidden_size % self.num_heads != 0 {
            return Err(invalid(
                "num_heads",
                self.num_heads,
                "must divide the blocks' hidden size",
            ));
        }
        if self.head_dim() % 4 != 0 {
            return Err(invalid(
                "num_heads",
                self.num_heads,
                "leaves a head dimension that is not a multiple of 4, which the 2-D rotary needs",
            ));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return Err(invalid(
                "rope_parameters.rope_theta",
                self.rope_theta,
                "must be positive",
            ));
        }
        if let Some(window) = &self.window {
            if window.window_size < self.spatial_merge_size * self.patch_size {
                return Err(invalid(
                    "window_size",
                    window.window_size,
                    "must span at least one merged token (spatial_merge_size * patch_size pixels)",
                ));
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Length of one flattened patch row: `in_channels * temporal_patch_size * patch_size^2` (1176 for 3 x 2 x
    /// 14 x 14).
    pub fn patch_dim(&self) -> usize {
        self.in_channels * self.temporal_patch_size * self.patch_size * self.patch_size
    }

    /// Patches merged into one output token, `spatial_merge_size^2`.
    pub fn merge_unit(&self) -> usize {
        self.spatial_merge_size * self.spatial_merge_size
    }

    /// Window side in merged tokens, for Qwen2.5-VL.
    pub fn window_merged_tokens(&self) -> Option<usize> {
        self.window
            .as_ref()
            .map(|window| window.window_size / self.spatial_merge_size / self.patch_size)
    }

    /// Whether block `index` attends within windows.
    pub fn is_windowed_block(&self, index: usize) -> bool {
        self.window
            .as_ref()
            .is_some_and(|window| !window.fullatt_block_indexes.contains(&index))
    }
}

/// The fields whose names or meaning differ between the variants, with transformers' defaults applied.
struct VariantFields {
    hidden_size: usize,
    intermediate_size: usize,
    /// `None` when the config leaves it out.
    out_hidden_size: Option<usize>,
    window: Option<WindowAttention>,
    default_act: Activation,
}

impl VariantFields {
    fn qwen2_vl(vision: &Map<String, Value>) -> Result<Self, VisionConfigError> {
        let hidden_size = vision_field(vision, "embed_dim")?.unwrap_or(1280);
        let mlp_ratio: f64 = vision_field(vision, "mlp_ratio")?.unwrap_or(4.0);
        if !(mlp_ratio.is_finite() && mlp_ratio > 0.0) {
            return Err(invalid("mlp_ratio", mlp_ratio, "must be positive"));
        }
        Ok(Self {
            hidden_size,
            // Python's int() of the product, as transformers sizes the MLP.
            intermediate_size: (hidden_size as f64 * mlp_ratio) as usize,
            out_hidden_size: vision_field(vision, "hidden_size")?,
            window: None,
            default_act: Activation::QuickGelu,
        })
    }

    fn qwen2_5_vl(vision: &Map<String, Value>) -> Result<Self, VisionConfigError> {
        Ok(Self {
            hidden_size: vision_field(vision, "hidden_size")?.unwrap_or(3584),
            intermediate_size: vision_field(vision, "intermediate_size")?.unwrap_or(3420),
            out_hidden_size: vision_field(vision, "out_hidden_size")?,
            window: Some(WindowAttention {
                window_size: vision_field(vision, "window_size")?.unwrap_or(112),
                fullatt_block_indexes: vision_field(vision, "fullatt_block_indexes")?
                    .unwrap_or_else(|| vec![7, 15, 23, 31]),
            }),
            default_act: Activation::Silu,
        })
    }
}

/// The top-level `model_type` decides; a fine-tune with its own top-level type falls back to the vision config's.
fn variant(
    top: &Map<String, Value>,
    vision: &Map<String, Value>,
) -> Result<VisionVariant, VisionConfigError> {
    let top_type: Option<String> = field(top, "", "model_type")?;
    let vision_type: Option<String> = field(vision, "vision_config.", "model_type")?;
    top_type
        .as_deref()
        .and_then(VisionVariant::from_model_type)
        .or_else(|| {
            vision_type
                .as_deref()
                .and_then(VisionVariant::from_model_type)
        })
        .ok_or(VisionConfigError::UnknownVariant {
            top: top_type,
            vision: vision_type,
        })
}

fn text_hidden_size(top: &Map<String, Value>) -> Result<Option<usize>, VisionConfigError> {
    match top.get("text_config") {
        Some(Value::Object(text)) => field(text, "text_config.", "hidden_size"),
        _ => field(top, "", "hidden_size"),
    }
}

fn as_object<'a>(
    value: &'a Value,
    field: &'static str,
) -> Result<&'a Map<String, Value>, VisionConfigError> {
    value
        .as_object()
        .ok_or(VisionConfigError::NotAnObject { field })
}

/// `name` of `object` deserialised as `T`; absent or `null` is `None`.
fn field<T: DeserializeOwned>(
    object: &Map<String, Value>,
    prefix: &str,
    name: &str,
) -> Result<Option<T>, VisionConfigError> {
    match object.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => T::deserialize(value)
            .map(Some)
            .map_err(|source| VisionConfigError::Field {
                field: format!("{prefix}{name}"),
                source,
            }),
    }
}

fn vision_field<T: DeserializeOwned>(
    vision: &Map<String, Value>,
    name: &str,
) -> Result<Option<T>, VisionConfigError> {
    field(vision, "vision_config.", name)
}

fn invalid(field: &'static str, value: impl ToString, reason: &'static str) -> VisionConfigError {
    VisionConfigError::Invalid {
        field,
        value: value.to_string(),
        reason,
    }
}
