use std::path::{Path, PathBuf};

use anyhow::Context;

use umrank::device::DeviceSpec;
use umrank::pipeline::{PipelineConfig, RunOptions, Runner, StageOutcome, StageReport};
use umrank::shard::Shard;

use super::Global;

/// The demo pipeline, built in so that `umrank demo` works from any directory.
const DEMO_PIPELINE: &str = include_str!("../../pipelines/demo.toml");

/// Run a pipeline file: every stage in order, skipping the ones that are up to date.
///
/// A stage is up to date when its manifest records the same umrank version, stage config, seed and input content
/// hashes, and its outputs are intact; a changed config or a changed upstream output reruns that stage and every
/// stage after it. An interrupted stage leaves no manifest and reruns from scratch.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The pipeline TOML file ([pipeline] name, workdir, seed; then one table per stage).
    pub pipeline: PathBuf,

    #[command(flatten)]
    pub select: Selection,
}

/// Which stages, and where and how to run them.
#[derive(Debug, clap::Args)]
pub struct Selection {
    /// Start at this stage; the stages before it must have finished already.
    #[arg(long, value_name = "STAGE")]
    pub from: Option<String>,

    /// Stop after this stage.
    #[arg(long, value_name = "STAGE")]
    pub until: Option<String>,

    /// Rerun the selected stages even if they are up to date.
    #[arg(long)]
    pub force: bool,

    /// Process only slice I of N (0-based) of each selected stage, for job arrays; every record goes to exactly
    /// one slice, and downstream stages read the N part files as one dataset.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,

    /// Where models run: cpu, cuda or cuda:K.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceSpec,

    /// Override the pipeline's workdir.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,
}

/// Run the built-in demo: generate the demo world and take it through the pipeline on the CPU.
///
/// Outputs go to runs/demo (or --workdir). Running it again is a no-op that finishes in seconds.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub select: Selection,

    /// Print the built-in pipeline file and exit.
    #[arg(long)]
    pub print_pipeline: bool,
}

pub fn run(args: &RunArgs, global: &Global) -> anyhow::Result<()> {
    let config = PipelineConfig::load(&args.pipeline)?;
    execute(config, &args.select, global)
}

pub fn demo(args: &DemoArgs, global: &Global) -> anyhow::Result<()> {
    if args.print_pipeline {
        print!("{DEMO_PIPELINE}");
        return Ok(());
    }
    let config = PipelineConfig::parse(Path::new("<built-in demo.toml>"), DEMO_PIPELINE)?;
    execute(config, &args.select, global)
}

fn execute(mut config: PipelineConfig, select: &Selection, global: &Global) -> anyhow::Result<()> {
    if let Some(dir) = &select.workdir {
        config.workdir = dir.clone();
    }
    let options = RunOptions {
        from: select.from.clone(),
        until: select.until.clone(),
        force: select.force,
        shard: select.shard,
        device: select.device,
        policy: global.policy(),
        dirs: Default::default(),
    };
    let runner = Runner::from_config(&config, &umrank::stages::registry(), options)?;
    let reports = runner.run().with_context(|| {
        format!(
            "pipeline `{}` ({}) stopped",
            config.name,
            config.path.display()
        )
    })?;
    print_summary(&config.name, &reports);
    Ok(())
}

pub fn print_summary(name: &str, reports: &[StageReport]) {
    println!("pipeline {name}");
    let width = reports
        .iter()
        .map(|r| r.name.len())
        .max()
        .unwrap_or(5)
        .max(5);
    println!(
        "  {:<width$}  {:<12} {:>10} {:>9} {:>8}  output",
        "stage", "status", "records", "rejected", "time"
    );
    for r in reports {
        let (status, time) = match r.outcome {
            StageOutcome::Ran => ("ran", format!("{:.1}s", r.seconds)),
            StageOutcome::UpToDate => ("up to date", "-".into()),
            StageOutcome::NotSelected => ("not selected", "-".into()),
        };
        println!(
            "  {:<width$}  {:<12} {:>10} {:>9} {:>8}  {}",
            r.name,
            status,
            r.records,
            r.rejects,
            time,
            r.dir.display()
        );
    }
}
