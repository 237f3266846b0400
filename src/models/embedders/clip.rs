//! CLIP dual encoders: the differentiable towers of [`super::clip_towers`], with the projections and the text
//! pooling done as transformers does them.
//!
//! Text is pooled at the first `eos_token_id`, as transformers does for current configs (any vocabulary), or at
//! the largest token id for configs whose `eos_token_id` is the legacy 2. [`ClipModel`] loads the same weight names
//! as transformers' `CLIPModel`, and can also be built with seeded random weights ([`ClipModel::random`]) and
//! trained (the demo's embedder, [`crate::embedder`]).

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::init::Init;
use candle_nn::{Linear, Module, VarBuilder, VarMap};
use serde::Deserialize;

use super::checkpoint::ModelDir;
use super::clip_towers::{flat_positions, EncoderShape, TextTower, VisionTower};
use super::dual::{DualEncoder, Shape, Towers};
use super::error::{compute, EmbedderError};
use super::text::{Padding, TextSettings, TokenBatch};
use super::{l2_normalised_rows, project_rows, row_by_row, EmbedderOptions, CONFIG_FILE};
use crate::models::init::seeded_var_builder;
use crate::models::layers::activation::Activation;

/// The `eos_token_id` of configs written before transformers PR #24773, which pool at the largest token id.
const LEGACY_EOS_TOKEN_ID: u32 = 2;

/// transformers' `CLIPConfig`, the fields the model uses, with transformers' defaults.
#[derive(Debug, Clone, Deserialize)]
pub struct ClipConfig {
    /// Width of both projections (the embedding size).
    #[serde(default = "defaults::projection_dim")]
    pub projection_dim: usize,
    #[serde(default = "defaults::logit_scale_init_value")]
    pub logit_scale_init_value: f64,
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClipTextConfig {
    #[serde(default = "defaults::vocab_size")]
    pub vocab_size: usize,
    #[serde(default = "defaults::text_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::text_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::text_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::max_position_embeddings")]
    pub max_position_embeddings: usize,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: String,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "defaults::pad_token_id")]
    pub pad_token_id: u32,
    #[serde(default = "defaults::eos_token_id")]
    pub eos_token_id: u32,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ClipVisionConfig {
    #[serde(default = "defaults::vision_hidden_size")]
    pub hidden_size: usize,
    #[serde(default = "defaults::vision_intermediate_size")]
    pub intermediate_size: usize,
    #[serde(default = "defaults::layers")]
    pub num_hidden_layers: usize,
    #[serde(default = "defaults::vision_heads")]
    pub num_attention_heads: usize,
    #[serde(default = "defaults::num_channels")]
    pub num_channels: usize,
    #[serde(default = "defaults::image_size")]
    pub image_size: usize,
    #[serde(default = "defaults::patch_size")]
    pub patch_size: usize,
    #[serde(default = "defaults::hidden_act")]
    pub hidden_act: String,
    #[serde(default = "defaults::layer_norm_eps")]
    pub layer_norm_eps: f64,
}

/// transformers 5's `CLIPTextConfig` / `CLIPVisionConfig` / `CLIPConfig` defaults, for configs that leave a
/// field out.
mod defaults {
    pub fn projection_dim() -> usize {
        512
    }
    pub fn logit_scale_init_value() -> f64 {
        2.6592
    }
    pub fn vocab_size() -> usize {
        49408
    }
    pub fn text_hidden_size() -> usize {
        512
    }
    pub fn text_intermediate_size() -> usize {
        2048
    }
    pub fn layers() -> usize {
        12
    }
    pub fn text_heads() -> usize {
        8
    }
    pub fn max_position_embeddings() -> usize {
        77
    }
    pub fn hidden_act() -> String {
        "quick_gelu".into()
    }
    pub fn layer_norm_eps() -> f64 {
        1e-5
    }
    pub fn pad_token_id() -> u32 {
        1
    }
    pub fn eos_token_id() -> u32 {
        49407
    }
    pub fn vision_hidden_size() -> usize {
        768
    }
    pub fn vision_intermediate_size() -> usize {
        3072
    }
    pub fn vision_heads() -> usize {
        12
    }
    pub fn num_channels() -> usize {
        3
    }
    pub fn image_size() -> usize {
        224
    }
    pub fn patch_size() -> usize {
        32
    }
}

impl ClipConfig {
    /// Reads `dir/config.json`.
    pub fn read(dir: &Path) -> Result<Self, EmbedderError> {
        Self::parse(&mut ModelDir::new(dir))
    }

    fn parse(files: &mut ModelDir) -> Result<Self, EmbedderError> {
        let config: Self = files.json(CONFIG_FILE)?;
        config
            .check()
            .map_err(|(field, reason)| files.config_error(CONFIG_FILE, field, reason))?;
        Ok(config)
    }

    /// What the towers cannot represent, as `(field, reason)`: an unknown activation, heads that do not divide
    /// the width, non-RGB input, a patch larger than the image.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let (text, vision) = (&self.text_config, &self.vision_config);
        for (field, act) in [
            ("text_config.hidden_act", &text.hidden_act),
            ("vision_config.hidden_act", &vision.hidden_act),
        ] {
            parse_activation(act).map_err(|reason| (field, reason))?;
        }
        for (field, hidden, heads) in [
            (
                "text_config.num_attention_heads",
                text.hidden_size,
                text.num_attention_heads,
            ),
            (
                "vision_config.num_attention_heads",
                vision.hidden_size,
                vision.num_attention_heads,
            ),
        ] {
            if heads == 0 || hidden % heads != 0 {
                return Err((
                    field,
                    format!("{heads} heads do not divide hidden_size {hidden}"),
                ));
            }
        }
        if vision.num_channels != 3 {
            return Err((
                "vision_config.num_channels",
                format!(
                    "{} channels, only RGB (3) is supported",
                    vision.num_channels
                ),
            ));
        }
        if vision.patch_size == 0 || vision.image_size < vision.patch_size {
            return Err((
                "vision_config.patch_size",
                format!(
                    "patch size {} does not fit image size {}",
                    vision.patch_size, vision.image_size
                ),
            ));
        }
        Ok(())
    }

    fn text_shape(&self) -> Result<EncoderShape, String> {
        let text = &self.text_config;
        Ok(EncoderShape {
            hidden: text.hidden_size,
            intermediate: text.intermediate_size,
            heads: text.num_attention_heads,
            layers: text.num_hidden_layers,
            eps: text.layer_norm_eps,
            activation: parse_activation(&text.hidden_act)?,
        })
    }

    fn vision_shape(&self) -> Result<EncoderShape, String> {
        let vision = &self.vision_config;
        Ok(EncoderShape {
            hidden: vision.hidden_size,
            intermediate: vision.intermediate_size,
            heads: vision.num_attention_heads,
            layers: vision.num_hidden_layers,
            eps: vision.layer_norm_eps,
            activation: parse_activation(&vision.hidden_act)?,
        })
    }
}

/// A transformers `hidden_act` name as the model layer's activation.
fn parse_activation(name: &str) -> Result<Activation, String> {
    serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| format!("activation `{name}` is not supported"))
}

/// transformers' `CLIPModel` on the model layer's differentiable towers: unnormalised projected features and the logit scale.
#[derive(Debug, Clone)]
pub struct ClipModel {
    text: TextTower,
    vision: VisionTower,
    text_projection: Linear,
    visual_projection: Linear,
    logit_scale: Tensor,
    eos_token_id: u32,
}

impl ClipModel {
    /// Builds the model from `vb` with transformers' weight names (`text_model.*`, `vision_model.*`,
    /// `text_projection`, `visual_projection`, `logit_scale`). `config` must pass [`ClipConfig::check`].
    pub fn new(config: &ClipConfig, vb: VarBuilder) -> candle_core::Result<Self> {
        let text_shape = config.text_shape().map_err(candle_core::Error::Msg)?;
        let vision_shape = config.vision_shape().map_err(candle_core::Error::Msg)?;
        let text = TextTower::new(
            &text_shape,
            config.text_config.vocab_size,
            config.text_config.max_position_embeddings,
            vb.pp("text_model"),
        )?;
        let vision = VisionTower::new(
            &vision_shape,
            config.vision_config.image_size,
            config.vision_config.patch_size,
            vb.pp("vision_model"),
        )?;
        let text_projection = candle_nn::linear_no_bias(
            config.text_config.hidden_size,
            config.projection_dim,
            vb.pp("text_projection"),
        )?;
        let visual_projection = candle_nn::linear_no_bias(
            config.vision_config.hidden_size,
            config.projection_dim,
            vb.pp("visual_projection"),
        )?;
        let logit_scale = vb.get_with_hints(
            (),
            "logit_scale",
            Init::Const(config.logit_scale_init_value),
        )?;
        Ok(Self {
            text,
            vision,
            text_projection,
            visual_projection,
            logit_scale,
            eos_token_id: config.text_config.eos_token_id,
        })
    }

    /// A model with seeded random weights, all of them trainable variables in the returned `VarMap` under
    /// transformers' names (so `VarMap::save` writes a loadable model.safetensors).
    pub fn random(
        config: &ClipConfig,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<(Self, VarMap)> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, dtype, device);
        let model = Self::new(config, vb)?;
        Ok((model, varmap))
    }

    /// Where each row of token ids is pooled: the first `eos_token_id`, or for legacy configs (eos id 2) the
    /// first occurrence of the row's largest id. `Err(row)` names a row without an end-of-text token.
    pub fn pooling_positions(&self, ids: &[Vec<u32>]) -> Result<Vec<usize>, usize> {
        ids.iter()
            .enumerate()
            .map(|(row, ids)| eos_position(ids, self.eos_token_id).ok_or(row))
            .collect()
    }

    /// Projected text features `(batch, projection_dim)` of `(batch, len)` token ids, pooled at `positions`
    /// (from [`Self::pooling_positions`]). Padding needs no mask: attention is causal and padding follows the
    /// pooled token.
    pub fn text_features(
        &self,
        input_ids: &Tensor,
        positions: &[usize],
    ) -> candle_core::Result<Tensor> {
        self.text_projection
            .forward(&self.pooled_text(input_ids, positions)?)
    }

    /// The text tower's states at `positions`, `(batch, hidden)`, before the projection.
    fn pooled_text(&self, input_ids: &Tensor, positions: &[usize]) -> candle_core::Result<Tensor> {
        let (batch, len) = input_ids.dims2()?;
        if positions.len() != batch || positions.iter().any(|p| *p >= len) {
            candle_core::bail!(
                "pooling positions {positions:?} do not fit token ids of shape ({batch}, {len})"
            )
        }
        let hidden = self.text.forward(input_ids)?;
        let flat_index = Tensor::new(flat_positions(positions, len), input_ids.device())?;
        hidden.flatten_to(1)?.index_select(&flat_index, 0)
    }

    /// Projected image features `(batch, projection_dim)` of `(batch, 3, image_size, image_size)` pixel values.
    pub fn image_features(&self, pixel_values: &Tensor) -> candle_core::Result<Tensor> {
        self.visual_projection
            .forward(&self.vision.forward(pixel_values)?)
    }

    /// The log of the contrastive temperature's inverse, as stored (transformers applies `exp`).
    pub fn logit_scale(&self) -> &Tensor {
        &self.logit_scale
    }
}

fn eos_position(ids: &[u32], eos: u32) -> Option<usize> {
    if eos == LEGACY_EOS_TOKEN_ID {
        let max = ids.iter().max()?;
        ids.iter().position(|id| id == max)
    } else {
        ids.iter().position(|id| *id == eos)
    }
}

/// A CLIP checkpoint as an [`Embedder`](super::Embedder) of texts and images.
pub type ClipEmbedder = DualEncoder<ClipModel>;

impl ClipEmbedder {
    /// Loads config.json, model.safetensors, tokenizer.json and preprocessor_config.json from `dir`.
    pub fn load(dir: &Path, options: &EmbedderOptions) -> Result<Self, EmbedderError> {
        let mut files = ModelDir::new(dir);
        let config = ClipConfig::parse(&mut files)?;
        let shape = Shape {
            text: TextSettings {
                max_len: config.text_config.max_position_embeddings,
                pad_id: config.text_config.pad_token_id,
                padding: Padding::Bucketed,
            },
            image_size: config.vision_config.image_size,
            dim: config.projection_dim,
        };
        DualEncoder::load_with(files, shape, options, |vb| ClipModel::new(&config, vb))
    }
}

impl Towers for ClipModel {
    const FAMILY: &'static str = "clip";

    /// [`Self::image_features`], on the CPU one image per forward pass: the patch embedding's batched matmul over
    /// a broadcast kernel rounds an image differently alone and in a batch, which the tests caught, so each image
    /// gets shapes that depend on it alone (docs/mining.md#batch-invariance). CUDA kernels are not batch-invariant
    /// anyway, and there batching pays.
    fn embed_pixels(&self, pixel_values: &Tensor) -> Result<Vec<Vec<f32>>, EmbedderError> {
        let pooled = if pixel_values.device().is_cpu() {
            row_by_row(pixel_values, |image| self.vision.forward(image))
        } else {
            self.vision.forward(pixel_values)
        };
        pooled
            .and_then(|pooled| project_rows(&self.visual_projection, &pooled))
            .and_then(|features| l2_normalised_rows(&features))
            .map_err(compute("clip image forward"))
    }

    /// [`Self::text_features`] with the projection taken row by row (see [`Self::embed_pixels`]).
    fn embed_tokens(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>, EmbedderError> {
        let positions = self
            .pooling_positions(&batch.ids)
            .map_err(|row| EmbedderError::Text {
                index: batch.indices[row],
                reason: format!(
                    "no end-of-text token (id {}) after tokenization: the tokenizer must add it",
                    self.eos_token_id
                ),
            })?;
        self.pooled_text(&batch.input_ids, &positions)
            .and_then(|pooled| project_rows(&self.text_projection, &pooled))
            .and_then(|features| l2_normalised_rows(&features))
            .map_err(compute("clip text forward"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_is_at_the_first_eos_or_for_legacy_configs_the_first_largest_id() {
        // Padding with the eos id itself: the first one is the real end of text.
        assert_eq!(eos_position(&[0, 7, 9, 1, 1, 1], 1), Some(3));
        assert_eq!(eos_position(&[0, 7, 9], 1), None);
        // Legacy: the end-of-text token has the largest id of the vocabulary and padding repeats it.
        assert_eq!(eos_position(&[49406, 320, 49407, 49407], 2), Some(2));
        assert_eq!(eos_position(&[], 2), None);
    }
}
