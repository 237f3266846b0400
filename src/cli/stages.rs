//! One subcommand per stage: the same stage a pipeline runs, on its own, with `--out DIR` as its stage directory
//! and its inputs as flags. Manifests, rejects and up-to-date checks work exactly as in a pipeline.

use std::path::PathBuf;

use umrank::ingest::{Format, IngestConfig, IngestStage};
use umrank::pipeline::{RunOptions, Runner, Stage};
use umrank::shard::Shard;
use umrank::world::stage::{WorldStage, WorldStageConfig};
use umrank::world::WorldSize;

use super::run::print_summary;
use super::Global;

/// Options every standalone stage takes.
#[derive(Debug, clap::Args)]
pub struct StageArgs {
    /// The stage directory: datasets, rejects.parquet and manifest.json go here.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// Rerun even if the outputs are up to date.
    #[arg(long)]
    pub force: bool,

    /// Process only slice I of N (0-based), for job arrays.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
}

/// Generate the demo world: synthetic scenes with captions, paraphrases, re-renderings and edit instructions, in
/// the M-BEIR layout (under OUT/mbeir), with near-miss candidates by construction.
#[derive(Debug, clap::Args)]
pub struct WorldArgs {
    #[command(flatten)]
    pub stage: StageArgs,

    /// Seed of every random choice; the same seed gives byte-identical files.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// small (tests: a few hundred images) or full (the demo: 4400 images).
    #[arg(long, default_value = "small", value_parser = clap::value_parser!(WorldSize))]
    pub size: WorldSize,

    /// Image side in pixels (28..=1024).
    #[arg(long, default_value_t = 56)]
    pub image_side: u32,
}

/// Ingest a dataset into the corpus, queries, qrels and images datasets. Bad records (malformed lines, unknown
/// modality, duplicate ids, missing or broken images, judgements to unknown ids) become rows of
/// OUT/rejects.parquet with their reason.
#[derive(Debug, clap::Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub stage: StageArgs,

    /// Input format.
    #[arg(long, value_enum, default_value = "mbeir")]
    pub format: Format,

    /// The dataset root; image paths and the globs below are relative to it.
    #[arg(long, value_name = "DIR")]
    pub root: PathBuf,

    /// Only this split (M-BEIR: the directory name under query/ and qrels/).
    #[arg(long)]
    pub split: Option<String>,

    /// Query files [default: query/<split>/*.jsonl].
    #[arg(long, value_name = "GLOB")]
    pub queries: Option<String>,

    /// Candidate pool files [default: cand_pool/local/*.jsonl].
    #[arg(long, value_name = "GLOB")]
    pub pool: Option<String>,

    /// Judgement files, lines `qid 0 did relevance [task_id]` [default: qrels/<split>/*.txt].
    #[arg(long, value_name = "GLOB")]
    pub qrels: Option<String>,

    /// Instructions TSV [default: instructions/query_instructions.tsv].
    #[arg(long, value_name = "PATH")]
    pub instructions: Option<String>,

    /// Seed for the choice of instruction among a dataset's prompts.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Largest image accepted, in pixels.
    #[arg(long, default_value_t = 89_478_485)]
    pub max_pixels: u64,
}

pub fn world(args: &WorldArgs, global: &Global) -> anyhow::Result<()> {
    let stage = WorldStage::new(WorldStageConfig {
        size: args.size,
        image_side: args.image_side,
    })?;
    run_one("world", Box::new(stage), args.seed, &args.stage, global)?;
    println!(
        "M-BEIR files: {}",
        args.stage.out.join(umrank::world::stage::OUTPUT).display()
    );
    Ok(())
}

pub fn ingest(args: &IngestArgs, global: &Global) -> anyhow::Result<()> {
    let mut config = IngestConfig::new(args.format, args.root.clone());
    config.split = args.split.clone();
    config.queries = args.queries.clone();
    config.pool = args.pool.clone();
    config.qrels = args.qrels.clone();
    config.instructions = args.instructions.clone();
    config.max_pixels = args.max_pixels;
    run_one(
        "ingest",
        Box::new(IngestStage::new(config)?),
        args.seed,
        &args.stage,
        global,
    )
}

fn run_one(
    name: &str,
    stage: Box<dyn Stage>,
    seed: u64,
    args: &StageArgs,
    global: &Global,
) -> anyhow::Result<()> {
    let options = RunOptions {
        force: args.force,
        shard: args.shard,
        policy: global.policy(),
        dirs: [(name.to_string(), args.out.clone())].into(),
        ..Default::default()
    };
    let workdir = args.out.parent().map(PathBuf::from).unwrap_or_default();
    let reports = Runner::new(workdir, seed, vec![(name.to_string(), stage)], options).run()?;
    print_summary(name, &reports);
    Ok(())
}
