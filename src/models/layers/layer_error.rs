//! The ways a layer's inputs or configuration can be inconsistent.
//!
//! Layers return candle's `Result`, like candle's own model files, so these convert into `candle_core::Error`;
//! they exist so that the message names the layer and the offending sizes instead of a bare shape mismatch deep
//! inside a broadcast.

use candle_core::{DType, Shape};

#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    #[error("{layer}: weight has shape {weight:?} but the input's last dimension is {input}")]
    WeightSize {
        layer: &'static str,
        weight: Shape,
        input: usize,
    },
    #[error("rotary embedding: head_dim {head_dim} must be a positive multiple of {multiple}")]
    RotaryHeadDim { head_dim: usize, multiple: usize },
    #[error("rotary embedding: input last dimension {input} is not twice the cos/sin last dimension {half}")]
    RotaryWidth { input: usize, half: usize },
    #[error("rotary embedding: cos has shape {cos:?} but sin has shape {sin:?}")]
    RotaryCosSin { cos: Shape, sin: Shape },
    #[error(
        "rotary embedding: mrope_section {section:?} sums to {sum}, expected head_dim / 2 = {half}"
    )]
    MropeSection {
        section: Vec<usize>,
        sum: usize,
        half: usize,
    },
    #[error("rotary embedding: {what} position ids must have shape {expected}, got {got:?}")]
    PositionShape {
        what: &'static str,
        expected: &'static str,
        got: Shape,
    },
    #[error("attention: {heads} query heads is not a multiple of {kv_heads} key/value heads")]
    HeadGroups { heads: usize, kv_heads: usize },
    #[error("attention: inconsistent shapes q {q:?}, k {k:?}, v {v:?}")]
    AttentionShapes { q: Shape, k: Shape, v: Shape },
    #[error("attention: mask of shape {mask:?} does not broadcast to scores of shape {scores:?}")]
    MaskShape { mask: Shape, scores: Shape },
    #[error("attention mask: {q_len} queries cannot attend causally to only {kv_len} keys")]
    CausalLengths { q_len: usize, kv_len: usize },
    #[error("attention mask: key validity must have shape (batch, kv_len), got {got:?}")]
    KeyValidShape { got: Shape },
    #[error("attention key spans: {reason}")]
    KeySpans { reason: String },
    #[error(
        "blocked attention runs in f32 or bf16 with q, k and v on one device, got {dtypes:?} on {device}"
    )]
    BlockedUnsupported { dtypes: [DType; 3], device: String },
    #[error("packed attention: invalid cu_seqlens {cu_seqlens:?}: {reason}")]
    CuSeqlens {
        cu_seqlens: Vec<usize>,
        reason: &'static str,
    },
    #[error("packed attention: {tensor} has {got} tokens but cu_seqlens describes {expected}")]
    PackedTokens {
        tensor: &'static str,
        got: usize,
        expected: usize,
    },
    #[error("shared-prefix attention: group {group}: {reason}")]
    PrefixGroups { group: usize, reason: String },
    #[error("gradient check: the function must return a single element, got shape {got:?}")]
    NotScalar { got: Shape },
}

impl From<LayerError> for candle_core::Error {
    fn from(err: LayerError) -> Self {
        candle_core::Error::wrap(err)
    }
}
