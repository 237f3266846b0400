//! AdamW with global-norm gradient clipping, fp32 state and fp32 master weights, and gradient accumulation.
//!
//! The update is torch.optim.AdamW's (non-amsgrad, single-tensor path), operation for operation, so that a run
//! here and a PyTorch run from the same numbers agree to float rounding:
//!
//! ```text
//! theta <- theta * (1 - lr * weight_decay)                  (decoupled decay, skipped when weight_decay = 0)
//! m     <- lerp(m, g, 1 - beta1)
//! v     <- beta2 * v + (1 - beta2) * g * g
//! theta <- theta - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
//! ```
//!
//! where `t` counts the steps in which that parameter had a gradient (PyTorch keeps the step per parameter).
//! Before the update, gradients are clipped as `torch.nn.utils.clip_grad_norm_` does: scaled by
//! `max_norm / (norm + 1e-6)` when that is below 1, `norm` being the 2-norm of all gradients together.
//!
//! Moments are f32 (f64 for f64 parameters). A bf16 or f16 parameter gets an f32 master copy: the update is
//! applied to the master and its rounding is written back into the `Var`, because an update of `lr * 1e-4`
//! relative size is below half a bf16 ulp and would round away if applied to the bf16 value itself.

use super::error::OptimError;
use crate::models::formats::precision::compute_dtype;
use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};

/// AdamW's hyper-parameters. The learning rate is not among them: it changes every step and is passed to
/// [`AdamW::step`] from the [`super::schedule::Schedule`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value; `None` never clips.
    pub max_grad_norm: Option<f64>,
}

impl Default for AdamWConfig {
    /// PyTorch's betas and eps, no weight decay, and clipping at 1.0 as transformers' Trainer does.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            max_grad_norm: Some(1.0),
        }
    }
}

impl AdamWConfig {
    /// Rejects betas outside `[0, 1)`, a non-positive eps or clip norm, and a negative weight decay.
    pub fn check(&self) -> Result<(), OptimError> {
        let problem = |field, problem: String| Err(OptimError::Optimizer { field, problem });
        for (field, beta) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&beta) {
                return problem(field, format!("{beta} is not in [0, 1)"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return problem(
                "eps",
                format!("{} is not a positive finite number", self.eps),
            );
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return problem(
                "weight_decay",
                format!("{} is not a non-negative finite number", self.weight_decay),
            );
        }
        if let Some(norm) = self.max_grad_norm {
            if !(norm.is_finite() && norm > 0.0) {
                return problem(
                    "max_grad_norm",
                    format!("{norm} is not a positive finite number"),
                );
            }
        }
        Ok(())
    }
}

/// What one optimizer step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// The global 2-norm of the gradients before clipping.
    pub grad_norm: f64,
    /// Whether clipping scaled the gradients down.
    pub clipped: bool,
    /// How many parameters had a gradient and were updated.
    pub updated: usize,
}

/// AdamW over a fixed list of variables.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<Param>,
    steps: u64,
}

/// One variable and its optimizer state.
#[derive(Debug)]
struct Param {
    var: Var,
    /// The f32 value a bf16/f16 variable is trained in; the variable holds its rounding.
    master: Option<Tensor>,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    /// Updates this parameter has received: the `t` of its bias correction.
    steps: u64,
}

impl Param {
    fn new(var: Var) -> Result<Self, OptimError> {
        let dtype = var.dtype();
        let math = compute_dtype(dtype);
        let master = (math != dtype)
            .then(|| var.as_detached_tensor().to_dtype(math))
            .transpose()?;
        let zeros = Tensor::zeros(var.shape(), math, var.device())?;
        Ok(Self {
            exp_avg: zeros.clone(),
            exp_avg_sq: zeros,
            master,
            var,
            steps: 0,
        })
    }

    fn math_dtype(&self) -> DType {
        self.exp_avg.dtype()
    }

    /// The full-precision value of the parameter.
    fn value(&self) -> Tensor {
        match &self.master {
            Some(master) => master.clone(),
            None => self.var.as_detached_tensor(),
        }
    }

    /// Stores `value` as the parameter's new full-precision value.
    fn set_value(&mut self, value: Tensor) -> Result<(), OptimError> {
        if self.master.is_some() {
            self.var.set(&value.to_dtype(self.var.dtype())?)?;
            self.master = Some(value);
        } else {
            self.var.set(&value)?;
        }
        Ok(())
    }

    /// One AdamW update with gradient `grad` (in the math dtype, already clipped).
    fn update(&mut self, grad: &Tensor, lr: f64, config: &AdamWConfig) -> Result<(), OptimError> {
        self.steps += 1;
        let t = self.steps as f64;
        let bias_correction1 = 1.0 - config.beta1.powf(t);
        let bias_correction2_sqrt = (1.0 - config.beta2.powf(t)).sqrt();
        let mut theta = self.value();
        if config.weight_decay != 0.0 {
            theta = (theta * (1.0 - lr * config.weight_decay))?;
        }
        self.exp_avg = lerp(&self.exp_avg, grad, 1.0 - config.beta1)?;
        self.exp_avg_sq =
            ((&self.exp_avg_sq * config.beta2)? + ((grad * (1.0 - config.beta2))? * grad)?)?;
        let denom = ((self.exp_avg_sq.sqrt()? / bias_correction2_sqrt)? + config.eps)?;
        let step = ((&self.exp_avg / denom)? * (lr / bias_correction1))?;
        self.set_value((theta - step)?)
    }
}

/// `start + weight * (end - start)` computed as torch's `lerp` does: from the nearer end, so that the result is
/// exact at both ends.
fn lerp(start: &Tensor, end: &Tensor, weight: f64) -> candle_core::Result<Tensor> {
    let diff = (end - start)?;
    if weight < 0.5 {
        start + (diff * weight)?
    } else {
        end - (diff * (1.0 - weight))?
    }
}

impl AdamW {
    /// An optimizer for `vars`, with zero moments. Every variable must be a float tensor and appear once.
    pub fn new(vars: Vec<Var>, config: AdamWConfig) -> Result<Self, OptimError> {
        config.check()?;
        let mut seen = HashSet::new();
        for (index, var) in vars.iter().enumerate() {
            if !seen.insert(var.as_tensor().id()) {
                return Err(OptimError::Optimizer {
                    field: "vars",
                    problem: format!("variable {index} is listed twice"),
                });
            }
            if !var.dtype().is_float() {
                return Err(OptimError::Optimizer {
                    field: "vars",
                    problem: format!("variable {index} has non-float dtype {:?}", var.dtype()),
                });
            }
        }
        Ok(Self {
            config,
            params: vars.into_iter().map(Param::new).collect::<Result<_, _>>()?,
            steps: 0,
        })
    }

    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }

    /// Optimizer steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.steps
    }

    /// Clips by global norm, then applies decoupled weight decay and the bias-corrected Adam update at learning
    /// rate `lr` (the schedule's value for this step) to every variable that has a gradient in `grads`.
    /// Gradients of other tensors are ignored. A non-finite gradient norm is an error and changes nothing.
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<StepReport, OptimError> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(OptimError::Optimizer {
                field: "lr",
                problem: format!("{lr} is not a non-negative finite number"),
            });
        }
        let grads = self.gradients(grads)?;
        let grad_norm = global_norm(grads.iter().flatten())?;
        if !grad_norm.is_finite() {
            return Err(OptimError::NonFiniteGradient {
                step: self.steps + 1,
                norm: grad_norm,
            });
        }
        let clip = self
            .config
            .max_grad_norm
            .map(|max_norm| max_norm / (grad_norm + 1e-6))
            .filter(|&coef| coef < 1.0);
        let mut updated = 0;
        for (param, grad) in self.params.iter_mut().zip(&grads) {
            if let Some(grad) = grad {
                let grad = match clip {
                    Some(coef) => (grad * coef)?,
                    None => grad.clone(),
                };
                param.update(&grad, lr, &self.config)?;
                updated += 1;
            }
        }
        self.steps += 1;
        Ok(StepReport {
            grad_norm,
            clipped: clip.is_some(),
            updated,
        })
    }

    /// Each parameter's gradient in its math dtype, `None` for a parameter the loss did not reach.
    fn gradients(&self, grads: &GradStore) -> Result<Vec<Option<Tensor>>, OptimError> {
        self.params
            .iter()
            .enumerate()
            .map(|(index, param)| {
                let Some(grad) = grads.get(param.var.as_tensor()) else {
                    return Ok(None);
                };
                if grad.shape() != param.var.shape() {
                    return Err(OptimError::GradientShape {
                        param: index,
                        expected: param.var.shape().clone(),
                        got: grad.shape().clone(),
                    });
                }
                Ok(Some(grad.to_dtype(param.math_dtype())?))
            })
            .collect()
    }

    /// The optimizer's state as named tensors, for a checkpoint: the step count, and per variable `i` (in the
    /// order given to [`AdamW::new`]) `param.i.exp_avg`, `param.i.exp_avg_sq`, `param.i.steps` and, for a
    /// half-precision variable, `param.i.master`. Counts are I64 tensors of shape `(1,)`.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>, OptimError> {
        let device = candle_core::Device::Cpu;
        let count = |n: u64| Tensor::new(&[n as i64], &device);
        let mut state = vec![("step".to_string(), count(self.steps)?)];
        for (index, param) in self.params.iter().enumerate() {
            let name = |part: &str| format!("param.{index}.{part}");
            state.push((name("exp_avg"), param.exp_avg.clone()));
            state.push((name("exp_avg_sq"), param.exp_avg_sq.clone()));
            state.push((name("steps"), count(param.steps)?));
            if let Some(master) = &param.master {
                state.push((name("master"), master.clone()));
            }
        }
        Ok(state)
    }

    /// Restores a state written by [`AdamW::state`] for the same variables, exactly; a half-precision variable is
    /// set to the rounding of its restored master. Nothing changes unless every tensor is present with the right
    /// shape and dtype and none is left over.
    pub fn load_state(
        &mut self,
        state: impl IntoIterator<Item = (String, Tensor)>,
    ) -> Result<(), OptimError> {
        let mut state: BTreeMap<String, Tensor> = state.into_iter().collect();
        let steps = take_count(&mut state, "step")?;
        let mut restored = Vec::with_capacity(self.params.len());
        for (index, param) in self.params.iter().enumerate() {
            let name = |part: &str| format!("param.{index}.{part}");
            let moment = |state: &mut BTreeMap<String, Tensor>, part: &str| {
                take_like(state, &name(part), &param.exp_avg)
            };
            let exp_avg = moment(&mut state, "exp_avg")?;
            let exp_avg_sq = moment(&mut state, "exp_avg_sq")?;
            let param_steps = take_count(&mut state, &name("steps"))?;
            let master = param
                .master
                .as_ref()
                .map(|master| take_like(&mut state, &name("master"), master))
                .transpose()?;
            restored.push((exp_avg, exp_avg_sq, param_steps, master));
        }
        if let Some(name) = state.keys().next() {
            return Err(OptimError::OptimizerState {
                name: name.clone(),
                problem: "is not part of this optimizer's state (a checkpoint of other variables?)"
                    .into(),
            });
        }
        for (param, (exp_avg, exp_avg_sq, steps, master)) in self.params.iter_mut().zip(restored) {
            param.exp_avg = exp_avg;
            param.exp_avg_sq = exp_avg_sq;
            param.steps = steps;
            if let Some(master) = master {
                param.set_value(master)?;
            }
        }
        self.steps = steps;
        Ok(())
    }
}

/// Removes `name` from `state`, checked to have `like`'s shape and dtype, and moved to its device.
fn take_like(
    state: &mut BTreeMap<String, Tensor>,
    name: &str,
    like: &Tensor,
) -> Result<Tensor, OptimError> {
    let tensor = take(state, name)?;
    if tensor.shape() != like.shape() || tensor.dtype() != like.dtype() {
        return Err(OptimError::OptimizerState {
            name: name.to_string(),
            problem: format!(
                "has shape {:?} and dtype {:?}, expected {:?} and {:?}",
                tensor.shape(),
                tensor.dtype(),
                like.shape(),
                like.dtype()
            ),
        });
    }
    Ok(tensor.to_device(like.device())?)
}

/// Removes the step counter `name` (an I64 tensor of shape `(1,)`) from `state`.
fn take_count(state: &mut BTreeMap<String, Tensor>, name: &str) -> Result<u64, OptimError> {
    let tensor = take(state, name)?;
    let bad = |problem: String| OptimError::OptimizerState {
        name: name.to_string(),
        problem,
    };
    if tensor.dtype() != DType::I64 || tensor.dims() != [1] {
        return Err(bad(format!(
            "has shape {:?} and dtype {:?}, expected (1,) and I64",
            tensor.shape(),
            tensor.dtype()
        )));
    }
    let value = tensor.to_vec1::<i64>()?[0];
    u64::try_from(value).map_err(|_| bad(format!("is negative ({value})")))
}

fn take(state: &mut BTreeMap<String, Tensor>, name: &str) -> Result<Tensor, OptimError> {
    state
        .remove(name)
        .ok_or_else(|| OptimError::OptimizerState {
            name: name.to_string(),
            problem: "is missing".into(),
        })
}

/// `sqrt(sum of squares)` over all the gradients, reduced on their device and read back once.
fn global_norm<'a>(grads: impl Iterator<Item = &'a Tensor>) -> Result<f64, OptimError> {
    let squares = grads
        .map(|grad| grad.sqr()?.sum_all()?.to_dtype(DType::F64))
        .collect::<candle_core::Result<Vec<_>>>()?;
    if squares.is_empty() {
        return Ok(0.0);
    }
    Ok(Tensor::stack(&squares, 0)?
        .sum_all()?
        .to_scalar::<f64>()?
        .sqrt())
}

/// Sums the gradients of several micro-batches for the same variables, for one optimizer step over all of them.
///
/// Each micro-batch's loss is a mean over its groups; [`GradAccumulator::take`] returns the weighted mean of the
/// added gradients, so with weights equal to the micro-batches' group counts (or all 1 for equal micro-batches)
/// the result is the gradient of the mean loss over every group. Sums are kept in f32 (f64 for f64 variables).
#[derive(Debug)]
pub struct GradAccumulator {
    vars: Vec<Var>,
    sums: Vec<Option<Tensor>>,
    total_weight: f64,
    added: usize,
}

impl GradAccumulator {
    pub fn new(vars: Vec<Var>) -> Self {
        let sums = vec![None; vars.len()];
        Self {
            vars,
            sums,
            total_weight: 0.0,
            added: 0,
        }
    }

    /// Adds one micro-batch's gradients with weight 1.
    pub fn add(&mut self, grads: &GradStore) -> Result<(), OptimError> {
        self.add_weighted(grads, 1.0)
    }

    /// Adds one micro-batch's gradients with weight `weight` (e.g. its number of groups).
    pub fn add_weighted(&mut self, grads: &GradStore, weight: f64) -> Result<(), OptimError> {
        if !(weight.is_finite() && weight > 0.0) {
            return Err(OptimError::Optimizer {
                field: "accumulation weight",
                problem: format!("{weight} is not a positive finite number"),
            });
        }
        for (index, (var, sum)) in self.vars.iter().zip(&mut self.sums).enumerate() {
            let Some(grad) = grads.get(var.as_tensor()) else {
                continue;
            };
            if grad.shape() != var.shape() {
                return Err(OptimError::GradientShape {
                    param: index,
                    expected: var.shape().clone(),
                    got: grad.shape().clone(),
                });
            }
            let scaled = (grad.to_dtype(compute_dtype(var.dtype()))? * weight)?;
            *sum = Some(match sum.take() {
                Some(previous) => (previous + scaled)?,
                None => scaled,
            });
        }
        self.total_weight += weight;
        self.added += 1;
        Ok(())
    }

    /// Micro-batches added since the last [`GradAccumulator::take`].
    pub fn count(&self) -> usize {
        self.added
    }

    /// The weighted mean of the added gradients, keyed by variable, and a reset. A variable that no micro-batch
    /// reached has no entry. Taking from an empty accumulator is an error.
    pub fn take(&mut self) -> Result<GradStore, OptimError> {
        if self.added == 0 {
            return Err(OptimError::Optimizer {
                field: "accumulator",
                problem: "holds no gradients to take".into(),
            });
        }
        let mut store = GradStore::default();
        for (var, sum) in self.vars.iter().zip(&mut self.sums) {
            if let Some(sum) = sum.take() {
                store.insert(var.as_tensor(), (sum / self.total_weight)?);
            }
        }
        self.total_weight = 0.0;
        self.added = 0;
        Ok(store)
    }

    /// The weighted sums of the added gradients, before the division by the total weight, and a reset: what
    /// data-parallel ranks add up across processes before [`GradAccumulator::mean_of`] divides the sums by the
    /// summed weight. A variable no micro-batch reached gets a zero sum and `reached = false`, so that every rank
    /// passes the same tensors. Unlike [`GradAccumulator::take`], an empty accumulator is not an error: a rank
    /// may hold no gradients.
    pub fn take_sums(&mut self) -> Result<WeightedSums, OptimError> {
        let mut sums = Vec::with_capacity(self.vars.len());
        let mut reached = Vec::with_capacity(self.vars.len());
        for (var, sum) in self.vars.iter().zip(&mut self.sums) {
            reached.push(sum.is_some());
            sums.push(match sum.take() {
                Some(sum) => sum,
                None => Tensor::zeros(var.shape(), compute_dtype(var.dtype()), var.device())?,
            });
        }
        let total_weight = self.total_weight;
        self.total_weight = 0.0;
        self.added = 0;
        Ok(WeightedSums {
            sums,
            reached,
            total_weight,
        })
    }

    /// The gradients that `sums` (this accumulator's, possibly summed over ranks) stand for: each reached sum
    /// divided by the total weight, keyed by variable, as [`GradAccumulator::take`] returns them.
    pub fn mean_of(&self, sums: WeightedSums) -> Result<GradStore, OptimError> {
        if !(sums.total_weight.is_finite() && sums.total_weight > 0.0) {
            return Err(OptimError::Optimizer {
                field: "accumulator",
                problem: format!("total weight {} is not positive", sums.total_weight),
            });
        }
        if sums.sums.len() != self.vars.len() || sums.reached.len() != self.vars.len() {
            return Err(OptimError::Optimizer {
                field: "accumulator",
                problem: format!("{} sums for {} variables", sums.sums.len(), self.vars.len()),
            });
        }
        let mut store = GradStore::default();
        for ((var, sum), reached) in self.vars.iter().zip(sums.sums).zip(sums.reached) {
            if reached {
                store.insert(var.as_tensor(), (sum / sums.total_weight)?);
            }
        }
        Ok(store)
    }
}

/// A step's gradient sums before the division by their total weight ([`GradAccumulator::take_sums`]).
#[derive(Debug)]
pub struct WeightedSums {
    /// Per variable, in the accumulator's order.
    pub sums: Vec<Tensor>,
    /// Whether some micro-batch reached the variable.
    pub reached: Vec<bool>,
    pub total_weight: f64,
}
