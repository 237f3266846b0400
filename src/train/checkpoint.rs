//! Training checkpoints: everything a run needs to continue exactly where it was.
//!
//! A checkpoint is a directory `checkpoints/step-NNNNNNNN/` holding `state.safetensors` (the trainable variables
//! under `param.<name>`, the optimizer's moments and master weights under `optim.<name>`) and `meta.json` (the
//! step, how many groups the run has consumed, each LoRA dropout generator's position, the log so far, and the
//! run key). It is written under a temporary name and renamed into place, so a directory with the final name
//! is always complete. The data order is a function of the seed and the position, so no sampler state is needed.
//!
//! The run key is a hash of everything that determines the run (config, seed, inputs): a checkpoint of another
//! run is never resumed from.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor, Var};
use serde::{Deserialize, Serialize};

use super::failure::TrainRunError;
use super::log::StepLog;
use super::model::write_safetensors;

const STATE: &str = "state.safetensors";
const META: &str = "meta.json";
const FORMAT: u32 = 1;
const PARAM: &str = "param.";
const OPTIM: &str = "optim.";

/// What `meta.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CheckpointMeta {
    pub format: u32,
    pub run_key: String,
    /// Optimizer steps completed.
    pub step: u64,
    /// Groups consumed from the run's data stream.
    pub groups_seen: u64,
    /// Each adapter's dropout generator position (decimal, since JSON numbers cannot hold a u128).
    pub dropout: Vec<Option<String>>,
    pub log: Vec<StepLog>,
}

impl CheckpointMeta {
    pub fn new(
        run_key: &str,
        step: u64,
        groups_seen: u64,
        dropout: &[Option<u128>],
        log: &[StepLog],
    ) -> Self {
        Self {
            format: FORMAT,
            run_key: run_key.to_string(),
            step,
            groups_seen,
            dropout: dropout.iter().map(|p| p.map(|p| p.to_string())).collect(),
            log: log.to_vec(),
        }
    }

    pub fn dropout_positions(&self, path: &Path) -> Result<Vec<Option<u128>>, TrainRunError> {
        self.dropout
            .iter()
            .map(|p| {
                p.as_ref()
                    .map(|p| {
                        p.parse::<u128>().map_err(|_| TrainRunError::Checkpoint {
                            path: path.to_path_buf(),
                            message: format!("dropout position `{p}` is not a number"),
                        })
                    })
                    .transpose()
            })
            .collect()
    }
}

/// A checkpoint found on disk.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub meta: CheckpointMeta,
}

impl Checkpoint {
    /// The trainable variables' values and the optimizer state, by their names.
    pub fn state(&self, device: &Device) -> Result<CheckpointState, TrainRunError> {
        let path = self.dir.join(STATE);
        let tensors = candle_core::safetensors::load(&path, device).map_err(|e| {
            TrainRunError::Checkpoint {
                path: path.clone(),
                message: e.to_string(),
            }
        })?;
        let mut state = CheckpointState::default();
        for (name, tensor) in tensors {
            if let Some(param) = name.strip_prefix(PARAM) {
                state.params.insert(param.to_string(), tensor);
            } else if let Some(optim) = name.strip_prefix(OPTIM) {
                state.optimizer.push((optim.to_string(), tensor));
            } else {
                return Err(TrainRunError::Checkpoint {
                    path,
                    message: format!("unexpected tensor `{name}`"),
                });
            }
        }
        Ok(state)
    }
}

/// The tensors of a checkpoint.
#[derive(Debug, Default)]
pub struct CheckpointState {
    pub params: HashMap<String, Tensor>,
    pub optimizer: Vec<(String, Tensor)>,
}

impl CheckpointState {
    /// Sets every variable of `params` to its saved value; a missing or misshapen one is an error.
    pub fn restore_params(
        &mut self,
        params: &[(String, Var)],
        dir: &Path,
    ) -> Result<(), TrainRunError> {
        for (name, var) in params {
            let saved = self
                .params
                .remove(name)
                .ok_or_else(|| TrainRunError::Checkpoint {
                    path: dir.to_path_buf(),
                    message: format!("no saved value for `{name}`"),
                })?;
            if saved.shape() != var.shape() || saved.dtype() != var.dtype() {
                return Err(TrainRunError::Checkpoint {
                    path: dir.to_path_buf(),
                    message: format!(
                        "`{name}` was saved as {:?} {:?}, the model has {:?} {:?}",
                        saved.shape(),
                        saved.dtype(),
                        var.shape(),
                        var.dtype()
                    ),
                });
            }
            var.set(&saved)?;
        }
        if let Some(extra) = self.params.keys().next() {
            return Err(TrainRunError::Checkpoint {
                path: dir.to_path_buf(),
                message: format!("saved variable `{extra}` is not in the model"),
            });
        }
        Ok(())
    }
}

fn step_dir(root: &Path, step: u64) -> PathBuf {
    root.join(format!("step-{step:08}"))
}

/// Writes a checkpoint atomically and keeps only the `keep` newest. Returns its directory.
pub fn save(
    root: &Path,
    meta: &CheckpointMeta,
    params: &[(String, Var)],
    optimizer: Vec<(String, Tensor)>,
    keep: usize,
) -> Result<PathBuf, TrainRunError> {
    let dir = step_dir(root, meta.step);
    let tmp = root.join(format!(".step-{:08}.tmp", meta.step));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).map_err(TrainRunError::io(&tmp))?;
    }
    fs::create_dir_all(&tmp).map_err(TrainRunError::io(&tmp))?;
    let mut tensors: Vec<(String, Tensor)> = params
        .iter()
        .map(|(name, var)| (format!("{PARAM}{name}"), var.as_tensor().clone()))
        .collect();
    tensors.extend(
        optimizer
            .into_iter()
            .map(|(name, t)| (format!("{OPTIM}{name}"), t)),
    );
    write_safetensors(&tmp.join(STATE), &tensors)?;
    let meta_path = tmp.join(META);
    let text = serde_json::to_string(meta).map_err(|e| TrainRunError::Checkpoint {
        path: meta_path.clone(),
        message: e.to_string(),
    })?;
    fs::write(&meta_path, text).map_err(TrainRunError::io(&meta_path))?;
    if dir.exists() {
        fs::remove_dir_all(&dir).map_err(TrainRunError::io(&dir))?;
    }
    fs::rename(&tmp, &dir).map_err(TrainRunError::io(&dir))?;
    prune(root, keep)?;
    Ok(dir)
}

/// The complete checkpoints under `root`, oldest first, with their steps. Temporary directories are ignored.
fn complete(root: &Path) -> Result<Vec<(u64, PathBuf)>, TrainRunError> {
    if !root.is_dir() {
        return Ok(Vec::new());
    }
    let mut found = Vec::new();
    for entry in fs::read_dir(root).map_err(TrainRunError::io(root))? {
        let entry = entry.map_err(TrainRunError::io(root))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(step) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        else {
            continue;
        };
        let dir = entry.path();
        if dir.join(STATE).is_file() && dir.join(META).is_file() {
            found.push((step, dir));
        }
    }
    found.sort();
    Ok(found)
}

fn prune(root: &Path, keep: usize) -> Result<(), TrainRunError> {
    let found = complete(root)?;
    let excess = found.len().saturating_sub(keep);
    for (_, dir) in found.into_iter().take(excess) {
        fs::remove_dir_all(&dir).map_err(TrainRunError::io(&dir))?;
    }
    Ok(())
}

/// The newest complete checkpoint of the run `run_key`, if any. Checkpoints of other runs are left alone and
/// reported in the log; they are never resumed from.
pub fn latest(root: &Path, run_key: &str) -> Result<Option<Checkpoint>, TrainRunError> {
    for (_, dir) in complete(root)?.into_iter().rev() {
        let path = dir.join(META);
        let text = fs::read_to_string(&path).map_err(TrainRunError::io(&path))?;
        let meta: CheckpointMeta =
            serde_json::from_str(&text).map_err(|e| TrainRunError::Checkpoint {
                path: path.clone(),
                message: e.to_string(),
            })?;
        if meta.format != FORMAT || meta.run_key != run_key {
            tracing::warn!(
                "{}: written by a different run (config, seed or inputs changed); not resuming from it",
                dir.display()
            );
            continue;
        }
        return Ok(Some(Checkpoint { dir, meta }));
    }
    Ok(None)
}

/// Removes every checkpoint and leftover temporary directory under `root`: a fresh run starts clean.
pub fn clear(root: &Path) -> Result<(), TrainRunError> {
    if root.exists() {
        fs::remove_dir_all(root).map_err(TrainRunError::io(root))?;
    }
    Ok(())
}
