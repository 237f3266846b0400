//! The sizes of a model as its `config.json` states them: everything the memory plan needs, read without the
//! weights, so that a run can be planned before they are downloaded.

use std::path::Path;

use serde_json::Value;

use super::PlanError;
use crate::models::adapters::lora::DECODER_TARGETS;
use crate::models::formats::hf_config::DecoderConfig;
use crate::models::qwen2_vl::{VisionConfig, VisionVariant};

/// The text decoder's sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderShape {
    pub hidden: u64,
    pub intermediate: u64,
    pub layers: u64,
    pub heads: u64,
    pub kv_heads: u64,
    pub head_dim: u64,
    pub vocab: u64,
    pub tied: bool,
    pub qkv_bias: bool,
    pub o_bias: bool,
    pub qk_norm: bool,
}

/// A Qwen2-VL / Qwen2.5-VL vision tower's sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct VisionShape {
    pub depth: u64,
    pub hidden: u64,
    pub intermediate: u64,
    pub heads: u64,
    pub patch_dim: u64,
    /// Patches per merged token (`spatial_merge_size^2`).
    pub merge_unit: u64,
    /// Pixels along one side of a merged token (`patch_size * spatial_merge_size`).
    pub merged_side: u64,
    pub out_hidden: u64,
    /// Qwen2.5-VL: RMS norms and a gated MLP; Qwen2-VL: layer norms and a plain MLP.
    pub gated: bool,
}

/// A model: a decoder, with a vision tower for a VL model.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelShape {
    pub decoder: DecoderShape,
    pub vision: Option<VisionShape>,
}

impl ModelShape {
    /// Reads the `config.json` at `path` (transformers 4 or 5 layout).
    pub fn read(path: &Path) -> Result<Self, PlanError> {
        let text = std::fs::read_to_string(path).map_err(|source| PlanError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let json: Value = serde_json::from_str(&text).map_err(|e| PlanError::Config {
            path: path.to_path_buf(),
            message: format!("invalid JSON: {e}"),
        })?;
        Self::from_json(&json, path)
    }

    /// The shape a parsed `config.json` describes; `path` names it in errors.
    pub fn from_json(json: &Value, path: &Path) -> Result<Self, PlanError> {
        let bad = |message: String| PlanError::Config {
            path: path.to_path_buf(),
            message,
        };
        let decoder = DecoderConfig::from_json(json, path).map_err(|e| bad(e.to_string()))?;
        let vision = match json.get("vision_config") {
            Some(_) => Some(
                VisionConfig::from_model_config(json)
                    .map(|v| VisionShape::of(&v))
                    .map_err(|e| bad(e.to_string()))?,
            ),
            None => None,
        };
        Ok(Self {
            decoder: DecoderShape::of(&decoder),
            vision,
        })
    }

    /// Every weight of the model.
    pub fn params(&self) -> u64 {
        self.decoder.params() + self.vision.as_ref().map_or(0, VisionShape::params)
    }
}

impl DecoderShape {
    fn of(config: &DecoderConfig) -> Self {
        let n = |v: usize| v as u64;
        Self {
            hidden: n(config.hidden_size),
            intermediate: n(config.intermediate_size),
            layers: n(config.num_hidden_layers),
            heads: n(config.num_attention_heads),
            kv_heads: n(config.num_key_value_heads),
            head_dim: n(config.head_dim),
            vocab: n(config.vocab_size),
            tied: config.tie_word_embeddings,
            qkv_bias: config.qkv_bias,
            o_bias: config.o_bias,
            qk_norm: config.qk_norm,
        }
    }

    /// The width of all query heads together.
    pub fn q_width(&self) -> u64 {
        self.heads * self.head_dim
    }

    /// The width of all key (or value) heads together.
    pub fn kv_width(&self) -> u64 {
        self.kv_heads * self.head_dim
    }

    /// `(in, out, bias)` of each projection of a layer, in [`DECODER_TARGETS`] order.
    pub fn projections(&self) -> [(u64, u64, bool); 7] {
        let (h, q, kv, i) = (
            self.hidden,
            self.q_width(),
            self.kv_width(),
            self.intermediate,
        );
        [
            (h, q, self.qkv_bias),
            (h, kv, self.qkv_bias),
            (h, kv, self.qkv_bias),
            (q, h, self.o_bias),
            (h, i, false),
            (h, i, false),
            (i, h, false),
        ]
    }

    /// The weights of one layer.
    pub fn layer_params(&self) -> u64 {
        let projections: u64 = self
            .projections()
            .iter()
            .map(|&(i, o, bias)| i * o + if bias { o } else { 0 })
            .sum();
        let qk_norm = if self.qk_norm { 2 * self.head_dim } else { 0 };
        projections + 2 * self.hidden + qk_norm
    }

    /// Every decoder weight: embeddings, layers, final norm and (untied) LM head.
    pub fn params(&self) -> u64 {
        let head = if self.tied {
            0
        } else {
            self.vocab * self.hidden
        };
        self.vocab * self.hidden + self.layers * self.layer_params() + self.hidden + head
    }

    /// The weights of rank-`rank` LoRA adapters on the projections named in `targets`, over all layers.
    pub fn lora_params(&self, rank: u64, targets: &[String]) -> u64 {
        let per_layer: u64 = DECODER_TARGETS
            .iter()
            .zip(self.projections())
            .filter(|(name, _)| targets.iter().any(|t| t == *name))
            .map(|(_, (i, o, _))| rank * (i + o))
            .sum();
        self.layers * per_layer
    }
}

impl VisionShape {
    fn of(config: &VisionConfig) -> Self {
        let n = |v: usize| v as u64;
        Self {
            depth: n(config.depth),
            hidden: n(config.hidden_size),
            intermediate: n(config.intermediate_size),
            heads: n(config.num_heads),
            patch_dim: n(config.patch_dim()),
            merge_unit: n(config.merge_unit()),
            merged_side: n(config.patch_size * config.spatial_merge_size),
            out_hidden: n(config.out_hidden_size),
            gated: config.variant == VisionVariant::Qwen25Vl,
        }
    }

    /// The weights of one block.
    pub fn block_params(&self) -> u64 {
        let (h, i) = (self.hidden, self.intermediate);
        let norms = if self.gated { 2 * h } else { 4 * h };
        let attention = h * 3 * h + 3 * h + h * h + h;
        let mlp = if self.gated {
            2 * (h * i + i) + i * h + h
        } else {
            h * i + i + i * h + h
        };
        norms + attention + mlp
    }

    /// Every weight of the tower: patch embedding, blocks and merger.
    pub fn params(&self) -> u64 {
        let merged = self.hidden * self.merge_unit;
        let ln_q = if self.gated {
            self.hidden
        } else {
            2 * self.hidden
        };
        let merger = ln_q + merged * merged + merged + merged * self.out_hidden + self.out_hidden;
        self.hidden * self.patch_dim + self.depth * self.block_params() + merger
    }

    /// Patches of the largest image `max_pixels` allows.
    pub fn max_patches(&self, max_pixels: u64) -> u64 {
        self.max_merged_tokens(max_pixels) * self.merge_unit
    }

    /// Merged (decoder) tokens of the largest image `max_pixels` allows.
    pub fn max_merged_tokens(&self, max_pixels: u64) -> u64 {
        (max_pixels / (self.merged_side * self.merged_side)).max(1)
    }
}
