//! SigLIP dual encoders: candle-transformers' SigLIP model as is, fed the way SigLIP was trained.
//!
//! SigLIP's text tower has no attention mask and pools the last position, so it only gives the trained
//! embedding for text padded to the full context (`max_position_embeddings`) with the pad token; transformers
//! documents `padding="max_length"` for it, and the embedder always pads so. Embeddings are the text head's and the
//! attention-pooling head's outputs, which share one space only when both towers have the same width.

use std::path::Path;

use candle_core::Tensor;
use candle_transformers::models::siglip::{Config, Model};
use image::RgbImage;
use serde::Serialize;
use serde_json::Value;

use super::checkpoint::ModelDir;
use super::clip::check_pixel_shape;
use super::error::{compute, EmbedderError};
use super::preprocess::ImagePreprocess;
use super::text::{Padding, TextEncoder, TextSettings};
use super::{in_batches, l2_normalised_rows, Embedder, EmbedderOptions, Modality, CONFIG_FILE};

const WEIGHTS_FILE: &str = "model.safetensors";
const TOKENIZER_FILE: &str = "tokenizer.json";

#[derive(Serialize)]
struct Settings<'a> {
    text: &'a TextSettings,
    image: &'a ImagePreprocess,
    dtype: &'static str,
}

/// A SigLIP checkpoint as an [`Embedder`] of texts and images.
pub struct SiglipEmbedder {
    model: Model,
    text: TextEncoder,
    preprocess: ImagePreprocess,
    image_size: usize,
    dim: usize,
    options: EmbedderOptions,
    fingerprint: String,
}

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
        let image_size = vision_cfg.image_size;
        let preprocess = ImagePreprocess::load(&mut files, image_size as u32)?;
        let tokenizer = files.tokenizer(TOKENIZER_FILE)?;
        let text = TextEncoder::new(
            tokenizer,
            &files.path(TOKENIZER_FILE),
            TextSettings {
                max_len: text_cfg.max_position_embeddings,
                pad_id: text_cfg.pad_token_id,
                padding: Padding::Full,
            },
        )?;
        let vb = files.weights(WEIGHTS_FILE, options.dtype, &options.device)?;
        let model = Model::new(&config, vb).map_err(files.weights_error(WEIGHTS_FILE))?;
        let fingerprint = files.fingerprint(
            "siglip",
            &Settings {
                text: text.settings(),
                image: &preprocess,
                dtype: options.dtype.as_str(),
            },
        );
        Ok(Self {
            model,
            text,
            preprocess,
            image_size,
            dim: text_cfg.hidden_size,
            options: options.clone(),
            fingerprint,
        })
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The images preprocessed for the vision tower, `(batch, 3, image_size, image_size)`.
    pub fn pixel_values(&self, images: &[RgbImage]) -> Result<Tensor, EmbedderError> {
        self.preprocess
            .pixel_values(images, 0, self.options.dtype, &self.options.device)
    }

    /// Embeds already preprocessed pixel values (one batch, however large).
    pub fn embed_pixel_values(
        &self,
        pixel_values: &Tensor,
    ) -> Result<Vec<Vec<f32>>, EmbedderError> {
        check_pixel_shape(pixel_values, self.image_size)?;
        let pixel_values = pixel_values
            .to_dtype(self.options.dtype)
            .map_err(compute("pixel values"))?;
        self.model
            .get_image_features(&pixel_values)
            .and_then(|features| l2_normalised_rows(&features))
            .map_err(compute("siglip image forward"))
    }

    fn embed_text_batch(
        &self,
        texts: &[&str],
        first: usize,
    ) -> Result<Vec<Vec<f32>>, EmbedderError> {
        let batch = self.text.encode(texts, first, &self.options.device)?;
        self.model
            .get_text_features(&batch.input_ids)
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

impl Embedder for SiglipEmbedder {
    fn family(&self) -> &'static str {
        "siglip"
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn supports(&self, _modality: Modality) -> bool {
        true
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedderError> {
        in_batches(texts, self.options.batch_size, |chunk, first| {
            self.embed_text_batch(chunk, first)
        })
    }

    fn embed_images(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, EmbedderError> {
        in_batches(images, self.options.batch_size, |chunk, first| {
            let pixel_values = self.preprocess.pixel_values(
                chunk,
                first,
                self.options.dtype,
                &self.options.device,
            )?;
            self.embed_pixel_values(&pixel_values)
        })
    }
}
