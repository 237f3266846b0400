//! The check pair: how a release proves it loads and computes what was trained.
//!
//! The pair is fixed text plus, for vision-language models, a small generated image, so that verify exercises
//! the tokenizer, the image processor, the vision tower and the decoder without any file outside the release.
//! It is scored by the same [`Reranker`] that `umrank score` and the eval stage use, in f32 on the CPU (or the
//! given device), where scores are reproducible to rounding.

use candle_core::{DType, Device};
use image::{DynamicImage, Rgb, RgbImage};
use serde::{Deserialize, Serialize};

use super::ReleaseError;
use crate::media::preprocess::ImageInput;
use crate::models::qwen2_vl::PairScore;
use crate::models::reranker::{PairSide, Reranker, RerankerParts};

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

/// Loads the reranker of `parts` in f32 on `device` and scores `pair` with it (docs/method.md#prompt-layout,
/// p_yes = sigmoid(z_yes - z_no)).
pub fn score_check_pair(
    parts: RerankerParts<'_>,
    pair: &CheckPair,
    device: &Device,
) -> Result<PairScore, ReleaseError> {
    let name = match parts.adapter {
        Some(adapter) => format!(
            "{} + adapter {}",
            parts.weights.display(),
            adapter.display()
        ),
        None => parts.weights.display().to_string(),
    };
    let reranker = Reranker::load_parts(parts, DType::F32, device)
        .map_err(ReleaseError::model(format!("loading {name}")))?;
    let scoring = || format!("scoring the check pair with {name}");
    let image = pair
        .doc_image
        .map(|[width, height]| DynamicImage::ImageRgb8(check_image(width, height)));
    let patches = image
        .as_ref()
        .map(|image| reranker.image(ImageInput::Decoded(image)))
        .transpose()
        .map_err(ReleaseError::model(scoring()))?;
    let query = PairSide {
        text: Some(&pair.query_text),
        image: None,
    };
    let document = PairSide {
        text: Some(&pair.doc_text),
        image: patches.as_ref(),
    };
    let prepared = reranker
        .prompt(&pair.instruction, query, document, usize::MAX)
        .map_err(ReleaseError::model(scoring()))?;
    let scores = reranker
        .score(&[prepared], 1)
        .map_err(ReleaseError::model(scoring()))?;
    scores
        .into_iter()
        .next()
        .ok_or_else(|| ReleaseError::Model {
            context: scoring(),
            source: "the model returned no score".into(),
        })
}
