//! An image's patch grid and the token layouts the vision tower derives from it, computed on the host.
//!
//! The image processor emits an image's patches not row by row but in spatial-merge blocks: for a merge size of
//! 2, the four patches that the merger will concatenate into one token come one after another (block rows, then
//! block columns, then the 2 x 2 patches inside a block). Every layout here follows that order: the rotary
//! coordinates of each patch, the attention segments (one per frame), and Qwen2.5-VL's windows, which permute
//! whole merge blocks so that each window's patches are contiguous.

/// One image's patch grid `(t, h, w)` as the image processor reports it (`image_grid_thw`): `t` temporal patches
/// (1 for a still image), `h` x `w` spatial patches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ImageGrid {
    pub t: usize,
    pub h: usize,
    pub w: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GridError {
    #[error("no images given")]
    NoImages,
    #[error("image {image}: grid {grid:?} has an empty dimension")]
    Empty { image: usize, grid: ImageGrid },
    #[error(
        "image {image}: grid {grid:?} is not a whole number of {merge} x {merge} merge blocks"
    )]
    NotMergeable {
        image: usize,
        grid: ImageGrid,
        merge: usize,
    },
}

impl ImageGrid {
    pub fn new(t: usize, h: usize, w: usize) -> Self {
        Self { t, h, w }
    }

    /// Patches the image contributes to the tower's input, `t * h * w`.
    pub fn patches(&self) -> usize {
        self.t * self.h * self.w
    }

    /// Tokens the image contributes to the language model after the merger, `t * h * w / merge^2`.
    pub fn merged_tokens(&self, merge: usize) -> usize {
        self.patches() / (merge * merge)
    }

    /// The grid in merged tokens, `(t, h / merge, w / merge)`.
    pub fn merged(&self, merge: usize) -> (usize, usize, usize) {
        (self.t, self.h / merge, self.w / merge)
    }
}

/// Checks that every grid is non-empty and a whole number of merge blocks; an empty list is an error too.
pub fn check_grids(grids: &[ImageGrid], merge: usize) -> Result<(), GridError> {
    if grids.is_empty() {
        return Err(GridError::NoImages);
    }
    for (image, &grid) in grids.iter().enumerate() {
        if grid.patches() == 0 {
            return Err(GridError::Empty { image, grid });
        }
        if merge == 0 || grid.h % merge != 0 || grid.w % merge != 0 {
            return Err(GridError::NotMergeable { image, grid, merge });
        }
    }
    Ok(())
}

/// The `(row, column)` patch coordinate of every input patch, in the processor's merge-block order, frames
/// repeating the same coordinates. This is what the 2-D rotary turns with.
pub fn patch_positions(grids: &[ImageGrid], merge: usize) -> Vec<[u32; 2]> {
    let mut positions = Vec::with_capacity(grids.iter().map(ImageGrid::patches).sum());
    for grid in grids {
        let frame_start = positions.len();
        for block_row in 0..grid.h / merge {
            for block_col in 0..grid.w / merge {
                for row in 0..merge {
                    for col in 0..merge {
                        positions.push([
                            (block_row * merge + row) as u32,
                            (block_col * merge + col) as u32,
                        ]);
                    }
                }
            }
        }
        let frame_len = positions.len() - frame_start;
        for _ in 1..grid.t {
            positions.extend_from_within(frame_start..frame_start + frame_len);
        }
    }
    positions
}

/// Cumulative patch offsets of the attention segments: each frame of each image attends only within itself.
pub fn frame_cu_seqlens(grids: &[ImageGrid]) -> Vec<usize> {
    let mut cu_seqlens = vec![0];
    for grid in grids {
        for _ in 0..grid.t {
            let last = cu_seqlens[cu_seqlens.len() - 1];
            cu_seqlens.push(last + grid.h * grid.w);
        }
    }
    cu_seqlens
}

/// Qwen2.5-VL's partition of each frame into windows of `window` x `window` merged tokens, the last row and
/// column of windows cut short by the frame's edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowPartition {
    /// For each position of the windowed order, the merged token (merge block) that goes there: windows one
    /// after another, row-major inside a window.
    pub merged_order: Vec<usize>,
    /// Cumulative patch offsets of the windows in the windowed order (empty windows leave no entry).
    pub cu_seqlens: Vec<usize>,
}

impl WindowPartition {
    pub fn new(grids: &[ImageGrid], merge: usize, window: usize) -> Self {
        let merge_unit = merge * merge;
        let mut merged_order = Vec::new();
        let mut cu_seqlens = vec![0];
        let mut first_token = 0;
        for grid in grids {
            let (frames, rows, cols) = grid.merged(merge);
            for frame in 0..frames {
                let frame_start = first_token + frame * rows * cols;
                for window_row in (0..rows).step_by(window) {
                    for window_col in (0..cols).step_by(window) {
                        for row in window_row..rows.min(window_row + window) {
                            let row_start = frame_start + row * cols;
                            merged_order.extend(
                                (window_col..cols.min(window_col + window)).map(|c| row_start + c),
                            );
                        }
                        cu_seqlens.push(merged_order.len() * merge_unit);
                    }
                }
            }
            first_token += frames * rows * cols;
        }
        Self {
            merged_order,
            cu_seqlens,
        }
    }

    /// For each merged token in the image's own order, its position in the windowed order (the inverse
    /// permutation, `argsort(merged_order)`).
    pub fn inverse_order(&self) -> Vec<usize> {
        let mut inverse = vec![0; self.merged_order.len()];
        for (position, &token) in self.merged_order.iter().enumerate() {
            inverse[token] = position;
        }
        inverse
    }

    /// `merged_order` expanded to patches: the input patch that goes to each position of the windowed order.
    pub fn patch_order(&self, merge_unit: usize) -> Vec<usize> {
        self.merged_order
            .iter()
            .flat_map(|&token| token * merge_unit..(token + 1) * merge_unit)
            .collect()
    }
}
