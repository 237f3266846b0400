//! The reranker's training objectives over groups of one positive and N negatives (docs/method.md, arXiv 2510.14824).
//!
//! A group's documents are scored by the logits `z_y`, `z_n` of the "yes" and "no" tokens at the last position.
//! Every loss here is normalised the same way: **summed over the documents of a group, averaged over groups**.
//! That choice is what makes the unified view exact: with it, the gradient of the SFT loss with respect to
//! `z_y - z_n` is `-p_no(h0)` on the positive and `p_yes(hi)` on each negative, which are precisely the unified
//! weights, so `unified(sft, sft)` and SFT have the same gradient (and likewise for CL), not merely proportional
//! ones.
//!
//! - SFT: per document, cross-entropy over `{no, yes}` with `p_yes = softmax([z_n, z_y])[1] = sigmoid(z_y - z_n)`;
//!   label yes for the positive (column 0), no for the negatives.
//! - CL: InfoNCE over the group on `s = z_y / temperature`: `-log softmax(s)[0]`.
//! - Unified: `L = -sg(W+) f_D(h0) + sum_i sg(Wi-) f_D(hi)` with `sg` the stop-gradient. The direction is
//!   `f_D = z_y - z_n` (SFT) or `f_D = s = z_y / temperature` (CL: the temperature belongs to CL's score, so with
//!   it `unified(cl, cl)` reproduces CL's gradient at any temperature). The weights come from SFT
//!   (`W+ = p_no(h0)`, `Wi- = p_yes(hi)`), from CL (`W+ = sum_i q_i`, `Wi- = q_i` with `q = softmax(s)` over the
//!   group) or are constant 1. The optional tau-mask zeroes the weight of an example the model already gets right:
//!   the positive when `p+ > 1 - tau`, a negative when `p- < tau`, where `p` is the weight source's probability
//!   (SFT: `p_yes`; CL: `q`, the document's softmax probability within its group; constant weights have no
//!   probability of their own and use `p_yes`, the reranker's score).
//!
//! The weights, the mask and the reported loss values are computed on the host in f64 from the logits (a group is
//! a few dozen numbers); the differentiable loss is computed on the logits' device in f32, or in f64 for f64
//! logits, whatever the model's dtype.

use super::error::TrainError;
use crate::models::formats::precision::compute_dtype;
use crate::models::layers::softmax::log_softmax;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Where the unified objective's per-example weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WeightSource {
    Sft,
    Cl,
    Const,
}

/// Which score the unified objective pushes up on the positive and down on the negatives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DirectionSource {
    Sft,
    Cl,
}

/// The loss a training run optimises.
///
/// In a config file the variant is named by the `objective` key, next to its fields:
/// `objective = "unified"`, `weight = "const"`, `direction = "sft"`, `tau = 0.1`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "objective", rename_all = "lowercase")]
pub enum Objective {
    Sft,
    Cl,
    Unified {
        weight: WeightSource,
        direction: DirectionSource,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tau: Option<f64>,
    },
}

/// An objective and the CL temperature (used by the CL loss, CL weights and the CL direction).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ObjectiveConfig {
    #[serde(flatten)]
    pub objective: Objective,
    #[serde(default = "default_temperature")]
    pub temperature: f64,
}

fn default_temperature() -> f64 {
    1.0
}

impl Default for ObjectiveConfig {
    /// SFT, the paper's best objective; temperature 1 as in the paper's CL runs.
    fn default() -> Self {
        Self {
            objective: Objective::Sft,
            temperature: default_temperature(),
        }
    }
}

impl ObjectiveConfig {
    /// Rejects a temperature that is not a positive finite number and a tau outside `[0, 1)`.
    pub fn check(&self) -> Result<(), TrainError> {
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(TrainError::Objective {
                field: "temperature",
                problem: format!("{} is not a positive finite number", self.temperature),
            });
        }
        if let Objective::Unified { tau: Some(tau), .. } = self.objective {
            if !(0.0..1.0).contains(&tau) {
                return Err(TrainError::Objective {
                    field: "tau",
                    problem: format!("{tau} is not in [0, 1)"),
                });
            }
        }
        Ok(())
    }

    /// The objective's own weights in the unified view: what a unified objective optimises with, and what
    /// [`LossReport`] reports for every objective.
    fn unified_weights(&self) -> (WeightSource, Option<f64>) {
        match self.objective {
            Objective::Sft => (WeightSource::Sft, None),
            Objective::Cl => (WeightSource::Cl, None),
            Objective::Unified { weight, tau, .. } => (weight, tau),
        }
    }
}

impl fmt::Display for WeightSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sft => "sft",
            Self::Cl => "cl",
            Self::Const => "const",
        })
    }
}

impl fmt::Display for DirectionSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Sft => "sft",
            Self::Cl => "cl",
        })
    }
}

impl fmt::Display for Objective {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Sft => f.write_str("sft"),
            Self::Cl => f.write_str("cl"),
            Self::Unified {
                weight,
                direction,
                tau,
            } => {
                write!(f, "unified(weight={weight}, direction={direction}")?;
                if let Some(tau) = tau {
                    write!(f, ", tau={tau}")?;
                }
                f.write_str(")")
            }
        }
    }
}

/// One batch's loss and what a training log shows about it.
#[derive(Debug, Clone)]
pub struct LossReport {
    /// The differentiable objective being optimised, a scalar averaged over groups.
    pub loss: Tensor,
    /// The SFT loss value on these logits (summed over a group's documents, averaged over groups), whatever the
    /// objective.
    pub sft: f64,
    /// The CL loss value on these logits (at the configured temperature, averaged over groups), whatever the
    /// objective.
    pub cl: f64,
    /// Mean positive weight W+ over groups, after the tau-mask, of the objective's weight source (SFT's weights
    /// for SFT, CL's for CL).
    pub w_pos_mean: f64,
    /// Mean negative weight Wi- over all negatives, after the tau-mask.
    pub w_neg_mean: f64,
    /// How many examples (positives and negatives) the tau-mask zeroed.
    pub masked: usize,
}

/// The objective of `cfg` on a batch of groups.
///
/// `z_yes`, `z_no`: `[groups, 1 + N]` logits of the "yes"/"no" tokens at each sequence's last position; column 0
/// is the group's positive, columns `1..=N` its negatives (N at least 1). Returns a scalar loss to call
/// `.backward()` on, computed in f32 (f64 for f64 logits).
pub fn group_loss(
    cfg: &ObjectiveConfig,
    z_yes: &Tensor,
    z_no: &Tensor,
) -> Result<LossReport, TrainError> {
    cfg.check()?;
    let logits = HostLogits::read(z_yes, z_no)?;
    let math = compute_dtype(z_yes.dtype());
    let (z_yes, z_no) = (z_yes.to_dtype(math)?, z_no.to_dtype(math)?);
    let temperature = cfg.temperature;
    let (source, tau) = cfg.unified_weights();
    let weights = UnifiedWeights::compute(&logits, source, temperature, tau);
    let loss = match cfg.objective {
        Objective::Sft => sft_loss(&z_yes, &z_no)?,
        Objective::Cl => cl_loss(&z_yes, temperature)?,
        Objective::Unified { direction, .. } => {
            let direction = match direction {
                DirectionSource::Sft => (&z_yes - &z_no)?,
                DirectionSource::Cl => (&z_yes / temperature)?,
            };
            let signed = Tensor::from_vec(
                weights.signed(),
                (logits.groups, logits.columns),
                z_yes.device(),
            )?
            .to_dtype(math)?;
            ((direction * signed)?.sum_all()? / logits.groups as f64)?
        }
    };
    Ok(LossReport {
        loss,
        sft: logits.sft_loss(),
        cl: logits.cl_loss(temperature),
        w_pos_mean: weights.positive_mean(),
        w_neg_mean: weights.negative_mean(),
        masked: weights.masked,
    })
}

/// SFT: `-(1/G) sum_g [log p_yes(d_g0) + sum_i log p_no(d_gi)]`, the log-probabilities taken as a log-softmax
/// over the pair `(z_n, z_y)`.
fn sft_loss(z_yes: &Tensor, z_no: &Tensor) -> candle_core::Result<Tensor> {
    let (groups, columns) = z_yes.dims2()?;
    let log_p = log_softmax(&Tensor::stack(&[z_no, z_yes], 2)?)?;
    let positives = log_p.narrow(1, 0, 1)?.narrow(2, 1, 1)?.sum_all()?;
    let negatives = log_p
        .narrow(1, 1, columns - 1)?
        .narrow(2, 0, 1)?
        .sum_all()?;
    (positives + negatives)? * (-1.0 / groups as f64)
}

/// CL: `-(1/G) sum_g log softmax(z_y[g] / temperature)[0]`.
fn cl_loss(z_yes: &Tensor, temperature: f64) -> candle_core::Result<Tensor> {
    let groups = z_yes.dims2()?.0;
    let log_q = log_softmax(&(z_yes / temperature)?)?;
    log_q.narrow(1, 0, 1)?.sum_all()? * (-1.0 / groups as f64)
}

/// A batch's logits on the host in f64, row-major `[groups, columns]`, all finite.
struct HostLogits {
    groups: usize,
    columns: usize,
    yes: Vec<f64>,
    no: Vec<f64>,
}

impl HostLogits {
    fn read(z_yes: &Tensor, z_no: &Tensor) -> Result<Self, TrainError> {
        let shape_error = || TrainError::LogitShape {
            yes_shape: z_yes.shape().clone(),
            yes_dtype: z_yes.dtype(),
            no_shape: z_no.shape().clone(),
            no_dtype: z_no.dtype(),
        };
        let (groups, columns) = z_yes.dims2().map_err(|_| shape_error())?;
        if z_no.dims() != z_yes.dims()
            || z_no.dtype() != z_yes.dtype()
            || groups == 0
            || columns < 2
        {
            return Err(shape_error());
        }
        let host = |t: &Tensor| -> candle_core::Result<Vec<f64>> {
            t.to_dtype(DType::F64)?.flatten_all()?.to_vec1::<f64>()
        };
        let logits = Self {
            groups,
            columns,
            yes: host(z_yes)?,
            no: host(z_no)?,
        };
        logits.check_finite()?;
        Ok(logits)
    }

    fn check_finite(&self) -> Result<(), TrainError> {
        for (which, values) in [("yes", &self.yes), ("no", &self.no)] {
            if let Some(at) = values.iter().position(|v| !v.is_finite()) {
                return Err(TrainError::NonFiniteLogit {
                    which,
                    group: at / self.columns,
                    column: at % self.columns,
                    value: values[at],
                });
            }
        }
        Ok(())
    }

    /// `z_y - z_n` of group `g`, the log-odds of "yes".
    fn margins(&self, g: usize) -> Vec<f64> {
        let row = g * self.columns..(g + 1) * self.columns;
        self.yes[row.clone()]
            .iter()
            .zip(&self.no[row])
            .map(|(y, n)| y - n)
            .collect()
    }

    /// `softmax(z_y / temperature)` over group `g`.
    fn group_softmax(&self, g: usize, temperature: f64) -> Vec<f64> {
        let scores: Vec<f64> = self.yes[g * self.columns..(g + 1) * self.columns]
            .iter()
            .map(|y| y / temperature)
            .collect();
        let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let exp: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = exp.iter().sum();
        exp.iter().map(|e| e / total).collect()
    }

    fn sft_loss(&self) -> f64 {
        let total: f64 = (0..self.groups)
            .map(|g| {
                let margins = self.margins(g);
                softplus(-margins[0]) + margins[1..].iter().map(|&d| softplus(d)).sum::<f64>()
            })
            .sum();
        total / self.groups as f64
    }

    fn cl_loss(&self, temperature: f64) -> f64 {
        let total: f64 = (0..self.groups)
            .map(|g| {
                let scores: Vec<f64> = self.yes[g * self.columns..(g + 1) * self.columns]
                    .iter()
                    .map(|y| y / temperature)
                    .collect();
                let max = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let log_sum = max + scores.iter().map(|s| (s - max).exp()).sum::<f64>().ln();
                log_sum - scores[0]
            })
            .sum();
        total / self.groups as f64
    }
}

/// `log(1 + e^x)` without overflow for large `x` or loss of precision for very negative `x`.
fn softplus(x: f64) -> f64 {
    x.max(0.0) + (-x.abs()).exp().ln_1p()
}

fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The unified view's weights of one batch: per group, W+ in column 0 and Wi- in columns `1..`, after the mask.
struct UnifiedWeights {
    columns: usize,
    weights: Vec<f64>,
    masked: usize,
}

impl UnifiedWeights {
    fn compute(
        logits: &HostLogits,
        source: WeightSource,
        temperature: f64,
        tau: Option<f64>,
    ) -> Self {
        let mut weights = Vec::with_capacity(logits.groups * logits.columns);
        let mut masked = 0;
        for g in 0..logits.groups {
            let (raw, probability) = match source {
                WeightSource::Sft => sft_weights(&logits.margins(g)),
                WeightSource::Cl => cl_weights(logits.group_softmax(g, temperature)),
                WeightSource::Const => {
                    let p_yes = logits.margins(g).into_iter().map(sigmoid).collect();
                    (vec![1.0; logits.columns], p_yes)
                }
            };
            for (column, (w, p)) in raw.into_iter().zip(probability).enumerate() {
                let learned =
                    tau.is_some_and(|tau| if column == 0 { p > 1.0 - tau } else { p < tau });
                masked += usize::from(learned);
                weights.push(if learned { 0.0 } else { w });
            }
        }
        Self {
            columns: logits.columns,
            weights,
            masked,
        }
    }

    /// The coefficients of `f_D` in the loss: `-W+` on positives, `+Wi-` on negatives.
    fn signed(&self) -> Vec<f64> {
        self.weights
            .iter()
            .enumerate()
            .map(|(at, &w)| if at % self.columns == 0 { -w } else { w })
            .collect()
    }

    fn positive_mean(&self) -> f64 {
        let positives: Vec<f64> = self.weights.iter().step_by(self.columns).copied().collect();
        positives.iter().sum::<f64>() / positives.len() as f64
    }

    fn negative_mean(&self) -> f64 {
        let (sum, count) = self
            .weights
            .iter()
            .enumerate()
            .filter(|(at, _)| at % self.columns != 0)
            .fold((0.0, 0usize), |(sum, count), (_, &w)| (sum + w, count + 1));
        sum / count as f64
    }
}

/// SFT's weights of one group from its margins `z_y - z_n`: `(weights, p_yes)`. `W+ = p_no(h0)` is computed as
/// `sigmoid(-d0)`, not `1 - p_yes`, so that it keeps its precision when the positive is nearly learned.
fn sft_weights(margins: &[f64]) -> (Vec<f64>, Vec<f64>) {
    let p_yes: Vec<f64> = margins.iter().copied().map(sigmoid).collect();
    let mut weights = p_yes.clone();
    weights[0] = sigmoid(-margins[0]);
    (weights, p_yes)
}

/// CL's weights of one group from its softmax `q`: `(weights, q)`. `W+ = sum_i q_i` over the negatives, which is
/// `1 - q_0` without its cancellation.
fn cl_weights(q: Vec<f64>) -> (Vec<f64>, Vec<f64>) {
    let mut weights = q.clone();
    weights[0] = q[1..].iter().sum();
    (weights, q)
}
