//! One subcommand per stage: the same stage a pipeline runs, on its own, with `--out DIR` as its stage directory
//! and its inputs as flags. Manifests, rejects and up-to-date checks work exactly as in a pipeline.

use std::path::PathBuf;

use umrank::device::DeviceSpec;
use umrank::embed::{EmbedConfig, EmbedStage, Precision};
use umrank::ingest::{Format, Globs, IngestConfig, IngestStage};
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

    /// small (tests: a few hundred images), full (the demo: 4400 images) or large (four times the training
    /// queries: 14000 images).
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

    /// Only this split (M-BEIR: the directory name under query/ and qrels/) [default: train, val and test].
    #[arg(long)]
    pub split: Option<String>,

    /// Query files; repeat the flag for several globs [default: query/<split>/*.jsonl for each split].
    #[arg(long, value_name = "GLOB")]
    pub queries: Vec<String>,

    /// Candidate pool files; repeat for several globs [default: cand_pool/local/*.jsonl and the global pools
    /// of the train and val splits, cand_pool/global/mbeir_union_<split>_cand_pool.jsonl].
    #[arg(long, value_name = "GLOB")]
    pub pool: Vec<String>,

    /// Judgement files, lines `qid 0 did relevance [task_id]`; repeat for several globs
    /// [default: qrels/<split>/*.txt for each split].
    #[arg(long, value_name = "GLOB")]
    pub qrels: Vec<String>,

    /// Only queries of these M-BEIR task ids (0-8), e.g. `--tasks 1`; all by default.
    #[arg(long, value_delimiter = ',', value_name = "IDS")]
    pub tasks: Vec<i32>,

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

/// Embed the corpus and queries of an ingest with an embedding model (CLIP, SigLIP, BERT-family sentence
/// encoders, or GME on a Qwen2-VL directory), into OUT/doc_embeddings and OUT/query_embeddings.
///
/// Vectors are cached under OUT/cache/<key>, keyed by the model fingerprint, the batch plan and each record's
/// content: a killed run, started again, embeds only what is missing and writes the same bytes an undisturbed
/// run would. Deleting OUT/cache is always safe; it only costs recomputation.
#[derive(Debug, clap::Args)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub stage: StageArgs,

    /// An ingest stage directory: its corpus, queries and images datasets are embedded.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["corpus", "queries", "images"], required_unless_present_all = ["corpus", "queries"])]
    pub from: Option<PathBuf>,

    /// The corpus dataset directory (instead of --from).
    #[arg(long, value_name = "DIR", requires = "queries")]
    pub corpus: Option<PathBuf>,

    /// The queries dataset directory (instead of --from).
    #[arg(long, value_name = "DIR", requires = "corpus")]
    pub queries: Option<PathBuf>,

    /// The images dataset directory the records' image_id keys point into (instead of --from).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,

    /// The model directory (Hugging Face layout): CLIP, SigLIP, BERT (sentence-transformers) or Qwen2-VL (GME).
    #[arg(long, value_name = "DIR")]
    pub model: PathBuf,

    /// Inputs per forward pass; inputs are grouped by modality and length so that batches pad little.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub batch_size: usize,

    /// Where the model runs: cpu, cuda or cuda:K.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceSpec,

    /// Precision of the weights and activations (vectors are written as f32).
    #[arg(long, value_enum, default_value = "f32")]
    pub dtype: Precision,

    /// Vectors per store chunk: at most this much work is lost when the run is killed.
    #[arg(long, default_value_t = 1024, value_name = "N")]
    pub cache_rows: usize,

    /// The embedding store, shared by the runs that name it: only content it lacks is embedded [default:
    /// <out>/store].
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
}

pub fn world(args: &WorldArgs, global: &Global) -> anyhow::Result<()> {
    let stage = WorldStage::new(WorldStageConfig {
        size: args.size,
        image_side: args.image_side,
    })?;
    run_one("world", Box::new(stage), args.seed, &args.stage, global)?;
    println!(
        "M-BEIR files: {}",
        args.stage
            .out
            .join(umrank::schema::outputs::world::MBEIR)
            .display()
    );
    Ok(())
}

pub fn ingest(args: &IngestArgs, global: &Global) -> anyhow::Result<()> {
    let mut config = IngestConfig::new(args.format, args.root.clone());
    config.split = args.split.clone();
    let globs = |given: &Vec<String>| (!given.is_empty()).then(|| Globs::Many(given.clone()));
    config.queries = globs(&args.queries);
    config.pool = globs(&args.pool);
    config.qrels = globs(&args.qrels);
    config.tasks = (!args.tasks.is_empty()).then(|| args.tasks.clone());
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

pub fn embed(args: &EmbedArgs, global: &Global) -> anyhow::Result<()> {
    /// The name the --from directory goes by in the stage's manifest.
    const UPSTREAM: &str = "ingest";
    let mut config = EmbedConfig::new(UPSTREAM, args.model.clone());
    if args.from.is_none() {
        config.from = None;
        config.corpus = args.corpus.clone();
        config.queries = args.queries.clone();
        config.images = args.images.clone();
    }
    config.batch_size = args.batch_size;
    config.dtype = args.dtype;
    config.cache_rows = args.cache_rows;
    config.store = args.store.clone();
    let mut dirs: std::collections::BTreeMap<String, PathBuf> =
        [("embed".to_string(), args.stage.out.clone())].into();
    if let Some(from) = &args.from {
        dirs.insert(UPSTREAM.to_string(), from.clone());
    }
    let options = RunOptions {
        force: args.stage.force,
        shard: args.stage.shard,
        device: args.device,
        policy: global.policy(),
        dirs,
        ..Default::default()
    };
    let stage: Box<dyn Stage> = Box::new(EmbedStage::new(config)?);
    let workdir = args
        .stage
        .out
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let reports = Runner::new(workdir, 0, vec![("embed".to_string(), stage)], options).run()?;
    print_summary("embed", &reports);
    Ok(())
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
