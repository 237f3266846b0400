//! Texts to padded token-id tensors, with the truncation and padding the model was trained with.
//!
//! A checkpoint's tokenizer.json often carries padding and truncation settings that disagree with how the model
//! is used (all-MiniLM-L6-v2's pads and truncates to 128 while sentence-transformers truncates at 256), so both
//! are always replaced by the embedder's own.

use std::path::Path;

use candle_core::{Device, Tensor};
use serde::Serialize;
use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, PostProcessor, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};

use super::error::{compute, EmbedderError};

/// How a batch is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Padding {
    /// To the longest text of the batch; padding is masked out of attention.
    Longest,
    /// Always to the maximum length, for models trained on fully padded text without an attention mask.
    Full,
}

/// What the embedder's tokenization depends on, for its fingerprint.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TextSettings {
    pub(crate) max_len: usize,
    pub(crate) pad_id: u32,
    pub(crate) padding: Padding,
}

#[derive(Debug)]
pub(crate) struct TextEncoder {
    tokenizer: Tokenizer,
    settings: TextSettings,
}

/// A tokenized batch: the ids per text (unpadded lengths are where `attention_mask` is 1) and the same as
/// `(batch, len)` u32 tensors.
#[derive(Debug)]
pub(crate) struct TokenBatch {
    pub(crate) ids: Vec<Vec<u32>>,
    pub(crate) input_ids: Tensor,
    pub(crate) attention_mask: Tensor,
}

impl TextEncoder {
    /// `path` is where the tokenizer came from, for errors.
    pub(crate) fn new(
        mut tokenizer: Tokenizer,
        path: &Path,
        settings: TextSettings,
    ) -> Result<Self, EmbedderError> {
        let error = |reason: String| EmbedderError::Tokenizer {
            path: path.to_path_buf(),
            reason,
        };
        let added = tokenizer
            .get_post_processor()
            .map_or(0, |post| post.added_tokens(false));
        if settings.max_len <= added {
            return Err(error(format!(
                "maximum length {} leaves no room next to the {added} special tokens",
                settings.max_len
            )));
        }
        let pad_token = tokenizer.id_to_token(settings.pad_id).ok_or_else(|| {
            error(format!(
                "padding id {} is not in the vocabulary",
                settings.pad_id
            ))
        })?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: settings.max_len,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|err| error(err.to_string()))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: match settings.padding {
                Padding::Longest => PaddingStrategy::BatchLongest,
                Padding::Full => PaddingStrategy::Fixed(settings.max_len),
            },
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: settings.pad_id,
            pad_type_id: 0,
            pad_token,
        }));
        Ok(Self {
            tokenizer,
            settings,
        })
    }

    pub(crate) fn settings(&self) -> &TextSettings {
        &self.settings
    }

    /// Tokenizes `texts`, whose first element is text number `first` of the caller's input (for errors).
    pub(crate) fn encode(
        &self,
        texts: &[&str],
        first: usize,
        device: &Device,
    ) -> Result<TokenBatch, EmbedderError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|err| EmbedderError::Tokenize {
                first,
                end: first + texts.len(),
                reason: err.to_string(),
            })?;
        let ids: Vec<Vec<u32>> = encodings.iter().map(|e| e.get_ids().to_vec()).collect();
        let mask: Vec<Vec<u32>> = encodings
            .iter()
            .map(|e| e.get_attention_mask().to_vec())
            .collect();
        let input_ids = Tensor::new(ids.clone(), device).map_err(compute("token ids"))?;
        let attention_mask = Tensor::new(mask, device).map_err(compute("attention mask"))?;
        Ok(TokenBatch {
            ids,
            input_ids,
            attention_mask,
        })
    }
}
