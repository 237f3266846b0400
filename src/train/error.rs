//! What can go wrong while computing a training loss or applying an optimizer step.
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
    #[error("optimizer: {field} {problem}")]
    Optimizer {
        field: &'static str,
        problem: String,
    },
    #[error(
        "optimizer: the gradient of parameter {param} has shape {got:?}, but the parameter has shape {expected:?}"
    )]
    GradientShape {
        param: usize,
        expected: Shape,
        got: Shape,
    },
    #[error(
        "optimizer: the global gradient norm at step {step} is {norm}; the update was not applied"
    )]
    NonFiniteGradient { step: u64, norm: f64 },
    #[error("optimizer state: {name}: {problem}")]
    OptimizerState { name: String, problem: String },
    #[error("schedule: {field} {problem}")]
    Schedule {
        field: &'static str,
        problem: String,
    },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}
