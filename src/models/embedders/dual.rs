//! What the CLIP and SigLIP embedders share: a text tower and an image tower loaded from one transformers
//! directory, with the tokenizer, image preprocessing, batching, pixel-shape check and fingerprint around them.
//! A family supplies only its model's two forwards ([`Towers`]) and how it reads its config and tokenizes
//! (in its own `load`).

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use image::RgbImage;
use serde::Serialize;

use super::checkpoint::ModelDir;
use super::error::{compute, EmbedderError};
use super::text::{TextEncoder, TextSettings, TokenBatch};
use super::{in_batches, Embedder, EmbedderOptions, Modality};
use crate::media::preprocess::{
    ClipParams, ClipProcessor, ImagePreprocessor, PreprocessError, PreprocessorConfig,
};

const WEIGHTS_FILE: &str = "model.safetensors";
const TOKENIZER_FILE: &str = "tokenizer.json";

/// A dual encoder's model: its two forwards to L2-normalised embeddings, one batch each. A row's embedding must
/// not depend on the other rows of its batch (docs/mining.md#batch-invariance).
pub trait Towers: Send + Sync {
    /// The family name the embedder reports and tags its fingerprint with.
    const FAMILY: &'static str;

    /// Embeddings of pixel values already checked and in the model's dtype.
    fn embed_pixels(&self, pixel_values: &Tensor) -> Result<Vec<Vec<f32>>, EmbedderError>;

    /// Embeddings of a tokenized batch of texts of one padded length.
    fn embed_tokens(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>, EmbedderError>;
}

/// What the fingerprint covers besides the files: everything that changes the vectors for the same weights.
#[derive(Serialize)]
struct Settings<'a> {
    text: &'a TextSettings,
    image: &'a ClipParams,
    dtype: &'static str,
}

/// A dual-encoder checkpoint as an [`Embedder`] of texts and images.
pub struct DualEncoder<M> {
    model: M,
    text: TextEncoder,
    preprocess: ClipProcessor,
    image_size: usize,
    dim: usize,
    options: EmbedderOptions,
    fingerprint: String,
}

/// The family-specific part of a load: how the text is tokenized, the image side, the embedding width.
pub(crate) struct Shape {
    pub(crate) text: TextSettings,
    pub(crate) image_size: usize,
    pub(crate) dim: usize,
}

impl<M: Towers> DualEncoder<M> {
    /// Loads preprocessor_config.json, tokenizer.json and model.safetensors from `files` (whose config the
    /// family has read into `shape`), building the model from the weights with `build`.
    pub(crate) fn load_with(
        mut files: ModelDir,
        shape: Shape,
        options: &EmbedderOptions,
        build: impl FnOnce(VarBuilder) -> candle_core::Result<M>,
    ) -> Result<Self, EmbedderError> {
        let preprocess = image_processor(&mut files, shape.image_size as u32)?;
        let tokenizer = files.tokenizer(TOKENIZER_FILE)?;
        let text = TextEncoder::new(tokenizer, &files.path(TOKENIZER_FILE), shape.text)?;
        let vb = files.weights(WEIGHTS_FILE, options.dtype, &options.device)?;
        let model = build(vb).map_err(files.weights_error(WEIGHTS_FILE))?;
        let fingerprint = files.fingerprint(
            M::FAMILY,
            &Settings {
                text: text.settings(),
                image: preprocess.params(),
                dtype: options.dtype.as_str(),
            },
        );
        Ok(Self {
            model,
            text,
            preprocess,
            image_size: shape.image_size,
            dim: shape.dim,
            options: options.clone(),
            fingerprint,
        })
    }

    pub fn model(&self) -> &M {
        &self.model
    }

    /// The images preprocessed for the vision tower, `(batch, 3, image_size, image_size)`.
    pub fn pixel_values(&self, images: &[RgbImage]) -> Result<Tensor, EmbedderError> {
        pixel_values(
            &self.preprocess,
            images,
            0,
            self.options.dtype,
            &self.options.device,
        )
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
        self.model.embed_pixels(&pixel_values)
    }
}

impl<M: Towers> Embedder for DualEncoder<M> {
    fn family(&self) -> &'static str {
        M::FAMILY
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
        self.text.embed_bucketed(
            texts,
            self.options.batch_size,
            &self.options.device,
            |batch| self.model.embed_tokens(batch),
        )
    }

    fn embed_images(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, EmbedderError> {
        in_batches(images, self.options.batch_size, |chunk, first| {
            let pixel_values = pixel_values(
                &self.preprocess,
                chunk,
                first,
                self.options.dtype,
                &self.options.device,
            )?;
            self.embed_pixel_values(&pixel_values)
        })
    }
}

/// The directory's CLIP/SigLIP image processor (transformers' class defaults fill absent fields), which must
/// turn every image into `image_size` x `image_size` pixels, the size the vision tower's position embeddings were
/// trained for.
fn image_processor(files: &mut ModelDir, image_size: u32) -> Result<ClipProcessor, EmbedderError> {
    let name = PreprocessorConfig::FILE_NAME;
    let config: PreprocessorConfig = files.json(name)?;
    let processor = ClipProcessor::from_config(&config).map_err(|error| match error {
        PreprocessError::ConfigMissing { field } => {
            files.config_error(name, field, "missing".into())
        }
        PreprocessError::ConfigInvalid { field, reason } => files.config_error(name, field, reason),
        other => files.config_error(name, "image_processor_type", other.to_string()),
    })?;
    match processor.params().fixed_output() {
        Some(output) if output == (image_size, image_size) => Ok(processor),
        other => {
            let field = if processor.params().center_crop.is_some() {
                "crop_size"
            } else {
                "size"
            };
            Err(files.config_error(
                name,
                field,
                format!("images come out as {other:?} (height, width), the model takes {image_size}x{image_size}"),
            ))
        }
    }
}

/// `(batch, 3, height, width)` pixel values in `dtype`; `first` numbers the first image for errors.
fn pixel_values(
    processor: &ClipProcessor,
    images: &[RgbImage],
    first: usize,
    dtype: DType,
    device: &Device,
) -> Result<Tensor, EmbedderError> {
    let planes = images
        .iter()
        .enumerate()
        .map(|(k, image)| {
            processor
                .preprocess_rgb(image)
                .map_err(|error| EmbedderError::Image {
                    index: first + k,
                    reason: error.to_string(),
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (height, width) = planes.first().map_or((0, 0), |p| (p.h, p.w));
    let data: Vec<f32> = planes.into_iter().flat_map(|p| p.data).collect();
    Tensor::from_vec(data, (images.len(), 3, height, width), device)
        .and_then(|t| t.to_dtype(dtype))
        .map_err(compute("pixel values"))
}

/// Pixel values must be `(batch, 3, size, size)`: the towers' position embeddings fix the size, and a wrong one
/// would otherwise surface as a broadcast error deep inside the model.
fn check_pixel_shape(pixel_values: &Tensor, size: usize) -> Result<(), EmbedderError> {
    match pixel_values.dims() {
        [_, 3, h, w] if *h == size && *w == size => Ok(()),
        dims => Err(EmbedderError::PixelShape {
            size,
            got: dims.to_vec(),
        }),
    }
}
