//! The language model's 3-D position ids (M-RoPE) for prompts with images: transformers' `get_rope_index`.
//!
//! Text tokens advance one position at a time on all three axes. An image's placeholder tokens, one per merged
//! token in row-major order, all start from the position after the preceding text: the temporal axis counts
//! frames, the height axis rows and the width axis columns of the merged grid. The text after an image resumes
//! at `start + max(rows, cols)`, so an image costs as many positions as its longer side, not as many as its
//! tokens. The delta is how far the last position lags behind (or runs ahead of) a plain 1-D count, which is
//! what generation adds to the positions of tokens appended later.
//!
//! This follows transformers 5 (the reference environment): padding positions are 0 and the delta is taken
//! against the number of real tokens. transformers 4 filled padding with 1 and took the delta against the padded
//! length; the real tokens' positions are the same in both.

use super::grid::{check_grids, GridError, ImageGrid};
use candle_core::{Device, Tensor};

/// The token ids and merge size that place images in a prompt (`image_token_id`, `vision_start_token_id` of
/// config.json, `vision_config.spatial_merge_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MropeTokens {
    /// `<|image_pad|>`: one per merged image token.
    pub image_token_id: u32,
    /// `<|vision_start|>`: immediately precedes each image's placeholders.
    pub vision_start_token_id: u32,
    pub spatial_merge_size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RopeIndexError {
    #[error("rope index: {0}")]
    Grid(#[from] GridError),
    #[error("rope index: row {row} has {len} tokens, row 0 has {expected}")]
    RaggedBatch {
        row: usize,
        len: usize,
        expected: usize,
    },
    #[error("rope index: attention mask has {mask_rows} rows of {mask_len:?} for {rows} rows of {len} tokens")]
    MaskShape {
        mask_rows: usize,
        mask_len: Option<usize>,
        rows: usize,
        len: usize,
    },
    #[error("rope index: sequence {row} has no unmasked token")]
    EmptySequence { row: usize },
    #[error("rope index: sequence {row}, token {token}: image placeholder without a vision start token before it")]
    NoVisionStart { row: usize, token: usize },
    #[error("rope index: sequence {row}, token {token}: image {image} has no grid ({grids} grids given)")]
    MissingGrid {
        row: usize,
        token: usize,
        image: usize,
        grids: usize,
    },
    #[error("rope index: sequence {row}, token {token}: image {image} of grid {grid:?} needs {expected} placeholder tokens, found {found}")]
    PlaceholderCount {
        row: usize,
        token: usize,
        image: usize,
        grid: ImageGrid,
        expected: usize,
        found: usize,
    },
    #[error("rope index: {grids} image grids given but the prompts hold {images} images")]
    UnusedGrids { grids: usize, images: usize },
    #[error("rope index: invalid cu_seqlens {cu_seqlens:?}: {reason}")]
    CuSeqlens {
        cu_seqlens: Vec<usize>,
        reason: &'static str,
    },
}

/// Position ids of shape `(3, rows, len)` (temporal, height, width) and one delta per row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MropePositions {
    rows: usize,
    len: usize,
    /// Row-major `(3, rows, len)`.
    positions: Vec<i64>,
    deltas: Vec<i64>,
}

impl MropePositions {
    fn zeros(rows: usize, len: usize) -> Self {
        Self {
            rows,
            len,
            positions: vec![0; 3 * rows * len],
            deltas: Vec::with_capacity(rows),
        }
    }

    /// `(3, rows, len)`: `(3, batch, seq)` for a padded batch, `(3, 1, total)` for a packed row.
    pub fn dims(&self) -> (usize, usize, usize) {
        (3, self.rows, self.len)
    }

    /// Positions along `axis` (0 temporal, 1 height, 2 width) of row `row`.
    pub fn row(&self, axis: usize, row: usize) -> &[i64] {
        let start = (axis * self.rows + row) * self.len;
        &self.positions[start..start + self.len]
    }

    /// One delta per sequence: `max position + 1 - real tokens`.
    pub fn deltas(&self) -> &[i64] {
        &self.deltas
    }

    /// The positions as an i64 tensor of shape [`Self::dims`], the `position_ids` of the M-RoPE.
    pub fn to_tensor(&self, device: &Device) -> candle_core::Result<Tensor> {
        Tensor::from_slice(&self.positions, self.dims(), device)
    }

    fn write(&mut self, row: usize, columns: &[usize], sequence: &SequencePositions) {
        for (axis, values) in sequence.axes.iter().enumerate() {
            let start = (axis * self.rows + row) * self.len;
            for (&column, &value) in columns.iter().zip(values) {
                self.positions[start + column] = value;
            }
        }
    }
}

/// Position ids for a padded batch. `input_ids` rows all have the same length; `attention_mask` (same shape,
/// nonzero for real tokens) says which tokens are padding, on either side. `grids` are the batch's images in
/// prompt order, row after row.
pub fn rope_index(
    input_ids: &[Vec<u32>],
    attention_mask: Option<&[Vec<u32>]>,
    grids: &[ImageGrid],
    tokens: &MropeTokens,
) -> Result<MropePositions, RopeIndexError> {
    let len = input_ids.first().map_or(0, Vec::len);
    for (row, ids) in input_ids.iter().enumerate() {
        if ids.len() != len {
            return Err(RopeIndexError::RaggedBatch {
                row,
                len: ids.len(),
                expected: len,
            });
        }
    }
    if let Some(mask) = attention_mask {
        if mask.len() != input_ids.len() || mask.iter().any(|m| m.len() != len) {
            return Err(RopeIndexError::MaskShape {
                mask_rows: mask.len(),
                mask_len: mask.iter().map(Vec::len).find(|&l| l != len),
                rows: input_ids.len(),
                len,
            });
        }
    }
    let mut images = ImageCursor::new(grids, tokens)?;
    let mut out = MropePositions::zeros(input_ids.len(), len);
    for (row, ids) in input_ids.iter().enumerate() {
        let columns: Vec<usize> = match attention_mask {
            Some(mask) => (0..len).filter(|&c| mask[row][c] != 0).collect(),
            None => (0..len).collect(),
        };
        let real: Vec<u32> = columns.iter().map(|&c| ids[c]).collect();
        let sequence = sequence_positions(row, &real, &mut images)?;
        out.write(row, &columns, &sequence);
        out.deltas.push(sequence.delta);
    }
    images.finish()?;
    Ok(out)
}

/// Position ids for sequences packed into one row, `cu_seqlens` their offsets (`[0, len_0, len_0 + len_1, ...]`):
/// each sequence's positions restart at 0, exactly as if it were a batch row of its own. Returns `(3, 1, total)`
/// positions and one delta per sequence.
pub fn packed_rope_index(
    input_ids: &[u32],
    cu_seqlens: &[usize],
    grids: &[ImageGrid],
    tokens: &MropeTokens,
) -> Result<MropePositions, RopeIndexError> {
    check_cu_seqlens(cu_seqlens, input_ids.len())?;
    let mut images = ImageCursor::new(grids, tokens)?;
    let mut out = MropePositions::zeros(1, input_ids.len());
    for (sequence_index, bounds) in cu_seqlens.windows(2).enumerate() {
        let sequence = sequence_positions(
            sequence_index,
            &input_ids[bounds[0]..bounds[1]],
            &mut images,
        )?;
        let columns: Vec<usize> = (bounds[0]..bounds[1]).collect();
        out.write(0, &columns, &sequence);
        out.deltas.push(sequence.delta);
    }
    images.finish()?;
    Ok(out)
}

fn check_cu_seqlens(cu_seqlens: &[usize], total: usize) -> Result<(), RopeIndexError> {
    let invalid = |reason| RopeIndexError::CuSeqlens {
        cu_seqlens: cu_seqlens.to_vec(),
        reason,
    };
    if cu_seqlens.len() < 2 || cu_seqlens[0] != 0 {
        return Err(invalid(
            "it must start at 0 and describe at least one sequence",
        ));
    }
    if cu_seqlens.windows(2).any(|w| w[1] <= w[0]) {
        return Err(invalid("every sequence must hold at least one token"));
    }
    if cu_seqlens[cu_seqlens.len() - 1] != total {
        return Err(invalid("it must end at the number of input ids"));
    }
    Ok(())
}

/// Hands out the grids in prompt order across all sequences of a call.
struct ImageCursor<'a> {
    grids: &'a [ImageGrid],
    tokens: &'a MropeTokens,
    next: usize,
}

impl<'a> ImageCursor<'a> {
    fn new(grids: &'a [ImageGrid], tokens: &'a MropeTokens) -> Result<Self, RopeIndexError> {
        if !grids.is_empty() {
            check_grids(grids, tokens.spatial_merge_size)?;
        }
        Ok(Self {
            grids,
            tokens,
            next: 0,
        })
    }

    fn take(&mut self, row: usize, token: usize) -> Result<(usize, ImageGrid), RopeIndexError> {
        let image = self.next;
        let grid = self
            .grids
            .get(image)
            .copied()
            .ok_or(RopeIndexError::MissingGrid {
                row,
                token,
                image,
                grids: self.grids.len(),
            })?;
        self.next += 1;
        Ok((image, grid))
    }

    fn finish(&self) -> Result<(), RopeIndexError> {
        if self.next != self.grids.len() {
            return Err(RopeIndexError::UnusedGrids {
                grids: self.grids.len(),
                images: self.next,
            });
        }
        Ok(())
    }
}

/// The three position rows of one unpadded sequence and its delta.
struct SequencePositions {
    axes: [Vec<i64>; 3],
    delta: i64,
}

fn sequence_positions(
    row: usize,
    ids: &[u32],
    images: &mut ImageCursor,
) -> Result<SequencePositions, RopeIndexError> {
    if ids.is_empty() {
        return Err(RopeIndexError::EmptySequence { row });
    }
    let tokens = *images.tokens;
    let merge = tokens.spatial_merge_size;
    let mut axes: [Vec<i64>; 3] = std::array::from_fn(|_| Vec::with_capacity(ids.len()));
    let mut next_position: i64 = 0;
    let mut token = 0;
    while token < ids.len() {
        if ids[token] != tokens.image_token_id {
            for axis in &mut axes {
                axis.push(next_position);
            }
            next_position += 1;
            token += 1;
            continue;
        }
        if token == 0 || ids[token - 1] != tokens.vision_start_token_id {
            return Err(RopeIndexError::NoVisionStart { row, token });
        }
        let (image, grid) = images.take(row, token)?;
        let expected = grid.merged_tokens(merge);
        let found = ids[token..]
            .iter()
            .take_while(|&&id| id == tokens.image_token_id)
            .count();
        if found != expected {
            return Err(RopeIndexError::PlaceholderCount {
                row,
                token,
                image,
                grid,
                expected,
                found,
            });
        }
        let (frames, rows, cols) = grid.merged(merge);
        for frame in 0..frames {
            for r in 0..rows {
                for c in 0..cols {
                    axes[0].push(next_position + frame as i64);
                    axes[1].push(next_position + r as i64);
                    axes[2].push(next_position + c as i64);
                }
            }
        }
        next_position += rows.max(cols) as i64;
        token += expected;
    }
    let max_position = axes.iter().flatten().copied().max().unwrap_or(0);
    Ok(SequencePositions {
        delta: max_position + 1 - ids.len() as i64,
        axes,
    })
}
