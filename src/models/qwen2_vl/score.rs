//! Reranker scores (docs/method.md#yes-and-no-logits): the "yes" and "no" logits at each prompt's last token and
//! `p_yes = softmax([z_no, z_yes])[1] = sigmoid(z_yes - z_no)`.
//!
//! Prompts of different lengths run together right-padded, so every row's last real token sits at its own
//! length - 1 and its positions count from 0 exactly as when it runs alone. Only the two LM-head rows are
//! multiplied ([`Decoder::token_logits`]), never the full vocabulary. The same code scores with the
//! vision-language model and with text-only decoders (Qwen2/Qwen3/Llama directories, GGUF), through
//! [`HiddenStates`]; the scores are tensors so that a training loss can be built on them.

use super::grid::ImageGrid;
use super::model::{ids_tensor, Qwen2VlModel, VlBatch};
use crate::models::decoder::{select_positions, AttentionLayout, Decoder};
use crate::models::text::tokenizer::AnswerIds;
use candle_core::{DType, Result, Tensor};

/// One image as the vision tower takes it: `(patches, patch_dim)` pixel patches and their grid.
#[derive(Debug, Clone)]
pub struct ImagePatches {
    pub pixels: Tensor,
    pub grid: ImageGrid,
}

/// One prompt to score: its token ids and, in prompt order, the images its placeholders stand for.
#[derive(Debug, Clone, Copy)]
pub struct ScoreInput<'a> {
    pub ids: &'a [u32],
    pub images: &'a [ImagePatches],
}

/// Prompts right-padded into one batch, with their images concatenated in batch order.
#[derive(Debug, Clone)]
pub struct PaddedBatch {
    pub input_ids: Vec<Vec<u32>>,
    pub attention_mask: Vec<Vec<u32>>,
    /// `(row, position)` of each row's last real token.
    pub last: Vec<(usize, usize)>,
    pub pixels: Option<Tensor>,
    pub grids: Vec<ImageGrid>,
}

impl PaddedBatch {
    /// Pads with `pad_id`, which the attention mask hides (it must not be the image placeholder id).
    pub fn new(inputs: &[ScoreInput], pad_id: u32) -> Result<Self> {
        if let Some(row) = inputs.iter().position(|input| input.ids.is_empty()) {
            candle_core::bail!("prompt {row} of the batch is empty");
        }
        let len = inputs.iter().map(|i| i.ids.len()).max().unwrap_or(0);
        let mut batch = Self {
            input_ids: Vec::with_capacity(inputs.len()),
            attention_mask: Vec::with_capacity(inputs.len()),
            last: Vec::with_capacity(inputs.len()),
            pixels: None,
            grids: Vec::new(),
        };
        let mut pixels = Vec::new();
        for (row, input) in inputs.iter().enumerate() {
            let real = input.ids.len();
            let mut ids = input.ids.to_vec();
            ids.resize(len, pad_id);
            let mut mask = vec![1u32; real];
            mask.resize(len, 0);
            batch.input_ids.push(ids);
            batch.attention_mask.push(mask);
            batch.last.push((row, real - 1));
            for image in input.images {
                pixels.push(image.pixels.clone());
                batch.grids.push(image.grid);
            }
        }
        if !pixels.is_empty() {
            batch.pixels = Some(Tensor::cat(&pixels, 0)?);
        }
        Ok(batch)
    }

    pub fn as_vl(&self) -> VlBatch<'_> {
        VlBatch {
            input_ids: &self.input_ids,
            attention_mask: &self.attention_mask,
            pixels: self.pixels.as_ref(),
            grids: &self.grids,
        }
    }
}

/// What scoring and embedding need of a model: final hidden states for a padded batch, and the decoder whose
/// LM head scores them. Implemented by each network and by [`crate::models::backbone::Backbone`], which holds
/// either.
pub trait HiddenStates {
    fn decoder(&self) -> &Decoder;

    /// `(batch, seq, hidden)`; `train` enables LoRA dropout.
    fn hidden_states(&self, batch: &PaddedBatch, train: bool) -> Result<Tensor>;
}

impl HiddenStates for Qwen2VlModel {
    fn decoder(&self) -> &Decoder {
        Qwen2VlModel::decoder(self)
    }

    fn hidden_states(&self, batch: &PaddedBatch, train: bool) -> Result<Tensor> {
        self.forward(&batch.as_vl(), train)
    }
}

impl HiddenStates for Decoder {
    fn decoder(&self) -> &Decoder {
        self
    }

    /// Text only: 1-D positions counting the real tokens of each row (transformers' `cumsum(mask) - 1`).
    fn hidden_states(&self, batch: &PaddedBatch, train: bool) -> Result<Tensor> {
        if !batch.grids.is_empty() {
            candle_core::bail!(
                "a text-only decoder cannot score prompts with images ({} given)",
                batch.grids.len()
            );
        }
        let device = self.device();
        let positions: Vec<Vec<u32>> = batch
            .attention_mask
            .iter()
            .map(|mask| {
                let mut seen = 0u32;
                mask.iter()
                    .map(|&valid| {
                        seen += u32::from(valid != 0);
                        seen.saturating_sub(1)
                    })
                    .collect()
            })
            .collect();
        let ids = ids_tensor(&batch.input_ids, device)?;
        let mask = ids_tensor(&batch.attention_mask, device)?;
        let layout = AttentionLayout::padded(&mask, self.dtype())?;
        self.forward(&ids, &ids_tensor(&positions, device)?, &layout, train)
    }
}

/// Per-prompt scores as tensors of shape `(n,)`, differentiable in the model's trainable variables.
#[derive(Debug, Clone)]
pub struct Scores {
    pub z_yes: Tensor,
    pub z_no: Tensor,
    pub p_yes: Tensor,
}

/// One prompt's scores as numbers.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PairScore {
    pub p_yes: f32,
    pub z_yes: f32,
    pub z_no: f32,
}

impl Scores {
    pub fn to_vec(&self) -> Result<Vec<PairScore>> {
        let values = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
        let (p_yes, z_yes, z_no) = (
            values(&self.p_yes)?,
            values(&self.z_yes)?,
            values(&self.z_no)?,
        );
        Ok(p_yes
            .into_iter()
            .zip(z_yes)
            .zip(z_no)
            .map(|((p_yes, z_yes), z_no)| PairScore { p_yes, z_yes, z_no })
            .collect())
    }
}

/// The scores of one padded batch.
pub fn score_batch(
    model: &impl HiddenStates,
    batch: &PaddedBatch,
    answers: AnswerIds,
    train: bool,
) -> Result<Scores> {
    let hidden = model.hidden_states(batch, train)?;
    last_token_scores(model.decoder(), &hidden, &batch.last, answers)
}

/// The scores at the `(row, position)` tokens `last` of `hidden`, through `decoder`'s LM head.
pub fn last_token_scores(
    decoder: &Decoder,
    hidden: &Tensor,
    last: &[(usize, usize)],
    answers: AnswerIds,
) -> Result<Scores> {
    let last = select_positions(hidden, last)?;
    let logits = decoder
        .token_logits(&last, &[answers.yes, answers.no])?
        .to_dtype(DType::F32)?;
    let z_yes = logits.narrow(1, 0, 1)?.squeeze(1)?;
    let z_no = logits.narrow(1, 1, 1)?.squeeze(1)?;
    let p_yes = sigmoid(&(&z_yes - &z_no)?)?;
    Ok(Scores { z_yes, z_no, p_yes })
}

/// Scores every input, `batch_size` prompts at a time, in input order; for inference (no dropout).
pub fn score(
    model: &impl HiddenStates,
    inputs: &[ScoreInput],
    answers: AnswerIds,
    pad_id: u32,
    batch_size: usize,
) -> Result<Vec<PairScore>> {
    let mut scores = Vec::with_capacity(inputs.len());
    for chunk in inputs.chunks(batch_size.max(1)) {
        let batch = PaddedBatch::new(chunk, pad_id)?;
        scores.extend(score_batch(model, &batch, answers, false)?.to_vec()?);
    }
    Ok(scores)
}

/// `1 / (1 + e^-x)` from differentiable primitives.
fn sigmoid(xs: &Tensor) -> Result<Tensor> {
    (xs.neg()?.exp()? + 1.0)?.recip()
}
