//! Texts to padded token-id tensors, with the truncation and padding the model was trained with.
//!
//! A checkpoint's tokenizer.json often carries padding and truncation settings that disagree with how the model
//! is used (all-MiniLM-L6-v2's pads and truncates to 128 while sentence-transformers truncates at 256), so both
//! are always replaced by the embedder's own.
//!
//! A text's padded length depends on the text alone, never on what it is batched with ([`Padding`]), and a batch
//! holds texts of one padded length: with the row-wise CPU kernels (docs/mining.md#batch-invariance) a text's
//! vector is then the same bits in whatever batch it is embedded, which is what lets the embedding store reuse
//! it.

use std::path::Path;

use std::collections::BTreeMap;

use candle_core::{Device, Tensor};
use serde::Serialize;
use tokenizers::{
    PostProcessor, Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy,
};

use super::error::{compute, EmbedderError};

/// How a text is padded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum Padding {
    /// To the text's own length rounded up to a multiple of [`BUCKET`] tokens (at most the maximum length);
    /// padding is masked out of attention. Padding to the batch's longest text instead would change a text's
    /// tensor shapes, and so the order its sums are taken in, with its batch mates.
    Bucketed,
    /// Always to the maximum length, for models trained on fully padded text without an attention mask.
    Full,
}

/// The padded lengths of [`Padding::Bucketed`] are multiples of this: at most 15 padding tokens per text, and
/// few enough distinct lengths that a length-sorted batch rarely splits.
pub(crate) const BUCKET: usize = 16;

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

/// A tokenized batch of texts of one padded length: the ids per text (unpadded lengths are where
/// `attention_mask` is 1) and the same as `(batch, len)` u32 tensors.
#[derive(Debug)]
pub struct TokenBatch {
    /// Each row's index in the caller's texts, for errors.
    pub(crate) indices: Vec<usize>,
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
        tokenizer.id_to_token(settings.pad_id).ok_or_else(|| {
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
        // Padding is applied per text here ([`Self::padded_len`]), never by the tokenizer per batch.
        tokenizer.with_padding(None);
        Ok(Self {
            tokenizer,
            settings,
        })
    }

    pub(crate) fn settings(&self) -> &TextSettings {
        &self.settings
    }

    /// The length `ids` tokens are padded to: a function of the text alone.
    fn padded_len(&self, ids: usize) -> usize {
        match self.settings.padding {
            Padding::Full => self.settings.max_len,
            Padding::Bucketed => ids
                .div_ceil(BUCKET)
                .max(1)
                .saturating_mul(BUCKET)
                .min(self.settings.max_len),
        }
    }

    /// Tokenizes `texts` and embeds them with `embed`, in batches of at most `batch_size` texts of one padded
    /// length (shortest first, then in input order); returns the vectors in the order of `texts`.
    pub(crate) fn embed_bucketed(
        &self,
        texts: &[&str],
        batch_size: usize,
        device: &Device,
        mut embed: impl FnMut(&TokenBatch) -> Result<Vec<Vec<f32>>, EmbedderError>,
    ) -> Result<Vec<Vec<f32>>, EmbedderError> {
        if batch_size == 0 {
            return Err(EmbedderError::BatchSize);
        }
        let ids = self.tokenize(texts)?;
        let mut buckets: BTreeMap<usize, Vec<usize>> = BTreeMap::new();
        for (index, text) in ids.iter().enumerate() {
            buckets
                .entry(self.padded_len(text.len()))
                .or_default()
                .push(index);
        }
        let mut vectors: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for (len, members) in buckets {
            for chunk in members.chunks(batch_size) {
                let batch = self.pad(chunk, &ids, len, device)?;
                let embedded = embed(&batch)?;
                for (&index, vector) in chunk.iter().zip(embedded) {
                    vectors[index] = vector;
                }
            }
        }
        Ok(vectors)
    }

    /// The truncated, unpadded token ids of every text.
    fn tokenize(&self, texts: &[&str]) -> Result<Vec<Vec<u32>>, EmbedderError> {
        let encodings = self
            .tokenizer
            .encode_batch(texts.to_vec(), true)
            .map_err(|err| EmbedderError::Tokenize {
                first: 0,
                end: texts.len(),
                reason: err.to_string(),
            })?;
        Ok(encodings.iter().map(|e| e.get_ids().to_vec()).collect())
    }

    /// The texts `indices` of `ids`, padded on the right to `len` with the pad id and masked there.
    fn pad(
        &self,
        indices: &[usize],
        ids: &[Vec<u32>],
        len: usize,
        device: &Device,
    ) -> Result<TokenBatch, EmbedderError> {
        let rows: Vec<Vec<u32>> = indices.iter().map(|&i| ids[i].clone()).collect();
        let padded: Vec<Vec<u32>> = rows
            .iter()
            .map(|row| {
                let mut row = row.clone();
                row.resize(len, self.settings.pad_id);
                row
            })
            .collect();
        let mask: Vec<Vec<u32>> = rows
            .iter()
            .map(|row| (0..len).map(|p| u32::from(p < row.len())).collect())
            .collect();
        let input_ids = Tensor::new(padded, device).map_err(compute("token ids"))?;
        let attention_mask = Tensor::new(mask, device).map_err(compute("attention mask"))?;
        Ok(TokenBatch {
            indices: indices.to_vec(),
            ids: rows,
            input_ids,
            attention_mask,
        })
    }
}
