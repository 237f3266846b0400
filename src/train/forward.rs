//! One micro-batch through the model: the yes/no logits at the last token of every sequence, as `[groups, 1 + N]`
//! tensors for the objective.
//!
//! Two layouts give the same logits. Padded: sequences right-padded to the longest, a causal mask with padding
//! keys hidden. Packed: sequences concatenated into one row whose attention stays within each sequence and whose
//! positions restart at each one, so no work is spent on padding. Image tokens are spliced into the embedded
//! sequence from the vision tower's output (see [`ImageBank`] for the cache).

use candle_core::{DType, Tensor};

use super::encode::Sequence;
use super::failure::TrainRunError;
use super::images::ImageBank;
use super::model::{Backbone, Reranker};
use crate::models::decoder::{select_positions, AttentionLayout};
use crate::models::qwen2_vl::model::ids_tensor;
use crate::models::qwen2_vl::{packed_rope_index, rope_index, splice_image_tokens, Qwen2VlModel};

/// The logits of one micro-batch and what it cost.
#[derive(Debug)]
pub struct BatchLogits {
    /// `[groups, 1 + N]`, f32.
    pub z_yes: Tensor,
    pub z_no: Tensor,
    /// Real tokens (text and image) run through the decoder.
    pub tokens: usize,
}

/// Runs `sequences` (group after group, each positive first, `per_group` sequences each). `train` turns LoRA
/// dropout on.
pub fn batch_logits(
    model: &Reranker,
    images: Option<&mut ImageBank>,
    sequences: &[Sequence],
    per_group: usize,
    packing: bool,
    train: bool,
) -> Result<BatchLogits, TrainRunError> {
    if sequences.is_empty() || per_group == 0 || sequences.len() % per_group != 0 {
        return Err(TrainRunError::model(format!(
            "{} sequences do not make whole groups of {per_group}",
            sequences.len()
        )));
    }
    let rows = Rows::new(sequences, model.pad_id(), packing);
    let hidden = match model.backbone() {
        Backbone::Text(decoder) => {
            let device = decoder.device();
            let ids = ids_tensor(&rows.ids, device)?;
            let positions = ids_tensor(&rows.text_positions(), device)?;
            let layout = rows.layout(decoder.dtype(), device)?;
            decoder.forward(&ids, &positions, &layout, train)?
        }
        Backbone::Vl(vl) => vl_hidden(model, vl, images, sequences, &rows, train)?,
    };
    let last = select_positions(&hidden, &rows.last)?;
    let answers = model.answers();
    let logits = model
        .decoder()
        .token_logits(&last, &[answers.yes, answers.no])?
        .to_dtype(DType::F32)?;
    let groups = sequences.len() / per_group;
    let column = |k: usize| -> candle_core::Result<Tensor> {
        logits.narrow(1, k, 1)?.reshape((groups, per_group))
    };
    Ok(BatchLogits {
        z_yes: column(0)?,
        z_no: column(1)?,
        tokens: sequences.iter().map(|s| s.ids.len()).sum(),
    })
}

/// The decoder input rows of a micro-batch in either layout.
struct Rows {
    ids: Vec<Vec<u32>>,
    mask: Vec<Vec<u32>>,
    /// `[0, len_0, len_0 + len_1, ...]` when packed.
    cu_seqlens: Option<Vec<usize>>,
    /// `(row, position)` of each sequence's last token.
    last: Vec<(usize, usize)>,
}

impl Rows {
    fn new(sequences: &[Sequence], pad_id: u32, packing: bool) -> Self {
        if packing {
            let mut cu = vec![0];
            let mut ids = Vec::new();
            let mut last = Vec::with_capacity(sequences.len());
            for sequence in sequences {
                ids.extend_from_slice(&sequence.ids);
                last.push((0, ids.len() - 1));
                cu.push(ids.len());
            }
            let mask = vec![vec![1; ids.len()]];
            return Self {
                ids: vec![ids],
                mask,
                cu_seqlens: Some(cu),
                last,
            };
        }
        let len = sequences.iter().map(|s| s.ids.len()).max().unwrap_or(0);
        let mut rows = Self {
            ids: Vec::with_capacity(sequences.len()),
            mask: Vec::with_capacity(sequences.len()),
            cu_seqlens: None,
            last: Vec::with_capacity(sequences.len()),
        };
        for (row, sequence) in sequences.iter().enumerate() {
            let real = sequence.ids.len();
            let mut ids = sequence.ids.clone();
            ids.resize(len, pad_id);
            let mut mask = vec![1; real];
            mask.resize(len, 0);
            rows.ids.push(ids);
            rows.mask.push(mask);
            rows.last.push((row, real - 1));
        }
        rows
    }

    fn layout(
        &self,
        dtype: DType,
        device: &candle_core::Device,
    ) -> candle_core::Result<AttentionLayout> {
        match &self.cu_seqlens {
            Some(cu) => AttentionLayout::packed(cu, dtype, device),
            None => AttentionLayout::padded(&ids_tensor(&self.mask, device)?, dtype),
        }
    }

    /// 1-D positions: counting from 0 in each sequence (packed), or along each right-padded row.
    fn text_positions(&self) -> Vec<Vec<u32>> {
        match &self.cu_seqlens {
            Some(cu) => vec![cu
                .windows(2)
                .flat_map(|w| 0..(w[1] - w[0]) as u32)
                .collect()],
            None => self
                .ids
                .iter()
                .map(|row| (0..row.len() as u32).collect())
                .collect(),
        }
    }

    /// Flat `row * seq + column` indexes of the real image placeholders, in order.
    fn placeholders(&self, image_token: u32) -> Vec<usize> {
        let seq = self.ids.first().map_or(0, Vec::len);
        let mut found = Vec::new();
        for (row, (ids, mask)) in self.ids.iter().zip(&self.mask).enumerate() {
            for (column, (&id, &real)) in ids.iter().zip(mask).enumerate() {
                if id == image_token && real != 0 {
                    found.push(row * seq + column);
                }
            }
        }
        found
    }
}

fn vl_hidden(
    model: &Reranker,
    vl: &Qwen2VlModel,
    images: Option<&mut ImageBank>,
    sequences: &[Sequence],
    rows: &Rows,
    train: bool,
) -> Result<Tensor, TrainRunError> {
    let decoder = vl.decoder();
    let device = decoder.device();
    let tokens = vl.tokens();
    let image_ids: Vec<&str> = sequences
        .iter()
        .flat_map(|s| s.images.iter().map(String::as_str))
        .collect();
    let ids = ids_tensor(&rows.ids, device)?;
    let mut embeds = decoder.embed(&ids)?;
    let mut grids = Vec::with_capacity(image_ids.len());
    if !image_ids.is_empty() {
        let bank =
            images.ok_or_else(|| TrainRunError::model("the batch has images but no image bank"))?;
        for id in &image_ids {
            grids.push(bank.grid(id).map_err(TrainRunError::model)?);
        }
        let image_embeds = bank.embed(vl.vision(), &image_ids, !model.trains_vision())?;
        embeds = splice_image_tokens(
            &embeds,
            &rows.placeholders(tokens.image_token_id),
            &image_embeds,
        )?;
    }
    let positions = match &rows.cu_seqlens {
        Some(cu) => packed_rope_index(&rows.ids[0], cu, &grids, tokens),
        None => rope_index(&rows.ids, Some(&rows.mask), &grids, tokens),
    }
    .map_err(TrainRunError::model)?
    .to_tensor(device)?;
    let layout = rows.layout(embeds.dtype(), device)?;
    Ok(decoder.forward_embeds(&embeds, &positions, &layout, train)?)
}
