//! What can go wrong in an optimizer step or a schedule: a bad setting, named by its field, or numbers that
//! would destroy the weights if applied (a non-finite gradient stops the step with its position).

use candle_core::Shape;

#[derive(Debug, thiserror::Error)]
pub enum OptimError {
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
