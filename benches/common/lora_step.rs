//! One reranker training step as the train stage's `Trainer::train_step` runs it for one micro-batch (forward
//! pass, group loss, backward with or without layer recomputation, weighted gradient accumulation, AdamW), shared
//! by the benchmarks that time it and those that measure its memory.

use anyhow::Result;
use candle_core::Device;
use umrank::models::layers::recompute::RecomputeTape;
use umrank::optim::{AdamW, GradAccumulator};
use umrank::train::config::Recompute;
use umrank::train::encode::Sequence;
use umrank::train::forward::{batch_logits, BatchLayout};
use umrank::train::model::TrainableReranker;
use umrank::train::objective::group_loss;
use umrank::train::TrainConfig;

/// The phases a step passes through, in order, for callers that sample something after each.
#[derive(Debug, Clone, Copy)]
pub enum Phase {
    Forward,
    Backward,
    Step,
}

/// What one step reports.
pub struct StepReport {
    pub tokens: usize,
    pub loss: f64,
    pub grad_norm: f64,
}

/// A model with its optimizer state, stepping on text-only prompts.
pub struct LoraStepper {
    pub model: TrainableReranker,
    config: TrainConfig,
    optimizer: AdamW,
    accumulator: GradAccumulator,
}

impl LoraStepper {
    pub fn build(config: TrainConfig) -> Result<Self> {
        config.validate()?;
        let model = TrainableReranker::build(&config, 0, &Device::Cpu)?;
        let vars: Vec<_> = model.trainable().into_iter().map(|(_, v)| v).collect();
        let optimizer = AdamW::new(vars.clone(), config.adamw())?;
        let accumulator = GradAccumulator::new(vars);
        Ok(Self {
            model,
            config,
            optimizer,
            accumulator,
        })
    }

    /// One step on `prompts` (groups of `per_group` token-id rows, positive first); `after` runs after each phase.
    pub fn step(
        &mut self,
        prompts: &[Vec<u32>],
        per_group: usize,
        mut after: impl FnMut(Phase) -> Result<()>,
    ) -> Result<StepReport> {
        let sequences: Vec<Sequence> = prompts
            .iter()
            .map(|ids| Sequence {
                ids: ids.clone(),
                images: Vec::new(),
            })
            .collect();
        let tape = (self.config.recompute_mode() == Recompute::Layers).then(RecomputeTape::new);
        let logits = batch_logits(
            &self.model,
            None,
            &sequences,
            per_group,
            BatchLayout::of(&self.config),
            true,
            tape.as_ref(),
        )?;
        let report = group_loss(
            &self.config.objective_config()?,
            &logits.z_yes,
            &logits.z_no,
        )?;
        after(Phase::Forward)?;
        let grads = match tape {
            Some(tape) => tape.backward(&report.loss)?,
            None => report.loss.backward()?,
        };
        let groups = prompts.len() / per_group;
        self.accumulator.add_weighted(&grads, groups as f64)?;
        drop(grads);
        after(Phase::Backward)?;
        let stepped = self
            .optimizer
            .step(&self.accumulator.take()?, self.config.lr)?;
        after(Phase::Step)?;
        Ok(StepReport {
            tokens: logits.tokens,
            loss: report
                .loss
                .to_dtype(candle_core::DType::F64)?
                .to_scalar::<f64>()?,
            grad_norm: stepped.grad_norm,
        })
    }
}
