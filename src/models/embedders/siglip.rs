//! SigLIP dual encoders: candle-transformers' SigLIP model as is, fed the way SigLIP was trained.
//!
//! SigLIP's text tower has no attention mask and pools the last position, so it only gives the trained
//! embedding for text padded to the full context (`max_position_embeddings`) with the pad token; transformers
//! documents `padding="max_length"` for it, and the embedder always pads so. Embeddings are the text head's and the
//! attention-pooling head's outputs, which share one space only when both towers have the same width.
//!
//! Both heads multiply the whole batch's pooled rows in one matmul, whose kernel (and so rounding) the CPU
//! backend picks by the batch size; each text and image therefore goes through the model alone, so that its
//! vector does not depend on its batch mates (docs/mining.md#batch-invariance).

use std::path::Path;

use candle_core::Tensor;
use candle_transformers::models::siglip::{Config, Model};
use serde_json::Value;

use super::checkpoint::ModelDir;
use super::dual::{DualEncoder, Shape, Towers};
use super::error::{compute, EmbedderError};
use super::text::{Padding, TextSettings, TokenBatch};
use super::{l2_normalised_rows, row_by_row, EmbedderOptions, CONFIG_FILE};

/// A SigLIP checkpoint as an [`Embedder`](super::Embedder) of texts and images.
pub type SiglipEmbedder = DualEncoder<Model>;

impl SiglipEmbedder {
    /// Loads config.json, model.safetensors, tokenizer.json and preprocessor_config.json from `dir`.
    pub fn load(dir: &Path, options: &EmbedderOptions) -> Result<Self, EmbedderError> {
        let mut files = ModelDir::new(dir);
        let raw: Value = files.json(CONFIG_FILE)?;
        check(&raw).map_err(|(field, reason)| files.config_error(CONFIG_FILE, field, reason))?;
        let config: Config = serde_json::from_value(raw).map_err(|source| EmbedderError::Json {
            path: files.path(CONFIG_FILE),
            source,
        })?;
        let (text_cfg, vision_cfg) = (&config.text_config, &config.vision_config);
        if text_cfg.hidden_size != vision_cfg.hidden_size {
            return Err(files.config_error(
                CONFIG_FILE,
                "text_config.hidden_size",
                format!(
                    "{} differs from vision_config.hidden_size {}: the towers' embeddings would not share a space",
                    text_cfg.hidden_size, vision_cfg.hidden_size
                ),
            ));
        }
        let shape = Shape {
            text: TextSettings {
                max_len: text_cfg.max_position_embeddings,
                pad_id: text_cfg.pad_token_id,
                padding: Padding::Full,
            },
            image_size: vision_cfg.image_size,
            dim: text_cfg.hidden_size,
        };
        DualEncoder::load_with(files, shape, options, |vb| Model::new(&config, vb))
    }
}

impl Towers for Model {
    const FAMILY: &'static str = "siglip";

    fn embed_pixels(&self, pixel_values: &Tensor) -> Result<Vec<Vec<f32>>, EmbedderError> {
        row_by_row(pixel_values, |pixels| self.get_image_features(pixels))
            .and_then(|features| l2_normalised_rows(&features))
            .map_err(compute("siglip image forward"))
    }

    fn embed_tokens(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>, EmbedderError> {
        row_by_row(&batch.input_ids, |ids| self.get_text_features(ids))
            .and_then(|features| l2_normalised_rows(&features))
            .map_err(compute("siglip text forward"))
    }
}

/// What candle's SigLIP cannot represent, from the raw config: a text head narrower or wider than the text tower
/// (transformers' `projection_size`), a vision tower without its attention-pooling head, non-RGB input.
fn check(raw: &Value) -> Result<(), (&'static str, String)> {
    let text = &raw["text_config"];
    let vision = &raw["vision_config"];
    if let (Some(projection), Some(hidden)) = (
        text["projection_size"].as_u64(),
        text["hidden_size"].as_u64(),
    ) {
        if projection != hidden {
            return Err((
                "text_config.projection_size",
                format!("{projection} differs from hidden_size {hidden}, which is not supported"),
            ));
        }
    }
    if vision["vision_use_head"].as_bool() == Some(false) {
        return Err((
            "vision_config.vision_use_head",
            "false is not supported: embeddings come from the pooling head".into(),
        ));
    }
    if vision["num_channels"].as_u64().is_some_and(|c| c != 3) {
        return Err((
            "vision_config.num_channels",
            "only RGB (3 channels) is supported".into(),
        ));
    }
    for (field, config) in [
        ("text_config.num_attention_heads", text),
        ("vision_config.num_attention_heads", vision),
    ] {
        if let (Some(hidden), Some(heads)) = (
            config["hidden_size"].as_u64(),
            config["num_attention_heads"].as_u64(),
        ) {
            if heads == 0 || hidden % heads != 0 {
                return Err((
                    field,
                    format!("{heads} heads do not divide hidden_size {hidden}"),
                ));
            }
        }
    }
    Ok(())
}
