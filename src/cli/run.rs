use std::path::{Path, PathBuf};

use anyhow::Context;

use umrank::device::DeviceSpec;
use umrank::pipeline::{PipelineConfig, RunOptions, Runner, StageOutcome, StagePlan, StageReport};
use umrank::plan::device::device_memory;
use umrank::shard::Shard;

use super::Global;

/// The demo pipeline, built in so that `umrank demo` needs no pipeline file. It reads the tokenizer committed under
/// tests/fixtures, so it runs from the repository root.
const DEMO_PIPELINE: &str = include_str!("../../pipelines/demo.toml");

/// Run a pipeline file: every stage in order, skipping the ones that are up to date.
///
/// A stage is up to date when its manifest records the same umrank version, stage config, seed and input content
/// hashes, and its outputs are intact; a changed config or a changed upstream output reruns that stage and every
/// stage after it. An interrupted stage leaves no manifest and reruns from scratch.
///
/// Exit status: 0 when every stage is done; 3 when the release stage's promotion gate (`[release.gate]`) refused
/// the new model (its verdict is in the release stage's gate.json and on stderr; no release is written); 1 for any
/// other error; 2 for a usage error.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The pipeline TOML file ([pipeline] name, workdir, seed; then one table per stage).
    pub pipeline: PathBuf,

    /// Check the pipeline and run nothing: build every stage from its table (an unknown key or a bad value is an
    /// error naming the stage), check that each stage reads only stages above it and that --from/--until/--shard
    /// fit, then print the stages in run order with what they read, whether they can be sharded, and their
    /// resolved configs (defaults filled in). Reads no data; exits non-zero on the first problem.
    #[arg(long)]
    pub check: bool,

    /// Print each train, eval and embed stage's estimated peak device memory, part by part (weights, gradients,
    /// optimizer, activations with and without recomputation, attention workspace, vision cache, image
    /// buffers), against the device's memory, and whether it fits; run nothing. Reads only each model's
    /// config.json, so it works before the weights are downloaded.
    #[arg(long)]
    pub plan: bool,

    /// With --plan: print `{"stages": {"<stage>": {"peak_bytes", "device_bytes", "fits", "parts"}}}`.
    #[arg(long, requires = "plan")]
    pub json: bool,

    #[command(flatten)]
    pub select: Selection,

    #[command(flatten)]
    pub parallel: super::data_parallel::DataParallelArgs,
}

/// Which stages, and where and how to run them.
#[derive(Debug, Clone, clap::Args)]
pub struct Selection {
    /// Start at this stage; the stages before it must have finished already.
    #[arg(long, value_name = "STAGE")]
    pub from: Option<String>,

    /// Stop after this stage (over several seeds, after every seed's run of it).
    #[arg(long, value_name = "STAGE")]
    pub until: Option<String>,

    /// Rerun the selected stages even if they are up to date.
    #[arg(long)]
    pub force: bool,

    /// Process only slice I of N (0-based) of each selected stage, for job arrays. ingest, embed, mine (by
    /// document or query id) and eval (by query id) shard; every record goes to exactly one slice, and downstream
    /// stages read the N part files as one dataset. The plain run after an array writes what needs all the
    /// slices: mine's stats.json, eval's TREC files and metrics.json (byte-identical to an unsharded run's). The
    /// other stages write directory trees and refuse --shard.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,

    /// Where models run: cpu, cuda or cuda:K.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceSpec,

    /// Override the pipeline's workdir.
    #[arg(long, value_name = "DIR")]
    pub workdir: Option<PathBuf>,

    /// The device's memory, e.g. 80GiB: stages are planned against it, and a stage whose plan exceeds it is
    /// not started [default: read from CUDA for a CUDA device, else unknown].
    #[arg(long, value_name = "SIZE", value_parser = umrank::plan::parse_bytes)]
    pub device_memory: Option<u64>,

    /// Run up to N stages at the same time: a stage starts once the stages it reads have finished, so stages that
    /// do not read each other (two trainings on the same shards, their evals) run side by side. Each takes about
    /// a core on the CPU; on one GPU, running two means sharing its memory. Overrides the pipeline's
    /// `[pipeline] jobs` (default 1: one stage at a time, in file order). Outputs are the same at any N.
    #[arg(long, short = 'j', value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub jobs: Option<u64>,

    /// Run the stages marked `per_seed = true` (the demo's trainings and evals) over N training seeds, the data
    /// stages once: seed 1 is the single-seed run, seed k its replicas `<stage>@s<k>` with seed + k - 1. The
    /// report then gives each reranker's mean and spread over the seeds and a paired test pooled over them.
    /// Overrides the pipeline's `[pipeline] seeds` (default 1).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub seeds: Option<u32>,
}

/// Run the built-in demo: generate the demo world and take it through the pipeline on the CPU.
///
/// Runs from any directory: what it needs is built into the binary. Outputs go to runs/demo under the current
/// directory (or --workdir). Running it again is a no-op that finishes in seconds.
///
/// One seed's figures are one draw: `--seeds 3` trains and evaluates both rerankers over three seeds (22 minutes
/// on a shared 2-core machine, against about 6 for one seed) and ends with each reranker's mean and spread and a
/// paired test pooled over the seeds. A single-seed run already done serves as seed 1.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub select: Selection,

    /// Print the built-in pipeline file and exit.
    #[arg(long)]
    pub print_pipeline: bool,

    /// The same chain at toy size, in seconds, to check an install (small world, one embedder epoch, four
    /// training steps; outputs in runs/demo-quick). Its figures mean nothing.
    #[arg(long)]
    pub quick: bool,
}

pub fn run(args: &RunArgs, global: &Global) -> anyhow::Result<()> {
    let config = PipelineConfig::load(&args.pipeline)?;
    if args.check {
        return check(config, &args.select, global);
    }
    if args.plan {
        return plan(config, &args.select, global, args.json);
    }
    super::data_parallel::run(&args.parallel, args.select.device, |device| {
        let select = Selection {
            device,
            ..args.select.clone()
        };
        execute(config, &select, global)
    })
}

pub fn demo(args: &DemoArgs, global: &Global) -> anyhow::Result<()> {
    if args.print_pipeline {
        print!("{DEMO_PIPELINE}");
        return Ok(());
    }
    let mut config = PipelineConfig::parse(Path::new("<built-in demo.toml>"), DEMO_PIPELINE)?;
    if args.quick {
        super::demo::quicken(&mut config);
    }
    if let Some(dir) = &args.select.workdir {
        config.workdir = dir.clone();
    }
    super::demo::provide_assets(&mut config)?;
    execute(config, &args.select, global)
}

/// Builds the runner of a pipeline file with the command line's selection and workdir.
fn runner(
    config: &mut PipelineConfig,
    select: &Selection,
    global: &Global,
) -> anyhow::Result<Runner> {
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
        jobs: select.jobs.map(|n| n as usize),
        seeds: select.seeds,
        device_memory: device_memory(select.device, select.device_memory),
    };
    Ok(Runner::from_config(
        config,
        &umrank::stages::registry(),
        options,
    )?)
}

fn check(mut config: PipelineConfig, select: &Selection, global: &Global) -> anyhow::Result<()> {
    let runner = runner(&mut config, select, global)?;
    let plans = runner.check()?;
    let seeds = match select.seeds.unwrap_or(config.seeds) {
        1 => String::new(),
        n => format!(" over {n} seeds"),
    };
    println!(
        "pipeline {} ({}): {} stages, workdir {}, seed {}{seeds}, up to {} at a time",
        config.name,
        config.path.display(),
        plans.len(),
        config.workdir.display(),
        config.seed,
        runner.jobs()
    );
    for (i, plan) in plans.iter().enumerate() {
        print_plan(i + 1, plans.len(), plan)?;
    }
    println!("ok: the pipeline is valid");
    Ok(())
}

/// `--plan`: every selected model stage's memory plan, as text or JSON.
fn plan(
    mut config: PipelineConfig,
    select: &Selection,
    global: &Global,
    json: bool,
) -> anyhow::Result<()> {
    let runner = runner(&mut config, select, global)?;
    let plans = runner.memory_plans()?;
    if json {
        let stages: serde_json::Map<String, serde_json::Value> = plans
            .iter()
            .map(|(name, verdict)| {
                let value = match verdict {
                    Ok(verdict) => verdict.to_json(),
                    Err(e) => serde_json::json!({"error": e.to_string()}),
                };
                (name.clone(), value)
            })
            .collect();
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "stages": stages }))?
        );
        return Ok(());
    }
    println!(
        "pipeline {} ({}): memory plan on {}",
        config.name,
        config.path.display(),
        select.device
    );
    for (name, verdict) in &plans {
        println!();
        match verdict {
            Ok(verdict) => {
                println!("[{name}]");
                for line in verdict.render() {
                    println!("{line}");
                }
            }
            Err(e) => println!("[{name}] not planned: {e}"),
        }
    }
    Ok(())
}

fn print_plan(number: usize, total: usize, plan: &StagePlan) -> anyhow::Result<()> {
    let mut reads: Vec<String> = plan.reads.clone();
    reads.extend(plan.files.iter().map(|f| f.display().to_string()));
    println!();
    println!(
        "[{number}/{total}] {} (kind {}){}",
        plan.name,
        plan.kind,
        if plan.selected { "" } else { ": not selected" }
    );
    println!(
        "  reads: {}",
        if reads.is_empty() {
            "-".to_owned()
        } else {
            reads.join(", ")
        }
    );
    println!("  writes: {}", plan.dir.display());
    println!(
        "  shardable: {}",
        if plan.shardable {
            "yes (--shard I/N)"
        } else {
            "no (writes a directory tree; run it as one job)"
        }
    );
    let config = serde_json::to_string_pretty(&plan.config)?;
    println!("  config: {}", config.replace('\n', "\n  "));
    Ok(())
}

fn execute(mut config: PipelineConfig, select: &Selection, global: &Global) -> anyhow::Result<()> {
    let runner = runner(&mut config, select, global)?;
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
