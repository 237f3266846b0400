//! The per-step training log, one JSON object per optimizer step (`train_log.jsonl`).
//!
//! Every step reports the true SFT and CL losses of its groups whatever the objective, so that runs with
//! different objectives compare on the same two numbers, and the mean W+ / W- of the unified view. The log is an
//! output: the same job gives the same bytes. Throughput is a wall-clock measurement and differs between two runs
//! of the same job, so it goes to its own file, `train_timing.jsonl`, which is not an output (no fingerprint
//! covers it) and holds the steps of the process that wrote it.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::failure::TrainRunError;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// 1-based optimizer step.
    pub step: u64,
    /// Epochs of data seen at the end of the step (groups seen / groups in the data).
    pub epoch: f64,
    /// The optimised objective, averaged over the step's groups.
    pub loss: f64,
    pub sft_loss: f64,
    pub cl_loss: f64,
    /// The learning rate the step's update used.
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    pub w_pos: f64,
    pub w_neg: f64,
    /// Examples whose weight the tau-mask zeroed.
    pub masked: u64,
    pub groups: u64,
}

/// The wall-clock throughput of one optimizer step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepTiming {
    pub step: u64,
    pub seq_per_s: f64,
    pub tokens_per_s: f64,
}

/// Writes a log atomically (see [`crate::atomic`]).
pub fn write_log<T: Serialize>(path: &Path, rows: &[T]) -> Result<(), TrainRunError> {
    let mut bytes = Vec::new();
    for row in rows {
        serde_json::to_writer(&mut bytes, row).map_err(|e| TrainRunError::Data {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        bytes.push(b'\n');
    }
    crate::atomic::write_atomically(path, &bytes).map_err(|e| TrainRunError::io(e.path)(e.source))
}

/// Reads a log written by [`write_log`].
pub fn read_log(path: &Path) -> Result<Vec<StepLog>, TrainRunError> {
    let text = std::fs::read_to_string(path).map_err(TrainRunError::io(path))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| TrainRunError::Data {
                path: path.to_path_buf(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}
