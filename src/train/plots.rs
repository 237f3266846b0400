//! The run's PNG charts (issue 6): `plots/loss.png` (the optimised loss with the true SFT and CL losses) and
//! `plots/weights.png` (the mean W+ and W- of the unified view), both over the optimizer steps.
//!
//! They draw only fields that follow from the seed, never the wall-clock throughput, so two runs of the same job
//! write the same bytes, like the rest of the stage's outputs.

use std::path::Path;

use super::failure::TrainRunError;
use super::log::StepLog;
use crate::charts::{line_chart, Series};
use crate::schema::outputs;

/// A log field by name.
type Field = (&'static str, fn(&StepLog) -> f64);

const LOSSES: [Field; 3] = [
    ("loss (optimised)", |r| r.loss),
    ("SFT loss", |r| r.sft_loss),
    ("CL loss", |r| r.cl_loss),
];

const WEIGHTS: [Field; 2] = [("mean W+", |r| r.w_pos), ("mean W-", |r| r.w_neg)];

/// Writes both charts of `log` into `dir` (created if needed).
pub fn write_plots(dir: &Path, log: &[StepLog]) -> Result<(), TrainRunError> {
    std::fs::create_dir_all(dir).map_err(TrainRunError::io(dir))?;
    chart(
        &dir.join(outputs::train::LOSS_PLOT),
        "training loss",
        "loss",
        &LOSSES,
        log,
    )?;
    chart(
        &dir.join(outputs::train::WEIGHTS_PLOT),
        "mean example weights of the unified view",
        "weight",
        &WEIGHTS,
        log,
    )
}

fn chart(
    path: &Path,
    title: &str,
    y_label: &str,
    fields: &[Field],
    log: &[StepLog],
) -> Result<(), TrainRunError> {
    let series: Vec<Series> = fields
        .iter()
        .map(|(name, pick)| {
            Series::new(
                *name,
                log.iter().map(|row| (row.step as f64, pick(row))).collect(),
            )
        })
        .collect();
    line_chart(path, title, "step", y_label, &series).map_err(|e| TrainRunError::Plot(Box::new(e)))
}
