//! `umrank report`: the Markdown and HTML report of a pipeline work directory.

use std::path::PathBuf;

use anyhow::{Context, Result};

use umrank::eval::DEFAULT_PERMUTATIONS;
use umrank::report::{stage_dirs, write_report, ReportSettings};

/// Write report.md, a self-contained report.html and PNG charts for a pipeline work directory: metric tables per
/// task with deltas and significance (from the eval stages' metrics.json), the mining statistics (the mine stage's
/// stats.json) and training curves with W+/W- (the train stages' train_log.jsonl). Stages without these files
/// are passed over.
#[derive(Debug, clap::Args)]
pub struct ReportArgs {
    /// The pipeline work directory: one subdirectory per stage.
    #[arg(value_name = "RUNDIR")]
    pub rundir: PathBuf,

    /// Where the report goes [default: RUNDIR/report].
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,

    /// Only these stages, in this order (comma separated) [default: every stage, in the order they ran].
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub stages: Option<Vec<String>>,

    /// The report's title.
    #[arg(long, default_value = "umrank report")]
    pub title: String,

    /// Permutations of the paired tests between rerankers.
    #[arg(long, default_value_t = DEFAULT_PERMUTATIONS)]
    pub permutations: usize,

    /// Seed of those tests; the same seed gives the same report.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn report(args: &ReportArgs) -> Result<()> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.rundir.join("report"));
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let stages = match &args.stages {
        Some(names) => names
            .iter()
            .map(|name| (name.clone(), args.rundir.join(name)))
            .collect(),
        None => stage_dirs(&args.rundir, &out)?,
    };
    let settings = ReportSettings {
        title: args.title.clone(),
        permutations: args.permutations.max(1),
        seed: args.seed,
    };
    let files = write_report(&stages, &settings, &out)?;
    println!("{}", files.markdown.display());
    println!("{}", files.html.display());
    for plot in &files.plots {
        println!("{}", plot.display());
    }
    Ok(())
}
