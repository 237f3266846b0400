//! Finite-difference gradient checking for anything built on candle's autograd.
//!
//! A candle op without a backward does not fail: the gradient silently stops at it. The only reliable way to know
//! that a layer trains is to compare the gradients `backward` produces with central finite differences of the
//! same function, in f64 where both are accurate to many digits.

use crate::models::layers::layer_error::LayerError;
use candle_core::{DType, Result, Tensor, Var};
use std::fmt;

/// Settings for [`GradCheck::run`].
#[derive(Debug, Clone, Copy)]
pub struct GradCheck {
    /// Finite-difference step. The five-point central difference has truncation error ~`step^4` and roundoff
    /// error ~`1e-16 / step` relative to the function's scale, so 1e-4 resolves gradients to ~1e-12, fine enough
    /// to expose a backward written with six-digit constants.
    pub step: f64,
    /// Errors are relative to `max(|analytic|, |numeric|, floor * largest gradient magnitude)`, the largest taken
    /// over all inputs: near-zero gradient entries are compared at the scale of the gradients instead of their
    /// own, where finite differences carry no relative precision.
    pub floor: f64,
}

impl Default for GradCheck {
    fn default() -> Self {
        Self {
            step: 1e-4,
            floor: 1e-3,
        }
    }
}

/// How far the analytic gradient of one input is from the finite-difference one.
#[derive(Debug, Clone, PartialEq)]
pub struct InputReport {
    pub max_rel_error: f64,
    pub max_abs_error: f64,
    /// Flat index of the element with the largest relative error, and its analytic and numeric gradients.
    pub worst_index: usize,
    pub worst_analytic: f64,
    pub worst_numeric: f64,
    /// Whether candle's backward reached this input at all.
    pub reached: bool,
}

/// The outcome of a gradient check, one entry per input.
#[derive(Debug, Clone, PartialEq)]
pub struct GradReport {
    pub inputs: Vec<InputReport>,
}

impl GradReport {
    /// The largest relative error over all inputs; infinite if any gradient was NaN or infinite.
    pub fn max_rel_error(&self) -> f64 {
        self.inputs
            .iter()
            .map(|input| input.max_rel_error)
            .fold(0.0, f64::max)
    }
}

impl fmt::Display for GradReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, input) in self.inputs.iter().enumerate() {
            writeln!(
                f,
                "input {i}: max rel {:.3e}, max abs {:.3e}, worst at {} (analytic {:.9e}, numeric {:.9e}){}",
                input.max_rel_error,
                input.max_abs_error,
                input.worst_index,
                input.worst_analytic,
                input.worst_numeric,
                if input.reached { "" } else { ", not reached by backward" }
            )?;
        }
        Ok(())
    }
}

impl GradCheck {
    /// Compares the gradients of `f` at `inputs` computed by `backward` with central finite differences.
    ///
    /// `f` maps the inputs to a single-element tensor; it is called once on variables for the analytic gradients
    /// and four times per input element for the numeric ones, so keep the inputs small. Inputs are converted to f64
    /// first, and `f` must compute in the dtype it is given (build layers from the input tensors, and convert any
    /// constant it captures to f64).
    pub fn run<F>(&self, f: F, inputs: &[Tensor]) -> Result<GradReport>
    where
        F: Fn(&[Tensor]) -> Result<Tensor>,
    {
        let inputs: Vec<Tensor> = inputs
            .iter()
            .map(|t| t.to_dtype(DType::F64)?.detach().contiguous())
            .collect::<Result<_>>()?;
        let analytic = analytic_gradients(&f, &inputs)?;
        let numeric = numeric_gradients(&f, &inputs, self.step)?;
        let scale = analytic
            .iter()
            .map(|(grad, _)| grad)
            .chain(numeric.iter())
            .flatten()
            .fold(0.0f64, |m, g| m.max(g.abs()));
        let floor = self.floor * scale;
        let inputs = analytic
            .iter()
            .zip(&numeric)
            .map(|((analytic, reached), numeric)| compare(analytic, numeric, floor, *reached))
            .collect();
        Ok(GradReport { inputs })
    }
}

/// Per input, the flattened gradient and whether backward reached it (an unreached input gets zeros).
fn analytic_gradients<F>(f: &F, inputs: &[Tensor]) -> Result<Vec<(Vec<f64>, bool)>>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let vars: Vec<Var> = inputs.iter().map(Var::from_tensor).collect::<Result<_>>()?;
    let var_tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let grads = scalar(&f(&var_tensors)?)?.backward()?;
    var_tensors
        .iter()
        .map(|var| match grads.get(var) {
            Some(grad) => Ok((grad.flatten_all()?.to_vec1::<f64>()?, true)),
            None => Ok((vec![0.0; var.elem_count()], false)),
        })
        .collect()
}

fn numeric_gradients<F>(f: &F, inputs: &[Tensor], step: f64) -> Result<Vec<Vec<f64>>>
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let mut perturbed = inputs.to_vec();
    let mut gradients = Vec::with_capacity(inputs.len());
    for (i, input) in inputs.iter().enumerate() {
        let mut values = input.flatten_all()?.to_vec1::<f64>()?;
        let mut gradient = Vec::with_capacity(values.len());
        for j in 0..values.len() {
            let original = values[j];
            let mut evaluate_at = |x: f64| -> Result<f64> {
                values[j] = x;
                perturbed[i] = Tensor::from_slice(&values, input.shape(), input.device())?;
                scalar(&f(&perturbed)?)?.to_scalar::<f64>()
            };
            let near = evaluate_at(original + step)? - evaluate_at(original - step)?;
            let far = evaluate_at(original + 2.0 * step)? - evaluate_at(original - 2.0 * step)?;
            values[j] = original;
            gradient.push((8.0 * near - far) / (12.0 * step));
        }
        perturbed[i] = input.clone();
        gradients.push(gradient);
    }
    Ok(gradients)
}

fn scalar(out: &Tensor) -> Result<Tensor> {
    if out.elem_count() != 1 {
        return Err(LayerError::NotScalar {
            got: out.shape().clone(),
        }
        .into());
    }
    out.to_dtype(DType::F64)?.reshape(())
}

fn compare(analytic: &[f64], numeric: &[f64], floor: f64, reached: bool) -> InputReport {
    let mut report = InputReport {
        max_rel_error: 0.0,
        max_abs_error: 0.0,
        worst_index: 0,
        worst_analytic: analytic.first().copied().unwrap_or(0.0),
        worst_numeric: numeric.first().copied().unwrap_or(0.0),
        reached,
    };
    for (index, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
        let diff = (a - n).abs();
        let denominator = a.abs().max(n.abs()).max(floor);
        let (abs, rel) = if !diff.is_finite() {
            (f64::INFINITY, f64::INFINITY)
        } else if denominator > 0.0 {
            (diff, diff / denominator)
        } else {
            (diff, 0.0)
        };
        report.max_abs_error = report.max_abs_error.max(abs);
        if rel > report.max_rel_error {
            report.max_rel_error = rel;
            report.worst_index = index;
            report.worst_analytic = a;
            report.worst_numeric = n;
        }
    }
    report
}
