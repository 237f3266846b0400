//! `umrank shards` (the shards stage on its own) and `umrank export` (shards to other trainers' formats).

use std::path::PathBuf;

use umrank::pipeline::{RunOptions, Runner};
use umrank::shards::export::{export, ExportFormat, ExportOptions};
use umrank::shards::{ShardsConfig, ShardsStage, INDEX};

use super::run::print_summary;
use super::Global;

/// Build the training shards: one group per (query, positive) with its mined negatives, shuffled by the seed,
/// written as pointwise rows (OUT/sft) and contrastive groups (OUT/cl) in size-bounded Parquet shards, with
/// OUT/index.json listing them in training order. Prompts are kept as parts; images are referenced by image_id.
#[derive(Debug, clap::Args)]
pub struct ShardsArgs {
    /// The stage directory: sft/, cl/, index.json, rejects.parquet and manifest.json go here.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// The ingest stage directory (queries, corpus and images datasets).
    #[arg(long, value_name = "DIR")]
    pub ingest: PathBuf,

    /// The mine stage directory (negatives dataset).
    #[arg(long, value_name = "DIR")]
    pub mine: PathBuf,

    /// Seed of the shuffle; the same seed and inputs give byte-identical shards.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Keep the order of the negatives dataset instead of shuffling.
    #[arg(long)]
    pub no_shuffle: bool,

    /// Most sft rows per shard file (a group is never split).
    #[arg(long, default_value_t = ShardsConfig::default().max_rows_per_shard, value_name = "N")]
    pub max_rows_per_shard: u64,

    /// Most bytes of uncompressed values per shard file.
    #[arg(long, default_value_t = ShardsConfig::default().max_bytes_per_shard, value_name = "BYTES")]
    pub max_bytes_per_shard: u64,

    /// Rerun even if the outputs are up to date.
    #[arg(long)]
    pub force: bool,
}

/// Export training shards for another trainer: ms-swift reranker jsonl, FlagEmbedding jsonl, or a
/// sentence-transformers Parquet file (anchor, positive, negative_1..N). One line or row per group; images are
/// written once each to images/ beside the output file and referenced by relative path.
#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Output format.
    #[arg(long, value_enum)]
    pub format: ExportFormat,

    /// The shards stage directory (the one with index.json).
    #[arg(long, value_name = "DIR")]
    pub shards: PathBuf,

    /// The file to write (.jsonl for swift and flag, .parquet for sentence-transformers).
    #[arg(long, value_name = "FILE")]
    pub out: PathBuf,

    /// The images dataset to read images from [default: the one index.json names].
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,

    /// sentence-transformers: number of negative columns [default: the most any group has]; groups with fewer
    /// negatives are skipped.
    #[arg(long, value_name = "N")]
    pub negatives: Option<usize>,
}

pub fn shards(args: &ShardsArgs, global: &Global) -> anyhow::Result<()> {
    let config = ShardsConfig {
        shuffle: !args.no_shuffle,
        max_rows_per_shard: args.max_rows_per_shard,
        max_bytes_per_shard: args.max_bytes_per_shard,
        ..ShardsConfig::default()
    };
    let dirs = [
        ("shards".to_string(), args.out.clone()),
        (config.ingest.clone(), args.ingest.clone()),
        (config.mine.clone(), args.mine.clone()),
    ];
    let options = RunOptions {
        force: args.force,
        policy: global.policy(),
        dirs: dirs.into(),
        ..Default::default()
    };
    let stage = ShardsStage::new(config)?;
    let workdir = args.out.parent().map(PathBuf::from).unwrap_or_default();
    let reports = Runner::new(
        workdir,
        args.seed,
        vec![("shards".to_string(), Box::new(stage))],
        options,
    )
    .run()?;
    print_summary("shards", &reports);
    println!("index: {}", args.out.join(INDEX).display());
    Ok(())
}

pub fn export_shards(args: &ExportArgs) -> anyhow::Result<()> {
    let summary = export(&ExportOptions {
        format: args.format,
        shards: args.shards.clone(),
        out: args.out.clone(),
        images: args.images.clone(),
        negatives: args.negatives,
    })?;
    println!("{}: {summary}", args.out.display());
    Ok(())
}
