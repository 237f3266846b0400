//! The check pair and the loader that scores it: how a release proves it loads and computes what was trained.
//!
//! The pair is fixed text plus, for vision-language models, a small generated image, so that verify exercises
//! the tokenizer, the image processor, the vision tower and the decoder without any file outside the release.
//! Models are loaded in f32 on the CPU (or the given device), where scores are reproducible to rounding.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use image::{DynamicImage, Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use super::ReleaseError;
use crate::media::preprocess::{ImagePreprocessor, PreprocessorConfig, Qwen2VlProcessor};
use crate::models::decoder::Decoder;
use crate::models::prompt::{PromptBuilder, RerankInput, Side, IM_END};
use crate::models::qwen2_vl::{
    score, ImageGrid, ImagePatches, PairScore, Qwen2VlModel, ScoreInput,
};
use crate::models::tokenizer::Tokenizer;

/// The preprocessor config file of a vision-language model directory.
pub const PREPROCESSOR_CONFIG: &str = "preprocessor_config.json";

/// Side lengths of the generated check image: multiples of 28, so Qwen2-VL's smart_resize keeps them.
const CHECK_IMAGE_SIZE: [u32; 2] = [84, 56];

/// A (instruction, query, document) pair to score.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckPair {
    pub instruction: String,
    pub query_text: String,
    pub doc_text: String,
    /// `[width, height]` of the generated document image ([`check_image`]); absent for text-only models.
    pub doc_image: Option<[u32; 2]>,
}

impl CheckPair {
    /// The built-in pair; with an image when the model has a vision tower.
    pub fn builtin(vision: bool) -> Self {
        Self {
            instruction: "Retrieve the image that matches the caption.".into(),
            query_text: "a red circle above a blue square".into(),
            doc_text: "A red circle floats above a blue square on a grey background.".into(),
            doc_image: vision.then_some(CHECK_IMAGE_SIZE),
        }
    }
}

/// The generated check image: pixel `(x, y)` is `((7x + 3y) mod 256, xy mod 256, 255 - (5x mod 256))`. The
/// formula is part of the release contract: scripts/load_with_peft.py rebuilds the image from it.
pub fn check_image(width: u32, height: u32) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| {
        Rgb([
            ((7 * x + 3 * y) % 256) as u8,
            ((x * y) % 256) as u8,
            (255 - (5 * x) % 256) as u8,
        ])
    })
}

enum Model {
    Vl(Box<Qwen2VlModel>),
    Text(Box<Decoder>),
}

/// A reranker ready to score: weights, optional adapter, tokenizer and image processor.
pub struct Reranker {
    model: Model,
    tokenizer: Tokenizer,
    processor: Option<Qwen2VlProcessor>,
    /// For messages: what was loaded.
    name: String,
}

impl Reranker {
    /// Loads the weights (and config.json) of `weights_dir`, the tokenizer and preprocessor config of
    /// `files_dir`, and the PEFT adapter in `adapter` if given, in f32 on `device`.
    pub fn load(
        weights_dir: &Path,
        files_dir: &Path,
        adapter: Option<&Path>,
        device: &Device,
    ) -> Result<Self, ReleaseError> {
        let name = match adapter {
            Some(adapter) => format!("{} + adapter {}", weights_dir.display(), adapter.display()),
            None => weights_dir.display().to_string(),
        };
        let loading = || format!("loading {name}");
        let mut model = if Qwen2VlModel::is_vl_dir(weights_dir) {
            Model::Vl(Box::new(
                Qwen2VlModel::from_model_dir(weights_dir, DType::F32, device)
                    .map_err(ReleaseError::model(loading()))?,
            ))
        } else {
            Model::Text(Box::new(
                Decoder::from_model_dir(weights_dir, DType::F32, device)
                    .map_err(ReleaseError::model(loading()))?,
            ))
        };
        if let Some(adapter) = adapter {
            let decoder = match &mut model {
                Model::Vl(model) => model.decoder_mut(),
                Model::Text(decoder) => decoder.as_mut(),
            };
            decoder.load_lora(adapter, 0)?;
        }
        let tokenizer = Tokenizer::from_dir(files_dir).map_err(ReleaseError::model(loading()))?;
        let processor = match &model {
            Model::Vl(model) => Some(image_processor(files_dir, model)?),
            Model::Text(_) => None,
        };
        Ok(Self {
            model,
            tokenizer,
            processor,
            name,
        })
    }

    /// Whether the model takes images.
    pub fn has_vision(&self) -> bool {
        matches!(self.model, Model::Vl(_))
    }

    /// The reranker score of one pair (docs/method.md#prompt-layout, p_yes = sigmoid(z_yes - z_no)).
    pub fn score(&self, pair: &CheckPair) -> Result<PairScore, ReleaseError> {
        let scoring = || format!("scoring the check pair with {}", self.name);
        let images = self.doc_images(pair)?;
        let builder =
            PromptBuilder::reranker(&self.tokenizer).map_err(ReleaseError::model(scoring()))?;
        let document = Side {
            text: &pair.doc_text,
            image_tokens: images.first().map(|(_, tokens)| *tokens),
        };
        let input = RerankInput {
            instruction: &pair.instruction,
            query: Side::text(&pair.query_text),
            document,
        };
        let prompt = builder
            .build(&input, usize::MAX)
            .map_err(ReleaseError::model(scoring()))?;
        let answers = self
            .tokenizer
            .yes_no_ids()
            .map_err(ReleaseError::model(scoring()))?;
        let pad_id = self
            .tokenizer
            .special_token_id(IM_END)
            .map_err(ReleaseError::model(scoring()))?;
        let patches: Vec<ImagePatches> = images.into_iter().map(|(image, _)| image).collect();
        let inputs = [ScoreInput {
            ids: &prompt.ids,
            images: &patches,
        }];
        let scores = match &self.model {
            Model::Vl(model) => score(model.as_ref(), &inputs, answers, pad_id, 1),
            Model::Text(decoder) => score(decoder.as_ref(), &inputs, answers, pad_id, 1),
        }
        .map_err(ReleaseError::model(scoring()))?;
        scores
            .into_iter()
            .next()
            .ok_or_else(|| ReleaseError::Model {
                context: scoring(),
                source: "the model returned no score".into(),
            })
    }

    /// The document image as the vision tower takes it, with its number of merged tokens; none for text pairs.
    fn doc_images(&self, pair: &CheckPair) -> Result<Vec<(ImagePatches, usize)>, ReleaseError> {
        let Some([width, height]) = pair.doc_image else {
            return Ok(Vec::new());
        };
        let (Model::Vl(model), Some(processor)) = (&self.model, &self.processor) else {
            return Err(ReleaseError::Config(format!(
                "the check pair has an image but {} is a text-only model",
                self.name
            )));
        };
        let image = DynamicImage::ImageRgb8(check_image(width, height));
        let pixels = processor
            .preprocess_image(&image)
            .map_err(ReleaseError::model(format!(
                "preprocessing the check image for {}",
                self.name
            )))?;
        let tokens = pixels.num_vision_tokens();
        let [t, h, w] = pixels.grid_thw;
        let device = model.decoder().device();
        let tensor = Tensor::from_vec(
            pixels.patches,
            (pixels.num_patches, pixels.patch_dim),
            device,
        )
        .map_err(ReleaseError::model(format!(
            "the check image for {}",
            self.name
        )))?;
        Ok(vec![(
            ImagePatches {
                pixels: tensor,
                grid: ImageGrid::new(t, h, w),
            },
            tokens,
        )])
    }
}

/// The image processor of `files_dir`, which must agree with the vision tower on the patch layout.
fn image_processor(
    files_dir: &Path,
    model: &Qwen2VlModel,
) -> Result<Qwen2VlProcessor, ReleaseError> {
    let path = files_dir.join(PREPROCESSOR_CONFIG);
    let config = PreprocessorConfig::from_file(&path).map_err(ReleaseError::model(format!(
        "reading the image processor config {}",
        path.display()
    )))?;
    let processor = Qwen2VlProcessor::from_config(&config).map_err(ReleaseError::model(
        format!("the image processor of {}", path.display()),
    ))?;
    let params = processor.params();
    let vision = model.vision_config();
    let ours = (
        params.patch_size as usize,
        params.merge_size as usize,
        params.temporal_patch_size as usize,
    );
    let tower = (
        vision.patch_size,
        vision.spatial_merge_size,
        vision.temporal_patch_size,
    );
    if ours != tower {
        return Err(ReleaseError::invalid(
            &path,
            format!(
                "patch size, merge size and temporal patch size {ours:?} differ from the vision tower's {tower:?}"
            ),
        ));
    }
    Ok(processor)
}
