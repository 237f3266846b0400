//! What can go wrong while computing a training loss, or applying an optimizer step ([`crate::optim`]'s errors).
//!
//! Configuration problems are reported before any tensor is touched, with the offending field named; problems in
//! the numbers themselves (a non-finite logit or gradient) stop training with the position at which they
//! appeared, because an update computed from them would silently destroy the weights.

use candle_core::{DType, Shape};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error("objective: {field} {problem}")]
    Objective {
        field: &'static str,
        problem: String,
    },
    #[error(
        "objective: z_yes ({yes_shape:?}, {yes_dtype:?}) and z_no ({no_shape:?}, {no_dtype:?}) must both be \
         [groups, 1 + negatives] with at least one group and one column, of one dtype"
    )]
    LogitShape {
        yes_shape: Shape,
        yes_dtype: DType,
        no_shape: Shape,
        no_dtype: DType,
    },
    #[error("objective: {which} logit of group {group}, column {column} is {value}")]
    NonFiniteLogit {
        which: &'static str,
        group: usize,
        column: usize,
        value: f64,
    },
    #[error(transparent)]
    Optim(#[from] crate::optim::OptimError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
