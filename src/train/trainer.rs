//! The training loop: groups in, a trained adapter (or model), a per-step log and checkpoints out.
//!
//! ```text
//! read groups -> fix N -> build model -> load images -> check every group's prompts (rejects)
//!   -> [resume from the newest checkpoint of this run]
//!   -> per step: `accumulation` micro-batches of `groups_per_batch` groups:
//!        prompts -> forward -> z_yes, z_no [G, 1 + N] -> group_loss -> backward -> accumulate
//!        (with `recompute = "layers"`, the forward pass keeps each layer's input only and the backward pass
//!        runs the layers again, last to first)
//!      AdamW step at the schedule's lr -> log row -> checkpoint every `checkpoint_every` steps
//!   -> adapter/ (PEFT) or model/ (full fine-tuning), train_log.jsonl, plots/
//! ```
//!
//! Every random choice (initialisation, adapter init, dropout, data order) follows the seed, and a checkpoint holds
//! the rest of the state, so a resumed run produces the same steps, losses and weights as an uninterrupted one.
//!
//! With several data-parallel ranks ([`train_prepared_on`]), each rank trains on its slice of every micro-batch
//! and the step's gradient is summed over the ranks before AdamW; rank 0 alone writes checkpoints and outputs
//! ([`super::parallel`] has the rules).

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{Device, Tensor};

use super::checkpoint::{self, CheckpointMeta};
use super::config::{DataFormat, Recompute, TrainConfig, Tuning};
use super::data::{fix_negatives, read_cl, read_sft, Group, GroupSet};
use super::encode::{Encoder, Sequence};
use super::failure::TrainRunError;
use super::forward::{batch_logits, BatchLayout};
use super::images::ImageBank;
use super::log::{write_log, StepLog, StepTiming};
use super::model::TrainableReranker;
use super::objective::{group_loss, ObjectiveConfig};
use super::order::DataOrder;
use super::parallel;
use super::plots::write_plots;
use crate::dataset::Dataset;
use crate::distributed::{Collective, Single};
use crate::models::layers::recompute::RecomputeTape;
use crate::optim::Schedule;
use crate::optim::{AdamW, GradAccumulator};
use crate::pipeline::Reject;
use crate::progress;
use crate::schema::outputs;

/// The datasets a run reads.
#[derive(Debug, Clone)]
pub struct TrainInputs {
    /// The `sft` or `cl` dataset, as `config.data` says.
    pub groups: Dataset,
    /// The corpus, for `cl` groups.
    pub corpus: Option<Dataset>,
    /// The images dataset, for groups with images.
    pub images: Option<Dataset>,
}

/// Everything about one run besides its config and inputs.
#[derive(Debug, Clone)]
pub struct RunSettings {
    pub seed: u64,
    pub device: Device,
    /// Outputs go here: adapter/ or model/, train_log.jsonl, plots/, checkpoints/.
    pub out_dir: PathBuf,
    /// Identifies the run for checkpoints: a hash of config, seed and inputs.
    pub run_key: String,
    /// Stop after this many optimizer steps of the run (a checkpoint is written there), as an interrupted run
    /// would; for tests of resuming. `None` runs to the end.
    pub stop_after: Option<u64>,
}

/// What a run did.
#[derive(Debug)]
pub struct TrainOutcome {
    /// Groups read from the input (the reject share is taken over these).
    pub records: u64,
    pub rejects: Vec<Reject>,
    /// Groups trained on.
    pub groups: usize,
    /// Negatives per group.
    pub negatives: usize,
    pub total_steps: u64,
    /// The step the run resumed from (0 for a fresh start).
    pub resumed_from: u64,
    pub log: Vec<StepLog>,
    /// The throughput of the steps this process ran.
    pub timing: Vec<StepTiming>,
    /// Distinct images whose tower output was cached.
    pub cached_images: usize,
    /// The adapter or model directory, when the run finished.
    pub output: Option<PathBuf>,
}

/// A model with the groups it can train on.
pub struct Prepared {
    pub model: TrainableReranker,
    pub images: Option<ImageBank>,
    pub groups: Vec<Group>,
    pub negatives: usize,
    pub records: u64,
    pub rejects: Vec<Reject>,
}

/// Reads the groups, builds the model and loads the images, and rejects the groups that cannot be trained on.
pub fn prepare(
    config: &TrainConfig,
    inputs: &TrainInputs,
    seed: u64,
    device: &Device,
) -> Result<Prepared, TrainRunError> {
    config.validate()?;
    let mut set = match config.data {
        DataFormat::Sft => read_sft(&inputs.groups)?,
        DataFormat::Cl => {
            let corpus = inputs.corpus.as_ref().ok_or_else(|| TrainRunError::Data {
                path: inputs.groups.path().to_path_buf(),
                message: "cl groups need the corpus to read their documents from".into(),
            })?;
            read_cl(&inputs.groups, corpus)?
        }
    };
    let records = (set.groups.len() + set.rejects.len()) as u64;
    let source = inputs.groups.path().display().to_string();
    let negatives = fix_negatives(&mut set, config.negatives, &source);
    let model = TrainableReranker::build(config, seed, device)?;
    let images = match model.vl() {
        Some(vl) => {
            let wanted: HashSet<&str> = set.groups.iter().flat_map(Group::image_ids).collect();
            let bank = match (&inputs.images, wanted.is_empty()) {
                (Some(dataset), _) => Some(ImageBank::load(
                    dataset,
                    &wanted,
                    vl.vision_config(),
                    (config.min_pixels, config.max_pixels),
                    config.image_processor,
                    config
                        .vision_cache
                        .then(|| config.vision_cache_budget_bytes()),
                    device,
                )?),
                (None, true) => None,
                (None, false) => {
                    return Err(TrainRunError::Data {
                        path: inputs.groups.path().to_path_buf(),
                        message: "the groups have images but no images dataset was given".into(),
                    })
                }
            };
            if let Some(counts) = bank.as_ref().and_then(ImageBank::token_counts) {
                let (min, max) = (config.min_pixels, config.max_pixels);
                tracing::info!("images at {min} to {max} pixels: {counts}");
            }
            bank
        }
        None => None,
    };
    let GroupSet {
        groups,
        mut rejects,
    } = set;
    let usable = {
        let encoder = encoder(&model, images.as_ref(), config.max_len)?;
        let mut usable = Vec::with_capacity(groups.len());
        for group in groups {
            match encoder.encode(&group) {
                Ok(_) => usable.push(group),
                Err(problem) => rejects.push(
                    Reject::new(&source, problem.reason, problem.detail)
                        .at_line(group.row)
                        .with_id(group.group_id.to_string()),
                ),
            }
        }
        usable
    };
    if usable.is_empty() {
        return Err(TrainRunError::NothingToTrain {
            rejected: rejects.len(),
            first: rejects
                .first()
                .map(ToString::to_string)
                .unwrap_or_else(|| "no groups in the input".into()),
        });
    }
    Ok(Prepared {
        model,
        images,
        groups: usable,
        negatives,
        records,
        rejects,
    })
}

fn encoder<'a>(
    model: &'a TrainableReranker,
    images: Option<&'a ImageBank>,
    max_len: usize,
) -> Result<Encoder<'a>, TrainRunError> {
    Ok(Encoder::new(model.prompt_builder()?, max_len, images))
}

/// Trains on `inputs` as `config` says and writes the outputs under `settings.out_dir`. With `config.resume`,
/// continues from the newest checkpoint of the same run.
pub fn train(
    config: &TrainConfig,
    inputs: &TrainInputs,
    settings: &RunSettings,
) -> Result<TrainOutcome, TrainRunError> {
    let prepared = prepare(config, inputs, settings.seed, &settings.device)?;
    Ok(train_prepared(config, prepared, settings)?.0)
}

/// Trains a prepared model and returns it with the outcome (for callers that go on to use the model).
pub fn train_prepared(
    config: &TrainConfig,
    prepared: Prepared,
    settings: &RunSettings,
) -> Result<(TrainOutcome, TrainableReranker), TrainRunError> {
    train_prepared_on(config, prepared, settings, &Single)
}

/// Trains a prepared model as one rank of a data-parallel run: its slice of every batch, gradients summed over
/// the ranks by `collective`. Every rank calls it with the same config, inputs and settings; rank 0 alone writes
/// the checkpoints and outputs, so only its outcome names an output directory.
pub fn train_prepared_on(
    config: &TrainConfig,
    prepared: Prepared,
    settings: &RunSettings,
    collective: &dyn Collective,
) -> Result<(TrainOutcome, TrainableReranker), TrainRunError> {
    Trainer::new(config, prepared, settings, collective)?.run()
}

/// The state of a run in progress.
struct Trainer<'a> {
    config: &'a TrainConfig,
    settings: &'a RunSettings,
    collective: &'a dyn Collective,
    objective: ObjectiveConfig,
    schedule: Schedule,
    prepared: Prepared,
    optimizer: AdamW,
    order: DataOrder,
    step: u64,
    groups_seen: u64,
    resumed_from: u64,
    log: Vec<StepLog>,
    timing: Vec<StepTiming>,
}

/// Sums over a step's micro-batches, weighted by their groups.
#[derive(Default)]
struct StepTotals {
    groups: usize,
    sequences: usize,
    tokens: usize,
    loss: f64,
    sft: f64,
    cl: f64,
    w_pos: f64,
    w_neg: f64,
    masked: u64,
}

impl StepTotals {
    /// The sums as numbers to add up across data-parallel ranks (counts are exact in f64).
    fn to_vec(&self) -> Vec<f64> {
        vec![
            self.groups as f64,
            self.sequences as f64,
            self.tokens as f64,
            self.loss,
            self.sft,
            self.cl,
            self.w_pos,
            self.w_neg,
            self.masked as f64,
        ]
    }

    fn from_slice(sums: &[f64]) -> Self {
        let at = |i: usize| sums.get(i).copied().unwrap_or(0.0);
        Self {
            groups: at(0) as usize,
            sequences: at(1) as usize,
            tokens: at(2) as usize,
            loss: at(3),
            sft: at(4),
            cl: at(5),
            w_pos: at(6),
            w_neg: at(7),
            masked: at(8) as u64,
        }
    }
}

impl<'a> Trainer<'a> {
    fn new(
        config: &'a TrainConfig,
        prepared: Prepared,
        settings: &'a RunSettings,
        collective: &'a dyn Collective,
    ) -> Result<Self, TrainRunError> {
        parallel::check(config, collective.world())?;
        let total_steps = config.total_steps(prepared.groups.len());
        let vars = prepared
            .model
            .trainable()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let order = DataOrder::new(prepared.groups.len(), settings.seed);
        Ok(Self {
            objective: config.objective_config()?,
            schedule: config.schedule(total_steps)?,
            optimizer: AdamW::new(vars, config.adamw())?,
            config,
            settings,
            collective,
            prepared,
            order,
            step: 0,
            groups_seen: 0,
            resumed_from: 0,
            log: Vec::new(),
            timing: Vec::new(),
        })
    }

    /// Whether this process writes checkpoints and outputs: rank 0 of a data-parallel run, or the only rank.
    fn writes(&self) -> bool {
        self.collective.rank() == 0
    }

    fn checkpoints(&self) -> PathBuf {
        self.settings.out_dir.join(outputs::train::CHECKPOINTS)
    }

    fn run(mut self) -> Result<(TrainOutcome, TrainableReranker), TrainRunError> {
        if self.config.resume {
            self.resume()?;
        } else if self.writes() {
            checkpoint::clear(&self.checkpoints())?;
        }
        if self.collective.world() > 1 {
            parallel::start_together(self.collective, &self.prepared.model, self.step)?;
        }
        let total = self.schedule.total_steps;
        let end = self
            .settings
            .stop_after
            .map_or(total, |stop| stop.min(total));
        let bar = if self.writes() {
            progress::bar(end.saturating_sub(self.step), "train steps")
        } else {
            indicatif::ProgressBar::hidden()
        };
        // Two runs may train side by side (`jobs`): their bars are told apart by the run's directory.
        let run = self
            .settings
            .out_dir
            .file_name()
            .map_or_else(|| "train".into(), |name| name.to_string_lossy());
        while self.step < end {
            let (row, timing) = self.train_step()?;
            bar.set_message(format!("{run} loss {:.4}", row.loss));
            bar.inc(1);
            self.log.push(row);
            self.timing.push(timing);
            let every = self.config.checkpoint_every;
            let interrupted = Some(self.step) == self.settings.stop_after && self.step < total;
            if self.writes()
                && (interrupted || (every > 0 && self.step % every == 0 && self.step < total))
            {
                self.save_checkpoint()?;
            }
        }
        bar.finish_and_clear();
        let output = if self.step == total && self.writes() {
            Some(self.write_outputs()?)
        } else {
            None
        };
        let outcome = TrainOutcome {
            records: self.prepared.records,
            rejects: self.prepared.rejects,
            groups: self.prepared.groups.len(),
            negatives: self.prepared.negatives,
            total_steps: total,
            resumed_from: self.resumed_from,
            log: self.log,
            timing: self.timing,
            cached_images: self.prepared.images.as_ref().map_or(0, ImageBank::cached),
            output,
        };
        Ok((outcome, self.prepared.model))
    }

    fn resume(&mut self) -> Result<(), TrainRunError> {
        let Some(found) = checkpoint::latest(&self.checkpoints(), &self.settings.run_key)? else {
            return Ok(());
        };
        tracing::info!("resuming from {}", found.dir.display());
        let mut state = found.state(&self.settings.device)?;
        state.restore_params(&self.prepared.model.trainable(), &found.dir)?;
        self.optimizer.load_state(state.optimizer)?;
        self.prepared
            .model
            .set_dropout_positions(&found.meta.dropout_positions(&found.dir)?)?;
        self.step = found.meta.step;
        self.groups_seen = found.meta.groups_seen;
        self.resumed_from = found.meta.step;
        self.log = found.meta.log;
        Ok(())
    }

    fn save_checkpoint(&self) -> Result<(), TrainRunError> {
        let meta = CheckpointMeta::new(
            &self.settings.run_key,
            self.step,
            self.groups_seen,
            &self.prepared.model.dropout_positions()?,
            &self.log,
        );
        let dir = checkpoint::save(
            &self.checkpoints(),
            &meta,
            &self.prepared.model.trainable(),
            self.optimizer.state()?,
            self.config.keep_checkpoints,
        )?;
        tracing::debug!("checkpoint {}", dir.display());
        Ok(())
    }

    /// One optimizer step over `accumulation` micro-batches.
    fn train_step(&mut self) -> Result<(StepLog, StepTiming), TrainRunError> {
        let clock = Instant::now();
        let vars: Vec<_> = self
            .prepared
            .model
            .trainable()
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        let mut accumulator = GradAccumulator::new(vars);
        let mut totals = StepTotals::default();
        let (rank, world) = (self.collective.rank(), self.collective.world());
        if world > 1 {
            parallel::place_dropout(&self.prepared.model, self.step, rank, world)?;
        }
        for _ in 0..self.config.accumulation {
            let micro_batch = self
                .order
                .take(self.groups_seen, self.config.groups_per_batch);
            self.groups_seen += micro_batch.len() as u64;
            let picked = parallel::rank_slice(&micro_batch, rank, world);
            let sequences = self.sequences(picked)?;
            let prepared = &mut self.prepared;
            let tape = (self.config.recompute_mode() == Recompute::Layers).then(RecomputeTape::new);
            let logits = batch_logits(
                &prepared.model,
                prepared.images.as_mut(),
                &sequences,
                prepared.negatives + 1,
                BatchLayout::of(self.config),
                true,
                tape.as_ref(),
            )?;
            let report = group_loss(&self.objective, &logits.z_yes, &logits.z_no)?;
            let grads = match tape {
                Some(tape) => tape.backward(&report.loss)?,
                None => report.loss.backward()?,
            };
            let weight = picked.len() as f64;
            accumulator.add_weighted(&grads, weight)?;
            totals.groups += picked.len();
            totals.sequences += sequences.len();
            totals.tokens += logits.tokens;
            totals.loss += weight * scalar(&report.loss)?;
            totals.sft += weight * report.sft;
            totals.cl += weight * report.cl;
            totals.w_pos += weight * report.w_pos_mean;
            totals.w_neg += weight * report.w_neg_mean;
            totals.masked += report.masked as u64;
        }
        let grads = if world > 1 {
            let mut sums = totals.to_vec();
            let grads = parallel::reduce_step(self.collective, &mut accumulator, &mut sums)?;
            totals = StepTotals::from_slice(&sums);
            grads
        } else {
            accumulator.take()?
        };
        let lr = self.schedule.lr(self.step);
        let stepped = self.optimizer.step(&grads, lr)?;
        self.step += 1;
        let seconds = clock.elapsed().as_secs_f64().max(1e-9);
        let groups = totals.groups as f64;
        let timing = StepTiming {
            step: self.step,
            seq_per_s: totals.sequences as f64 / seconds,
            tokens_per_s: totals.tokens as f64 / seconds,
        };
        let row = StepLog {
            step: self.step,
            epoch: self.groups_seen as f64 / self.prepared.groups.len() as f64,
            loss: totals.loss / groups,
            sft_loss: totals.sft / groups,
            cl_loss: totals.cl / groups,
            lr,
            grad_norm: stepped.grad_norm,
            w_pos: totals.w_pos / groups,
            w_neg: totals.w_neg / groups,
            masked: totals.masked,
            groups: totals.groups as u64,
        };
        Ok((row, timing))
    }

    /// The prompts of the picked groups, group after group.
    fn sequences(&self, picked: &[usize]) -> Result<Vec<Sequence>, TrainRunError> {
        let encoder = encoder(
            &self.prepared.model,
            self.prepared.images.as_ref(),
            self.config.max_len,
        )?;
        let mut sequences = Vec::with_capacity(picked.len() * (self.prepared.negatives + 1));
        for &index in picked {
            let group = &self.prepared.groups[index];
            let encoded = encoder.encode(group).map_err(|p| {
                TrainRunError::model(format!(
                    "group {} no longer encodes: {}",
                    group.group_id, p.detail
                ))
            })?;
            sequences.extend(encoded);
        }
        Ok(sequences)
    }

    fn write_outputs(&self) -> Result<PathBuf, TrainRunError> {
        let out = &self.settings.out_dir;
        std::fs::create_dir_all(out).map_err(TrainRunError::io(out))?;
        let dir = match self.config.tune {
            Tuning::Lora => {
                let dir = out.join(outputs::train::ADAPTER);
                self.prepared.model.save_adapter(&dir)?;
                self.prepared.model.record_prompt(&dir)?;
                dir
            }
            Tuning::Full => {
                let dir = out.join(outputs::train::MODEL);
                self.prepared.model.save_full(&dir)?;
                self.prepared.model.record_prompt(&dir)?;
                dir
            }
        };
        write_log(&out.join(outputs::train::TRAIN_LOG), &self.log)?;
        write_log(&out.join(outputs::train::TRAIN_TIMING), &self.timing)?;
        write_plots(&out.join(outputs::train::PLOTS), &self.log)?;
        Ok(dir)
    }
}

fn scalar(tensor: &Tensor) -> candle_core::Result<f64> {
    tensor.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()
}

/// The output directory a config produces under `out`.
pub fn output_dir(config: &TrainConfig, out: &Path) -> PathBuf {
    match config.tune {
        Tuning::Lora => out.join(outputs::train::ADAPTER),
        Tuning::Full => out.join(outputs::train::MODEL),
    }
}
