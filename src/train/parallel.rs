//! Data-parallel training: what the training loop does differently when several ranks train one model
//! ([`crate::distributed`] holds the ranks themselves).
//!
//! The rule that makes N ranks equal one:
//!
//! - **The global batch does not depend on N.** A step is `accumulation` micro-batches of `groups_per_batch`
//!   groups, taken from the data order exactly as one rank takes them (the order is a function of the seed and
//!   the number of groups consumed, [`super::order`]). Rank r of N trains on the contiguous slice
//!   `[G r / N, G (r + 1) / N)` of each micro-batch of G groups; slices differ by at most one group when N does
//!   not divide G, and each rank needs at least one (`groups_per_batch >= N`).
//! - **Gradients are summed with group weights, then divided once.** A micro-batch's loss is the mean over its
//!   groups, so each rank adds its slice's gradient times the slice's group count, the ranks sum these sums
//!   and the total weight, and the step's gradient is the sum divided by the summed weight: the mean over every
//!   group of the global batch, as one rank computes it, for any split and uneven slices. The logged losses and
//!   weights are summed the same way.
//! - **Every rank makes the same update.** All ranks start from rank 0's weights (broadcast after building or
//!   resuming) and apply the same summed gradient with the same AdamW state, so they stay equal without
//!   exchanging weights again.
//!
//! The sum runs once per optimizer step, after the accumulation micro-batches, so its cost is shared by them.
//! It cannot overlap the backward pass: candle's backward returns every gradient at its end, with no hook per
//! parameter.
//!
//! LoRA dropout draws its masks from a generator per adapter. With more than one rank, each rank moves its
//! generators at the start of every step to a position that depends on the step and the rank alone, so masks
//! differ between ranks and steps and a resumed run draws the masks an uninterrupted one draws; they are not the
//! masks one rank would draw for the same groups, so runs with dropout agree across rank counts in distribution
//! only (with `lora_dropout = 0`, to float rounding).

use std::path::PathBuf;
use std::time::Duration;

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use super::config::TrainConfig;
use super::failure::TrainRunError;
use super::model::TrainableReranker;
use super::trainer::{prepare, train_prepared_on, RunSettings, TrainInputs, TrainOutcome};
use crate::dataset::Dataset;
use crate::distributed::process::{job_key, ProcessGroup};
use crate::distributed::{run_ranks, Collective};
use crate::optim::GradAccumulator;

/// The groups of a micro-batch that rank `rank` of `world` trains on.
pub fn rank_slice(micro_batch: &[usize], rank: usize, world: usize) -> &[usize] {
    let n = micro_batch.len();
    &micro_batch[n * rank / world..n * (rank + 1) / world]
}

/// Checks that a config can run on `world` ranks.
pub fn check(config: &TrainConfig, world: usize) -> Result<(), TrainRunError> {
    if config.groups_per_batch < world {
        return Err(TrainRunError::model(format!(
            "groups_per_batch = {} is below the {world} data-parallel ranks: every rank needs at least one group of \
             each micro-batch (groups_per_batch is the global micro-batch, split between the ranks)",
            config.groups_per_batch
        )));
    }
    Ok(())
}

/// Words of a LoRA dropout generator reserved for one rank's draws in one step (2^40: half a trillion draws).
const DROPOUT_SLOT_WORDS: u128 = 1 << 40;
/// ChaCha8's word positions end at 2^68 (a 64-bit block counter of 16 words).
const DROPOUT_SLOTS: u128 = 1 << 28;

/// Moves every LoRA dropout generator to the slot of (`step`, `rank`) among `world` ranks.
pub fn place_dropout(
    model: &TrainableReranker,
    step: u64,
    rank: usize,
    world: usize,
) -> Result<(), TrainRunError> {
    let positions = model.dropout_positions()?;
    if positions.iter().all(Option::is_none) {
        return Ok(());
    }
    let slot = u128::from(step) * world as u128 + rank as u128;
    if slot >= DROPOUT_SLOTS {
        return Err(TrainRunError::model(format!(
            "step {step} on {world} ranks runs past the LoRA dropout generators' {DROPOUT_SLOTS} slots"
        )));
    }
    let start = slot * DROPOUT_SLOT_WORDS;
    let placed: Vec<Option<u128>> = positions.iter().map(|p| p.map(|_| start)).collect();
    model.set_dropout_positions(&placed)
}

/// Sums a step's gradients and its log `stats` over the ranks and returns the step's gradient: the summed
/// gradient sums divided by the summed weight.
pub fn reduce_step(
    collective: &dyn Collective,
    accumulator: &mut GradAccumulator,
    stats: &mut [f64],
) -> Result<GradStore, TrainRunError> {
    let mut sums = accumulator.take_sums()?;
    // One f64 vector for the scalars: the total weight, how many ranks reached each variable, the log's sums.
    let mut scalars = vec![sums.total_weight];
    scalars.extend(sums.reached.iter().map(|&r| f64::from(u8::from(r))));
    scalars.extend_from_slice(stats);
    let mut tensors = sums.sums;
    tensors.push(Tensor::new(scalars.as_slice(), &Device::Cpu)?);
    collective.all_reduce_sum(&mut tensors)?;
    let summed = tensors
        .pop()
        .ok_or_else(|| TrainRunError::model("the all-reduce lost its scalars"))?
        .to_dtype(DType::F64)?
        .to_vec1::<f64>()?;
    let vars = tensors.len();
    sums.sums = tensors;
    sums.total_weight = summed[0];
    sums.reached = summed[1..=vars].iter().map(|&count| count > 0.0).collect();
    stats.copy_from_slice(&summed[1 + vars..]);
    Ok(accumulator.mean_of(sums)?)
}

/// Gives every rank rank 0's trainable weights and checks that all ranks start at the same step (they resume
/// from the same checkpoint only if they all see the output directory on shared storage).
pub fn start_together(
    collective: &dyn Collective,
    model: &TrainableReranker,
    step: u64,
) -> Result<(), TrainRunError> {
    let vars: Vec<_> = model.trainable().into_iter().map(|(_, v)| v).collect();
    let mut tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let mine = step as f64;
    tensors.push(Tensor::new(&[mine], &Device::Cpu)?);
    collective.broadcast(&mut tensors, 0)?;
    let first = tensors
        .pop()
        .ok_or_else(|| TrainRunError::model("the broadcast lost its step"))?
        .to_vec1::<f64>()?[0];
    if first != mine {
        return Err(TrainRunError::model(format!(
            "rank {} would resume at step {step} but rank 0 at step {first}: every rank must see the same \
             checkpoints (put the output directory on storage that every node mounts)",
            collective.rank()
        )));
    }
    if collective.rank() != 0 {
        for (var, value) in vars.iter().zip(tensors) {
            var.set(&value)?;
        }
    }
    Ok(())
}

/// Trains with `world` ranks as threads of this process, each with its own copy of the model on
/// `settings.device`, and returns rank 0's outcome and model. This is the data-parallel loop as the GPU ranks
/// run it, with an in-process all-reduce instead of NCCL: what the tests check it with on the CPU.
pub fn train_in_process(
    config: &TrainConfig,
    inputs: &TrainInputs,
    settings: &RunSettings,
    world: usize,
) -> Result<(TrainOutcome, TrainableReranker), TrainRunError> {
    let mut results = run_ranks(world, |rank| {
        let prepared = prepare(config, inputs, settings.seed, &settings.device)?;
        train_prepared_on(config, prepared, settings, rank)
    })
    .map_err(|failure| TrainRunError::Rank {
        rank: failure.rank,
        world: failure.world,
        source: Box::new(
            failure
                .error
                .unwrap_or_else(|| TrainRunError::model("panicked")),
        ),
    })?;
    if results.is_empty() {
        return Err(TrainRunError::model(
            "data-parallel training needs at least one rank",
        ));
    }
    Ok(results.swap_remove(0))
}

/// What rank 0 hands the other ranks of a process group through the store: a training to run with it, or the
/// word that none follows.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
enum JobMessage {
    Train(Box<TrainJob>),
    End,
}

/// Everything another rank needs to run the training rank 0 runs: the config, where the inputs are (on storage
/// every node mounts), and the run's identity. The device is each rank's own.
#[derive(Debug, Serialize, Deserialize)]
struct TrainJob {
    config: TrainConfig,
    groups: PathBuf,
    corpus: Option<PathBuf>,
    images: Option<PathBuf>,
    seed: u64,
    out_dir: PathBuf,
    run_key: String,
}

fn encode_job(message: &JobMessage) -> Result<Vec<u8>, TrainRunError> {
    serde_json::to_vec(message).map_err(|e| TrainRunError::model(format!("training job: {e}")))
}

/// Rank 0 of a process group: hands the training to the other ranks, then trains as rank 0 of the group.
pub fn lead(
    group: &ProcessGroup,
    config: &TrainConfig,
    inputs: &TrainInputs,
    prepared: super::Prepared,
    settings: &RunSettings,
) -> Result<(TrainOutcome, TrainableReranker), TrainRunError> {
    let (_training, key) = group.begin_job();
    let job = TrainJob {
        config: config.clone(),
        groups: inputs.groups.path().to_path_buf(),
        corpus: inputs.corpus.as_ref().map(|d| d.path().to_path_buf()),
        images: inputs.images.as_ref().map(|d| d.path().to_path_buf()),
        seed: settings.seed,
        out_dir: settings.out_dir.clone(),
        run_key: settings.run_key.clone(),
    };
    group
        .store
        .set(&key, &encode_job(&JobMessage::Train(Box::new(job)))?)?;
    train_prepared_on(config, prepared, settings, group.collective.as_ref())
}

/// Rank 0 of a process group, when its command is done: tells the other ranks that no training follows.
pub fn finish(group: &ProcessGroup) -> Result<(), TrainRunError> {
    group
        .store
        .set(&group.next_job_key(), &encode_job(&JobMessage::End)?)?;
    Ok(())
}

/// The ranks of a process group other than 0: run each training rank 0 hands out, on `device`, until it says
/// that none follows. Returns how many ran. Waits as long as rank 0 takes to get to a training (it may run the
/// stages before it first); a failure of rank 0 reaches this process through the group's watchdog.
pub fn follow(group: &ProcessGroup, device: &Device) -> Result<u64, TrainRunError> {
    let rank = group.collective.rank();
    let mut n = 0;
    loop {
        let key = job_key(n);
        let bytes = loop {
            if let Some(bytes) = group.store.wait(&key, Duration::from_secs(600))? {
                break bytes;
            }
            tracing::info!("rank {rank} waits for rank 0's training job {n}");
        };
        let message: JobMessage = serde_json::from_slice(&bytes)
            .map_err(|e| TrainRunError::model(format!("training job {n} from rank 0: {e}")))?;
        let job = match message {
            JobMessage::End => return Ok(n),
            JobMessage::Train(job) => job,
        };
        let open = |path: &PathBuf| Dataset::open(path);
        let inputs = TrainInputs {
            groups: open(&job.groups)?,
            corpus: job.corpus.as_ref().map(open).transpose()?,
            images: job.images.as_ref().map(open).transpose()?,
        };
        let settings = RunSettings {
            seed: job.seed,
            device: device.clone(),
            out_dir: job.out_dir.clone(),
            run_key: job.run_key.clone(),
            stop_after: None,
        };
        tracing::info!("rank {rank} trains job {n} into {}", job.out_dir.display());
        let prepared = prepare(&job.config, &inputs, job.seed, device)?;
        train_prepared_on(&job.config, prepared, &settings, group.collective.as_ref())?;
        n += 1;
    }
}
