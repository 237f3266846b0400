//! The whole Qwen2-VL / Qwen2.5-VL model (transformers' `*ForConditionalGeneration`): the vision tower turns each
//! image's patches into language-model tokens, those replace the prompt's `<|image_pad|>` placeholders, and the
//! text decoder runs over the result with multimodal (M-RoPE) positions.
//!
//! The splice is one `index_select` over `[text embeddings; image embeddings]` rather than a write into the
//! embedded sequence, so gradients reach both the token embeddings and (when it is trained) the tower, and no
//! tensor is modified in place. The tower is frozen: its output is detached, so a training step through the model
//! updates only what the decoder exposes (its LoRA adapters) and never spends a backward pass on the tower.

use super::config::{VisionConfig, VisionConfigError};
use super::grid::ImageGrid;
use super::rope_index::{rope_index, MropeTokens};
use super::vision::VisionTransformer;
use crate::models::decoder::{AttentionLayout, Decoder};
use crate::models::formats::hf_config::{ConfigError, DecoderConfig};
use crate::models::formats::weights::{Weights, WeightsError};
use crate::models::layers::attention::AttentionKernel;
use crate::models::layers::recompute::RecomputeTape;
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Where the tower's weights live: released (transformers-4) checkpoints and transformers-5 `save_pretrained`
/// write `visual.*`; the transformers-5 module tree (and checkpoints saved from it directly) uses `model.visual.*`.
const VISUAL_PREFIXES: [&str; 2] = ["visual", "model.visual"];
const VISUAL_PROBE: &str = "patch_embed.proj.weight";

#[derive(Debug, thiserror::Error)]
pub enum VlLoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: {source}")]
    VisionConfig {
        path: PathBuf,
        source: VisionConfigError,
    },
    #[error("{path}: missing or non-integer `{key}`")]
    TokenId { path: PathBuf, key: &'static str },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{dir}: no vision tower weights (looked for `visual.{VISUAL_PROBE}` and `model.visual.{VISUAL_PROBE}`)")]
    NoVisionWeights { dir: PathBuf },
    #[error("{dir}: cannot build the model: {source}")]
    Build {
        dir: PathBuf,
        source: Box<candle_core::Error>,
    },
}

/// Inputs whose images and placeholders disagree.
#[derive(Debug, thiserror::Error)]
pub enum VlInputError {
    #[error("the prompts hold {placeholders} image placeholders but the images give {embeddings} image tokens")]
    PlaceholderCount {
        placeholders: usize,
        embeddings: usize,
    },
    #[error("the prompts hold {placeholders} image placeholders but no pixels were given")]
    NoPixels { placeholders: usize },
    #[error(
        "input ids and attention mask disagree: {ids_rows} rows of ids, {mask_rows} mask rows"
    )]
    MaskRows { ids_rows: usize, mask_rows: usize },
    #[error("an empty batch has nothing to run")]
    Empty,
}

impl From<VlInputError> for candle_core::Error {
    fn from(err: VlInputError) -> Self {
        candle_core::Error::wrap(err)
    }
}

/// A padded batch of prompts and the images their placeholders stand for.
#[derive(Debug, Clone, Copy)]
pub struct VlBatch<'a> {
    /// Rows of equal length; padding on either side.
    pub input_ids: &'a [Vec<u32>],
    /// Same shape as `input_ids`, nonzero on real tokens.
    pub attention_mask: &'a [Vec<u32>],
    /// `(sum of patches, patch_dim)`: every image of the batch in prompt order, row after row. `None` when no
    /// prompt holds an image.
    pub pixels: Option<&'a Tensor>,
    /// The patch grids of those images, in the same order.
    pub grids: &'a [ImageGrid],
}

#[derive(Debug)]
pub struct Qwen2VlModel {
    decoder: Decoder,
    vision: VisionTransformer,
    tokens: MropeTokens,
}

impl Qwen2VlModel {
    pub fn new(decoder: Decoder, vision: VisionTransformer, tokens: MropeTokens) -> Self {
        Self {
            decoder,
            vision,
            tokens,
        }
    }

    /// Loads a Hugging Face Qwen2-VL / Qwen2.5-VL directory (config.json in the transformers-4 or -5 layout and
    /// its safetensors) in `dtype` on `device`.
    pub fn from_model_dir(
        dir: &Path,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<Self, VlLoadError> {
        let config_path = dir.join("config.json");
        let json = read_json(&config_path)?;
        let vb = Weights::from_model_dir(dir)?.into_var_builder(dtype, device);
        Self::from_var_builder(&json, &config_path, vb)
    }

    /// Builds the model a parsed config.json describes from the tensors `vb` serves (a checkpoint, or a seeded
    /// initialiser for training from scratch); `config_path` names the source in errors.
    pub fn from_var_builder(
        json: &Value,
        config_path: &Path,
        vb: VarBuilder,
    ) -> std::result::Result<Self, VlLoadError> {
        let decoder_config = DecoderConfig::from_json(json, config_path)?;
        let vision_config =
            VisionConfig::from_model_config(json).map_err(|source| VlLoadError::VisionConfig {
                path: config_path.to_path_buf(),
                source,
            })?;
        let token_id = |key: &'static str| {
            json.get(key)
                .and_then(Value::as_u64)
                .and_then(|id| u32::try_from(id).ok())
                .ok_or_else(|| VlLoadError::TokenId {
                    path: config_path.to_path_buf(),
                    key,
                })
        };
        let tokens = MropeTokens {
            image_token_id: token_id("image_token_id")?,
            vision_start_token_id: token_id("vision_start_token_id")?,
            spatial_merge_size: vision_config.spatial_merge_size,
        };
        let dir = config_path.parent().unwrap_or(Path::new("")).to_path_buf();
        let visual = VISUAL_PREFIXES
            .iter()
            .map(|prefix| vb.pp(*prefix))
            .find(|vb| vb.contains_tensor(VISUAL_PROBE))
            .ok_or_else(|| VlLoadError::NoVisionWeights { dir: dir.clone() })?;
        let build = |source: candle_core::Error| VlLoadError::Build {
            dir: dir.clone(),
            source: Box::new(source),
        };
        let vision = VisionTransformer::new(&vision_config, visual).map_err(build)?;
        let decoder = Decoder::new(&decoder_config, vb.clone()).map_err(build)?;
        Ok(Self::new(decoder, vision, tokens))
    }

    /// Whether `dir` holds a vision-language checkpoint (its config.json has a `vision_config`).
    pub fn is_vl_dir(dir: &Path) -> bool {
        read_json(&dir.join("config.json")).is_ok_and(|json| json.get("vision_config").is_some())
    }

    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// For attaching, loading and merging LoRA adapters, which live in the decoder.
    pub fn decoder_mut(&mut self) -> &mut Decoder {
        &mut self.decoder
    }

    pub fn vision(&self) -> &VisionTransformer {
        &self.vision
    }

    /// Runs the decoder's and the vision tower's attention on `kernel`.
    pub fn set_attention_kernel(&mut self, kernel: AttentionKernel) {
        self.decoder.set_attention_kernel(kernel);
        self.vision.set_attention_kernel(kernel);
    }

    pub fn tokens(&self) -> &MropeTokens {
        &self.tokens
    }

    pub fn vision_config(&self) -> &VisionConfig {
        self.vision.config()
    }

    /// The merged image tokens `(sum of merged tokens, hidden)` of `pixels`, detached: the tower is frozen.
    pub fn embed_images(&self, pixels: &Tensor, grids: &[ImageGrid]) -> Result<Tensor> {
        Ok(self.vision.forward(pixels, grids)?.detach())
    }

    /// The input embeddings `(batch, seq, hidden)`: token embeddings with each real `<|image_pad|>` replaced, in
    /// order, by the next image token.
    pub fn embed(&self, batch: &VlBatch) -> Result<Tensor> {
        let ids = ids_tensor(batch.input_ids, self.decoder.device())?;
        let text = self.decoder.embed(&ids)?;
        let placeholders = self.placeholder_positions(batch);
        if placeholders.is_empty() && batch.grids.is_empty() {
            return Ok(text);
        }
        let pixels = batch.pixels.ok_or(VlInputError::NoPixels {
            placeholders: placeholders.len(),
        })?;
        let images = self.embed_images(pixels, batch.grids)?;
        splice_image_tokens(&text, &placeholders, &images)
    }

    /// The final-norm hidden states `(batch, seq, hidden)` of the decoder. `train` enables LoRA dropout.
    pub fn forward(&self, batch: &VlBatch, train: bool) -> Result<Tensor> {
        self.forward_on(batch, train, None)
    }

    /// [`Self::forward`] with each decoder layer two segments of `tape` when one is given, so that a padded batch
    /// trains with its layers recomputed in the backward pass (the vision tower runs as it is, frozen or not).
    pub fn forward_on<'a>(
        &'a self,
        batch: &VlBatch,
        train: bool,
        tape: Option<&RecomputeTape<'a>>,
    ) -> Result<Tensor> {
        if batch.input_ids.is_empty() {
            return Err(VlInputError::Empty.into());
        }
        if batch.input_ids.len() != batch.attention_mask.len() {
            return Err(VlInputError::MaskRows {
                ids_rows: batch.input_ids.len(),
                mask_rows: batch.attention_mask.len(),
            }
            .into());
        }
        let device = self.decoder.device();
        let positions = rope_index(
            batch.input_ids,
            Some(batch.attention_mask),
            batch.grids,
            &self.tokens,
        )
        .map_err(candle_core::Error::wrap)?
        .to_tensor(device)?;
        let embeds = self.embed(batch)?;
        let mask = ids_tensor(batch.attention_mask, device)?;
        let layout = AttentionLayout::padded(&mask, embeds.dtype())?;
        self.decoder
            .forward_embeds_on(&embeds, &positions, &layout, train, tape)
    }

    /// Flat `row * seq + column` indexes of the real image placeholders, in prompt order.
    fn placeholder_positions(&self, batch: &VlBatch) -> Vec<usize> {
        let seq = batch.input_ids.first().map_or(0, Vec::len);
        let image = self.tokens.image_token_id;
        batch
            .input_ids
            .iter()
            .zip(batch.attention_mask)
            .enumerate()
            .flat_map(|(row, (ids, mask))| {
                ids.iter()
                    .zip(mask)
                    .enumerate()
                    .filter(move |(_, (&id, &valid))| id == image && valid != 0)
                    .map(move |(column, _)| row * seq + column)
            })
            .collect()
    }
}

/// The embedded sequence `text` `(rows, seq, hidden)` with the rows at the flat `row * seq + column` positions
/// `placeholders` replaced, in order, by the rows of `images` `(placeholders, hidden)`. One `index_select` over
/// `[text; images]`, so gradients reach both and nothing is written in place.
pub fn splice_image_tokens(
    text: &Tensor,
    placeholders: &[usize],
    images: &Tensor,
) -> Result<Tensor> {
    let images = images.to_dtype(text.dtype())?;
    let embeddings = images.dim(0)?;
    if embeddings != placeholders.len() {
        return Err(VlInputError::PlaceholderCount {
            placeholders: placeholders.len(),
            embeddings,
        }
        .into());
    }
    let (rows, seq, hidden) = text.dims3()?;
    let flat = rows * seq;
    let mut index: Vec<u32> = (0..flat as u32).collect();
    for (k, &position) in placeholders.iter().enumerate() {
        index[position] = (flat + k) as u32;
    }
    let index = Tensor::new(index.as_slice(), text.device())?;
    Tensor::cat(&[text.reshape((flat, hidden))?, images], 0)?
        .index_select(&index, 0)?
        .reshape((rows, seq, hidden))
}

/// Rows of equal length as a `(rows, len)` u32 tensor.
pub fn ids_tensor(rows: &[Vec<u32>], device: &Device) -> Result<Tensor> {
    let len = rows.first().map_or(0, Vec::len);
    if let Some((row, bad)) = rows.iter().enumerate().find(|(_, r)| r.len() != len) {
        candle_core::bail!(
            "row {row} has {} tokens, row 0 has {len}: rows must be padded to one length",
            bad.len()
        );
    }
    let flat: Vec<u32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), len), device)
}

fn read_json(path: &Path) -> std::result::Result<Value, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| ConfigError::Json {
        path: path.to_path_buf(),
        source,
    })
}
