//! Softmax and log-softmax over the last dimension, with a backward pass.
//!
//! candle-nn's `softmax_last_dim` is a fused kernel registered without a backward, so a loss computed through it
//! trains nothing upstream. These are composed from candle ops that all have one. The row maximum is subtracted
//! for stability and detached: both functions are invariant to a per-row shift, so the exact gradient has no
//! component through the maximum, and detaching spares the backward pass the tie mask that `max` would build.
//!
//! Inputs may hold large finite negatives (masked attention scores): a row that is masked everywhere comes out
//! uniform rather than NaN. An all `-inf` row does give NaN, which is why [`crate::models::layers::mask`] uses finite values.

use candle_core::{Result, Tensor, D};

/// Softmax over the last dimension.
pub fn softmax(xs: &Tensor) -> Result<Tensor> {
    let exp = shift_by_row_max(xs)?.exp()?;
    exp.broadcast_div(&exp.sum_keepdim(D::Minus1)?)
}

/// Log-softmax over the last dimension: `x - max - log(sum(exp(x - max)))`, never `log(softmax(x))`, which
/// underflows to `-inf` for small probabilities.
pub fn log_softmax(xs: &Tensor) -> Result<Tensor> {
    let shifted = shift_by_row_max(xs)?;
    let log_norm = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    shifted.broadcast_sub(&log_norm)
}

fn shift_by_row_max(xs: &Tensor) -> Result<Tensor> {
    let row_max = xs.max_keepdim(D::Minus1)?.detach();
    xs.broadcast_sub(&row_max)
}
