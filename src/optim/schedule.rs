//! The learning-rate schedule: linear warmup, then cosine, linear or no decay.
//!
//! The convention is transformers' (`get_cosine_schedule_with_warmup`, `get_linear_schedule_with_warmup`,
//! `get_constant_schedule_with_warmup`, and `get_cosine_with_min_lr_schedule_with_warmup` for a floor), so runs
//! compare step for step with Hugging Face trainers: `step` is the number of optimizer steps already taken, the
//! update with index `step` uses `lr(step)`, and warmup is `peak * step / warmup_steps`, which makes the very
//! first update of a warmed-up run a zero-learning-rate one, as there. After warmup the decay factor `f` goes from
//! 1 to 0 over the remaining `total_steps - warmup_steps` steps and the learning rate is
//! `peak * (min_lr_ratio + (1 - min_lr_ratio) * f)`:
//!
//! - cosine: `f = (1 + cos(pi * progress)) / 2`,
//! - linear: `f = 1 - progress`,
//! - constant: `f = 1`,
//!
//! with `progress = (step - warmup_steps) / (total_steps - warmup_steps)`. One deliberate difference: past
//! `total_steps` the learning rate stays at its floor, where transformers' cosine would climb back up.

use super::error::OptimError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    Cosine,
    Linear,
    Constant,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub peak_lr: f64,
    pub warmup_steps: u64,
    pub total_steps: u64,
    pub decay: Decay,
    /// The floor the decay ends at, as a fraction of `peak_lr` (0 decays to zero).
    #[serde(default)]
    pub min_lr_ratio: f64,
}

impl Schedule {
    /// Rejects a negative or non-finite peak, a floor outside `[0, 1]`, and a warmup longer than the run.
    pub fn check(&self) -> Result<(), OptimError> {
        let problem = |field, problem: String| Err(OptimError::Schedule { field, problem });
        if !(self.peak_lr.is_finite() && self.peak_lr >= 0.0) {
            return problem(
                "peak_lr",
                format!("{} is not a non-negative finite number", self.peak_lr),
            );
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return problem(
                "min_lr_ratio",
                format!("{} is not in [0, 1]", self.min_lr_ratio),
            );
        }
        if self.warmup_steps > self.total_steps {
            return problem(
                "warmup_steps",
                format!(
                    "{} exceeds total_steps {}",
                    self.warmup_steps, self.total_steps
                ),
            );
        }
        Ok(())
    }

    /// The learning rate of the update that follows `step` completed optimizer steps.
    pub fn lr(&self, step: u64) -> f64 {
        if step < self.warmup_steps {
            return self.peak_lr * step as f64 / self.warmup_steps as f64;
        }
        let decay_steps = self.total_steps.saturating_sub(self.warmup_steps).max(1);
        let progress = ((step - self.warmup_steps) as f64 / decay_steps as f64).min(1.0);
        let factor = match self.decay {
            Decay::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
            Decay::Linear => 1.0 - progress,
            Decay::Constant => 1.0,
        };
        self.peak_lr * (self.min_lr_ratio + (1.0 - self.min_lr_ratio) * factor)
    }
}
