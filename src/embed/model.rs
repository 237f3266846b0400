//! The models the embed stage can run, behind one interface: the dual encoders of [`crate::models::embedders`]
//! (CLIP, SigLIP, BERT-family sentence encoders) and GME on a Qwen2-VL backbone ([`super::gme`]).
//!
//! Images are preprocessed by [`crate::media::preprocess`] (the processors that reproduce transformers), one item
//! at a time and in parallel, before a batch reaches the model, so that one undecodable image costs only its own
//! record.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use super::gme::GmeModel;
use super::EmbedError;
use crate::digest::Fingerprint;
use crate::media::preprocess::{
    ChwPixels, ClipProcessor, ImagePreprocessor, PreprocessError, PreprocessorConfig, QwenPixels,
};
use crate::modality::Modality;
use crate::models::embedders::bert::BertEmbedder;
use crate::models::embedders::clip::ClipEmbedder;
use crate::models::embedders::siglip::SiglipEmbedder;
use crate::models::embedders::{self, Embedder, EmbedderError, EmbedderOptions};

/// An image ready for a model's vision tower.
#[derive(Debug, Clone)]
pub enum PreparedImage {
    /// `(3, h, w)` pixel values for CLIP/SigLIP towers.
    Chw(ChwPixels),
    /// Qwen2-VL patches and grid.
    Qwen(QwenPixels),
}

/// One record, as the model embeds it. All items of a batch share one modality.
#[derive(Debug, Clone, Copy)]
pub struct Prepared<'a> {
    /// The query's task instruction; `None` for documents, and for every item of a model that takes none.
    pub instruction: Option<&'a str>,
    pub text: Option<&'a str>,
    pub image: Option<&'a PreparedImage>,
}

/// A model the embed stage runs. Implementations are deterministic: the same batch gives the same bits.
pub trait EmbedModel: Send + Sync {
    /// sha256 (hex) over everything that can change an embedding: the model files, the derived settings, the
    /// image preprocessing and how modalities are combined. Caches and the output's `model` column carry it.
    fn fingerprint(&self) -> &str;

    fn dim(&self) -> usize;

    /// Whether records of this modality can be embedded.
    fn supports(&self, modality: Modality) -> bool;

    /// Whether queries are embedded together with their instruction (GME) or on their own (dual encoders).
    fn takes_instructions(&self) -> bool;

    /// A size that predicts the cost and padding of an item, to batch similar items together: tokens for models
    /// that can count them, otherwise characters, plus the image's share.
    fn length(&self, text: Option<&str>, image_size: Option<(u32, u32)>) -> usize;

    /// Decodes and preprocesses one image; an error is the record's reject reason.
    fn prepare_image(&self, bytes: &[u8]) -> Result<PreparedImage, PreprocessError>;

    /// One L2-normalised vector per item, in order.
    fn embed(&self, batch: &[Prepared<'_>]) -> Result<Vec<Vec<f32>>, EmbedError>;
}

/// Where and in which precision a model runs.
#[derive(Debug, Clone)]
pub struct ModelOptions {
    pub device: Device,
    pub dtype: DType,
    /// Items per forward pass.
    pub batch_size: usize,
    /// `(min_pixels, max_pixels)` overriding a GME model's image processor; `None` keeps the model's.
    pub pixels: (Option<u64>, Option<u64>),
}

/// Loads the model in `dir`: a Qwen2-VL / Qwen2.5-VL directory as GME, otherwise the embedder family that
/// config.json's `model_type` names.
pub fn load_model(dir: &Path, options: &ModelOptions) -> Result<Box<dyn EmbedModel>, EmbedError> {
    // CLIP and SigLIP configs have a `vision_config` too, so the embedder families are told apart first.
    let dual = DUAL_ENCODER_FAMILIES.contains(&model_type(dir)?.as_str());
    if !dual && crate::models::qwen2_vl::Qwen2VlModel::is_vl_dir(dir) {
        return Ok(Box::new(GmeModel::load(dir, options)?));
    }
    Ok(Box::new(DualEncoder::load(dir, options)?))
}

/// config.json `model_type`s that [`DualEncoder`] loads.
const DUAL_ENCODER_FAMILIES: [&str; 3] = ["clip", "siglip", "bert"];

/// The tower of a dual encoder, kept concrete so that images preprocessed by `media::preprocess` can be fed as
/// pixel values.
enum Tower {
    Clip(ClipEmbedder),
    Siglip(SiglipEmbedder),
    Bert(BertEmbedder),
}

impl Tower {
    fn embedder(&self) -> &dyn Embedder {
        match self {
            Tower::Clip(e) => e,
            Tower::Siglip(e) => e,
            Tower::Bert(e) => e,
        }
    }
}

/// A CLIP, SigLIP or BERT-family embedder. Records with both an image and a text get the sum of their two
/// L2-normalised embeddings, normalised again: UniIR's score-level fusion (CLIP_SF), which is how dual encoders are
/// used on M-BEIR's image,text records.
pub struct DualEncoder {
    tower: Tower,
    images: Option<ClipProcessor>,
    device: Device,
    dtype: DType,
    fingerprint: String,
}

/// How fused records are combined; part of the fingerprint so that a different rule is a different model.
const FUSION: &str = "sum of L2-normalised text and image embeddings, L2-normalised";

impl DualEncoder {
    pub fn load(dir: &Path, options: &ModelOptions) -> Result<Self, EmbedError> {
        let embedder_options = EmbedderOptions {
            device: options.device.clone(),
            dtype: options.dtype,
            batch_size: options.batch_size,
        };
        let tower = match model_type(dir)?.as_str() {
            "clip" => Tower::Clip(ClipEmbedder::load(dir, &embedder_options)?),
            "siglip" => Tower::Siglip(SiglipEmbedder::load(dir, &embedder_options)?),
            "bert" => Tower::Bert(BertEmbedder::load(dir, &embedder_options)?),
            other => {
                return Err(EmbedError::Config(format!(
                    "{}: model_type `{other}` is neither an embedder family (bert, clip, siglip) nor a \
                     Qwen2-VL model (GME; its config.json has a vision_config)",
                    dir.join("config.json").display()
                )))
            }
        };
        let images = match tower {
            Tower::Bert(_) => None,
            _ => {
                let path = dir.join("preprocessor_config.json");
                let processor = PreprocessorConfig::from_file(&path)
                    .and_then(|config| ClipProcessor::from_config(&config))
                    .map_err(|source| EmbedError::Preprocessing { path, source })?;
                Some(processor)
            }
        };
        let mut fp = Fingerprint::new();
        fp.part("embedder", tower.embedder().fingerprint().as_bytes())
            .part(
                "image preprocessing",
                format!("{:?}", images.as_ref().map(ClipProcessor::params)).as_bytes(),
            )
            .part("fusion", FUSION.as_bytes());
        Ok(Self {
            tower,
            images,
            device: options.device.clone(),
            dtype: options.dtype,
            fingerprint: fp.finish(),
        })
    }

    fn embed_texts(&self, batch: &[Prepared<'_>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let texts: Vec<&str> = batch.iter().map(|p| p.text.unwrap_or("")).collect();
        Ok(self.tower.embedder().embed_texts(&texts)?)
    }

    fn embed_images(&self, batch: &[Prepared<'_>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let pixels = batch
            .iter()
            .map(|p| match p.image {
                Some(PreparedImage::Chw(chw)) => Ok(chw),
                _ => Err(EmbedError::Batch(
                    "a dual encoder was given an item without CLIP-style pixels".into(),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let Some(first) = pixels.first() else {
            return Ok(Vec::new());
        };
        let (c, h, w) = (first.c, first.h, first.w);
        let mut data = Vec::with_capacity(pixels.len() * c * h * w);
        for p in &pixels {
            if (p.c, p.h, p.w) != (c, h, w) {
                return Err(EmbedError::Batch(format!(
                    "preprocessed images differ in shape: {:?} and {:?}",
                    (c, h, w),
                    (p.c, p.h, p.w)
                )));
            }
            data.extend_from_slice(&p.data);
        }
        let tensor = Tensor::from_vec(data, (pixels.len(), c, h, w), &self.device)
            .and_then(|t| t.to_dtype(self.dtype))
            .map_err(|source| EmbedError::Compute {
                what: "pixel values",
                source,
            })?;
        Ok(match &self.tower {
            Tower::Clip(e) => e.embed_pixel_values(&tensor)?,
            Tower::Siglip(e) => e.embed_pixel_values(&tensor)?,
            Tower::Bert(_) => {
                return Err(EmbedderError::Unsupported {
                    family: "bert",
                    modality: embedders::Modality::Image,
                }
                .into())
            }
        })
    }
}

fn model_type(dir: &Path) -> Result<String, EmbedError> {
    #[derive(Deserialize)]
    struct Probe {
        model_type: Option<String>,
    }
    let path = dir.join("config.json");
    let bytes = std::fs::read(&path).map_err(|source| EmbedError::Io {
        path: path.clone(),
        source,
    })?;
    let probe: Probe = serde_json::from_slice(&bytes).map_err(|source| EmbedError::Json {
        path: path.clone(),
        source,
    })?;
    Ok(probe.model_type.unwrap_or_default())
}

/// The fused vector of one record: `normalize(normalize(t) + normalize(i))`; the inputs are normalised already.
fn fuse(text: &[f32], image: &[f32]) -> Vec<f32> {
    let sum: Vec<f32> = text.iter().zip(image).map(|(t, i)| t + i).collect();
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
    sum.into_iter().map(|v| v / norm).collect()
}

impl EmbedModel for DualEncoder {
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn dim(&self) -> usize {
        self.tower.embedder().dim()
    }

    fn supports(&self, modality: Modality) -> bool {
        let e = self.tower.embedder();
        (!modality.has_text() || e.supports(embedders::Modality::Text))
            && (!modality.has_image() || e.supports(embedders::Modality::Image))
    }

    fn takes_instructions(&self) -> bool {
        false
    }

    /// Characters of text (the tokenizer sits inside the embedder); every image is one fixed-size input.
    fn length(&self, text: Option<&str>, _image_size: Option<(u32, u32)>) -> usize {
        text.map_or(0, |t| t.chars().count())
    }

    fn prepare_image(&self, bytes: &[u8]) -> Result<PreparedImage, PreprocessError> {
        match &self.images {
            Some(processor) => processor.preprocess_bytes(bytes).map(PreparedImage::Chw),
            None => Err(PreprocessError::ConfigMissing {
                field: "preprocessor_config.json (this model embeds no images)",
            }),
        }
    }

    fn embed(&self, batch: &[Prepared<'_>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let Some(first) = batch.first() else {
            return Ok(Vec::new());
        };
        match (first.text.is_some(), first.image.is_some()) {
            (_, false) => self.embed_texts(batch),
            (false, true) => self.embed_images(batch),
            (true, true) => {
                let texts = self.embed_texts(batch)?;
                let images = self.embed_images(batch)?;
                Ok(texts.iter().zip(&images).map(|(t, i)| fuse(t, i)).collect())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fusion_is_the_normalised_sum() {
        let fused = fuse(&[1.0, 0.0], &[0.0, 1.0]);
        let h = std::f32::consts::FRAC_1_SQRT_2;
        assert!((fused[0] - h).abs() < 1e-7 && (fused[1] - h).abs() < 1e-7);
        // Opposite vectors sum to zero; the floor keeps the result finite.
        assert!(fuse(&[1.0], &[-1.0]).iter().all(|v| v.is_finite()));
    }
}
