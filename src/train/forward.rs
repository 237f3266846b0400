//! One micro-batch through the model: the yes/no logits at the last token of every sequence, as `[groups, 1 + N]`
//! tensors for the objective.
//!
//! Three layouts give the same logits. Padded: sequences right-padded to the longest, a causal mask with padding
//! keys hidden. Packed: sequences concatenated into one row whose attention stays within each sequence and whose
//! positions restart at each one, so no work is spent on padding. Shared prefix: one row too, but the tokens a
//! group's sequences begin with run once per group (see [`super::prefix`]). Image tokens are spliced into the
//! embedded sequence from the vision tower's output (see [`ImageBank`] for the cache).

use candle_core::{DType, Device, Tensor};

use super::config::TrainConfig;
use super::encode::Sequence;
use super::failure::TrainRunError;
use super::images::ImageBank;
use super::model::TrainableReranker;
use super::prefix::SharedRow;
use crate::models::backbone::Backbone;
use crate::models::decoder::{select_positions, AttentionLayout};
use crate::models::layers::recompute::RecomputeTape;
use crate::models::qwen2_vl::model::ids_tensor;
use crate::models::qwen2_vl::{
    packed_rope_index, rope_index, splice_image_tokens, ImageGrid, Qwen2VlModel,
};

/// The logits of one micro-batch and what it cost.
#[derive(Debug)]
pub struct BatchLogits {
    /// `[groups, 1 + N]`, f32.
    pub z_yes: Tensor,
    pub z_no: Tensor,
    /// Real tokens (text and image) of the sequences.
    pub tokens: usize,
}

/// How a micro-batch's sequences are laid out for the decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchLayout {
    Padded,
    Packed,
    /// Packed, with each group's common prefix run once.
    SharedPrefix,
}

impl BatchLayout {
    /// The layout a config asks for: `shared_prefix` wins over `packing` (its row is packed anyway).
    pub fn of(config: &TrainConfig) -> Self {
        if config.shared_prefix {
            Self::SharedPrefix
        } else if config.packing {
            Self::Packed
        } else {
            Self::Padded
        }
    }
}

/// Runs `sequences` (group after group, each positive first, `per_group` sequences each). `train` turns LoRA
/// dropout on. With a `tape`, every decoder layer (and every block of a vision tower that trains) is a segment of
/// it, and the gradients come from [`RecomputeTape::backward`] instead of the loss's own.
pub fn batch_logits<'a>(
    model: &'a TrainableReranker,
    images: Option<&mut ImageBank>,
    sequences: &[Sequence],
    per_group: usize,
    layout: BatchLayout,
    train: bool,
    tape: Option<&RecomputeTape<'a>>,
) -> Result<BatchLogits, TrainRunError> {
    if sequences.is_empty() || per_group == 0 || sequences.len() % per_group != 0 {
        return Err(TrainRunError::model(format!(
            "{} sequences do not make whole groups of {per_group}",
            sequences.len()
        )));
    }
    let (hidden, last) = match layout {
        BatchLayout::SharedPrefix => {
            let image_token = model.vl().map(|vl| vl.tokens().image_token_id);
            let row = SharedRow::new(sequences, per_group, image_token);
            let pass = Pass { train, tape };
            let hidden = shared_hidden(model, images, sequences, &row, pass)?;
            (hidden, row.last().iter().map(|&t| (0, t)).collect())
        }
        plain => {
            let rows = Rows::new(sequences, model.pad_id(), plain == BatchLayout::Packed);
            let pass = Pass { train, tape };
            let hidden = rows_hidden(model, images, sequences, &rows, pass)?;
            (hidden, rows.last)
        }
    };
    let last = select_positions(&hidden, &last)?;
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

/// How the model runs: with LoRA dropout or not, keeping activations or recording segments on a tape.
#[derive(Clone, Copy)]
struct Pass<'t, 'a> {
    train: bool,
    tape: Option<&'t RecomputeTape<'a>>,
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

    fn layout(&self, dtype: DType, device: &Device) -> candle_core::Result<AttentionLayout> {
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

/// The final hidden states of the padded or packed rows.
fn rows_hidden<'a>(
    model: &'a TrainableReranker,
    images: Option<&mut ImageBank>,
    sequences: &[Sequence],
    rows: &Rows,
    pass: Pass<'_, 'a>,
) -> Result<Tensor, TrainRunError> {
    match model.backbone() {
        Backbone::Text(decoder) => {
            let device = decoder.device();
            let ids = ids_tensor(&rows.ids, device)?;
            let positions = ids_tensor(&rows.text_positions(), device)?;
            let layout = rows.layout(decoder.dtype(), device)?;
            let embeds = decoder.embed(&ids)?;
            Ok(decoder.forward_embeds_on(&embeds, &positions, &layout, pass.train, pass.tape)?)
        }
        Backbone::Vl(vl) => {
            let tokens = vl.tokens();
            let image_ids = image_ids(sequences);
            let grids = grids(images.as_deref(), &image_ids)?;
            let embeds = embed_with_images(
                model,
                vl,
                images,
                &rows.ids,
                &rows.placeholders(tokens.image_token_id),
                &image_ids,
                pass.tape,
            )?;
            let device = vl.decoder().device();
            let positions = match &rows.cu_seqlens {
                Some(cu) => packed_rope_index(&rows.ids[0], cu, &grids, tokens),
                None => rope_index(&rows.ids, Some(&rows.mask), &grids, tokens),
            }
            .map_err(TrainRunError::model)?
            .to_tensor(device)?;
            let layout = rows.layout(embeds.dtype(), device)?;
            Ok(vl
                .decoder()
                .forward_embeds_on(&embeds, &positions, &layout, pass.train, pass.tape)?)
        }
    }
}

/// The final hidden states of a shared-prefix row, `(1, row tokens, hidden)`.
fn shared_hidden<'a>(
    model: &'a TrainableReranker,
    images: Option<&mut ImageBank>,
    sequences: &[Sequence],
    row: &SharedRow,
    pass: Pass<'_, 'a>,
) -> Result<Tensor, TrainRunError> {
    let decoder = model.decoder();
    let device = decoder.device();
    let ids = vec![row.ids().to_vec()];
    let layout = AttentionLayout::shared_prefix(row.groups(), decoder.dtype(), device)?;
    match model.backbone() {
        Backbone::Text(decoder) => {
            let positions = Tensor::from_slice(row.positions(), (1, row.ids().len()), device)?;
            let embeds = decoder.embed(&ids_tensor(&ids, device)?)?;
            Ok(decoder.forward_embeds_on(&embeds, &positions, &layout, pass.train, pass.tape)?)
        }
        Backbone::Vl(vl) => {
            let tokens = vl.tokens();
            let all = image_ids(sequences);
            let in_row: Vec<&str> = row.images().iter().map(|&i| all[i]).collect();
            let placeholders: Vec<usize> = (0..row.ids().len())
                .filter(|&t| row.ids()[t] == tokens.image_token_id)
                .collect();
            let grids = grids(images.as_deref(), &all)?;
            let embeds =
                embed_with_images(model, vl, images, &ids, &placeholders, &in_row, pass.tape)?;
            // The whole prompts' positions in the plain packed layout, gathered for the row's tokens.
            let (concat, cu) = concatenated(sequences);
            let source = Tensor::from_slice(row.source(), row.source().len(), device)?;
            let positions = packed_rope_index(&concat, &cu, &grids, tokens)
                .map_err(TrainRunError::model)?
                .to_tensor(device)?
                .index_select(&source, 2)?;
            Ok(vl
                .decoder()
                .forward_embeds_on(&embeds, &positions, &layout, pass.train, pass.tape)?)
        }
    }
}

/// The image ids of `sequences`, in prompt order.
fn image_ids(sequences: &[Sequence]) -> Vec<&str> {
    sequences
        .iter()
        .flat_map(|s| s.images.iter().map(String::as_str))
        .collect()
}

/// The patch grid of each image; no bank is needed when there are no images.
fn grids(bank: Option<&ImageBank>, ids: &[&str]) -> Result<Vec<ImageGrid>, TrainRunError> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let bank =
        bank.ok_or_else(|| TrainRunError::model("the batch has images but no image bank"))?;
    ids.iter()
        .map(|id| bank.grid(id).map_err(TrainRunError::model))
        .collect()
}

/// The embedded rows `ids` with the tower's output for `image_ids` spliced in at `placeholders` (flat
/// `row * seq + column` indexes, in the order of `image_ids`' tokens).
fn embed_with_images<'a>(
    model: &TrainableReranker,
    vl: &'a Qwen2VlModel,
    images: Option<&mut ImageBank>,
    ids: &[Vec<u32>],
    placeholders: &[usize],
    image_ids: &[&str],
    tape: Option<&RecomputeTape<'a>>,
) -> Result<Tensor, TrainRunError> {
    let decoder = vl.decoder();
    let embeds = decoder.embed(&ids_tensor(ids, decoder.device())?)?;
    if image_ids.is_empty() {
        return Ok(embeds);
    }
    let bank =
        images.ok_or_else(|| TrainRunError::model("the batch has images but no image bank"))?;
    let image_embeds = bank.embed(vl.vision(), image_ids, !model.trains_vision(), tape)?;
    Ok(splice_image_tokens(&embeds, placeholders, &image_embeds)?)
}

/// The sequences' ids concatenated, with their offsets `[0, len_0, len_0 + len_1, ...]`.
fn concatenated(sequences: &[Sequence]) -> (Vec<u32>, Vec<usize>) {
    let mut ids = Vec::new();
    let mut cu = vec![0];
    for sequence in sequences {
        ids.extend_from_slice(&sequence.ids);
        cu.push(ids.len());
    }
    (ids, cu)
}
