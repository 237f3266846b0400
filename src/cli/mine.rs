//! `umrank mine`: the mine stage on its own.

use std::path::PathBuf;

use umrank::device::DeviceSpec;
use umrank::mine::{FilterConfig, MineConfig, MineStage, Scope};
use umrank::pipeline::{RunOptions, Runner};

use super::run::print_summary;
use super::stages::StageArgs;
use super::Global;

/// Mine first-stage candidates (for evaluation) and hard + random negatives (for training) by exact top-k over the
/// embeddings, with the positive-aware false-negative filter, and print the statistics table (saved as
/// OUT/stats.json).
///
/// With --shard I/N, this process mines the queries of slice I against the whole corpus; the N parts of
/// `candidates` and `negatives` read as one dataset are exactly the unsharded output.
#[derive(Debug, clap::Args)]
pub struct MineArgs {
    #[command(flatten)]
    pub stage: StageArgs,

    /// The ingest stage directory (its corpus, queries and qrels datasets).
    #[arg(long, value_name = "INGEST_DIR")]
    pub from: PathBuf,

    /// The embed stage directory (its doc_embeddings and query_embeddings datasets).
    #[arg(long, value_name = "EMBED_DIR")]
    pub embeddings: PathBuf,

    /// K of the candidates lists (the first-stage top-K that evaluation reranks).
    #[arg(long, default_value_t = 100)]
    pub k: usize,

    /// How deep to mine hard negatives: the top list the filter and the sampler see.
    #[arg(long, default_value_t = 100)]
    pub mining_k: usize,

    /// Search each query against its own candidate pool (pool: M-BEIR's pool of its dataset, task and split) or
    /// the whole corpus.
    #[arg(long, value_enum, default_value = "pool")]
    pub scope: Scope,

    /// Splits that get candidates [default: every split not given to --negative-splits].
    #[arg(long, value_delimiter = ',', value_name = "SPLIT,...")]
    pub candidate_splits: Option<Vec<String>>,

    /// Splits that get negatives.
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "SPLIT,...",
        default_value = "train"
    )]
    pub negative_splits: Vec<String>,

    /// Negatives per query: N of the 1 + N training group each of its positives forms.
    #[arg(long, default_value_t = 16)]
    pub negatives: usize,

    /// Hard share of the negatives, as hard:random (1:1 = half hard, half random).
    #[arg(long, default_value = "1:1", value_name = "H:R", value_parser = parse_ratio)]
    pub ratio: (u32, u32),

    /// Keep a candidate only below min positive score - |min positive| x this (NV-Retriever's TopK-PercPos).
    #[arg(long, default_value_t = 0.05, value_name = "F")]
    pub relative_margin: f32,

    /// Switch the relative margin off.
    #[arg(long, conflicts_with = "relative_margin")]
    pub no_relative_margin: bool,

    /// Keep a candidate only below min positive score - this.
    #[arg(long, value_name = "F")]
    pub absolute_margin: Option<f32>,

    /// Keep a candidate only below this score.
    #[arg(long, value_name = "F")]
    pub max_score: Option<f32>,

    /// First rank (1-based, in the list without the positives) a hard negative may come from.
    #[arg(long, default_value_t = 1)]
    pub min_rank: u32,

    /// Last rank a hard negative may come from.
    #[arg(long)]
    pub max_rank: Option<u32>,

    /// Documents scored per pass: bounds score memory to query-block x chunk-docs floats per thread.
    #[arg(long, default_value_t = 1024)]
    pub chunk_docs: usize,

    /// Queries per parallel task.
    #[arg(long, default_value_t = 256)]
    pub query_block: usize,

    /// Seed of the negative sampling; the same seed gives byte-identical outputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Where the search runs: cpu, cuda or cuda:K.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceSpec,
}

impl MineArgs {
    fn config(&self) -> MineConfig {
        MineConfig {
            ingest_dir: Some(self.from.clone()),
            embeddings_dir: Some(self.embeddings.clone()),
            k: self.k,
            mining_k: self.mining_k,
            scope: self.scope,
            candidate_splits: self.candidate_splits.clone(),
            negative_splits: self.negative_splits.clone(),
            negatives_per_group: self.negatives,
            hard_ratio: self.ratio.0,
            random_ratio: self.ratio.1,
            filter: FilterConfig {
                relative_margin: (!self.no_relative_margin).then_some(self.relative_margin),
                absolute_margin: self.absolute_margin,
                max_score: self.max_score,
                min_rank: self.min_rank,
                max_rank: self.max_rank,
            },
            chunk_docs: self.chunk_docs,
            query_block: self.query_block,
            ..MineConfig::default()
        }
    }
}

pub fn mine(args: &MineArgs, global: &Global) -> anyhow::Result<()> {
    let stage = MineStage::new(args.config())?;
    let options = RunOptions {
        force: args.stage.force,
        shard: args.stage.shard,
        device: args.device,
        policy: global.policy(),
        dirs: [("mine".to_string(), args.stage.out.clone())].into(),
        ..Default::default()
    };
    let workdir = args
        .stage
        .out
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let reports = Runner::new(
        workdir,
        args.seed,
        vec![("mine".to_string(), Box::new(stage))],
        options,
    )
    .run()?;
    print_summary("mine", &reports);
    Ok(())
}

fn parse_ratio(s: &str) -> Result<(u32, u32), String> {
    let (hard, random) = s
        .split_once(':')
        .ok_or_else(|| format!("expected H:R (e.g. 1:1), got `{s}`"))?;
    let number = |part: &str| {
        part.trim()
            .parse::<u32>()
            .map_err(|_| format!("`{part}` in `{s}` is not a whole number"))
    };
    Ok((number(hard)?, number(random)?))
}
