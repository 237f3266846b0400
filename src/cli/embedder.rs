//! `umrank embedder`: train the demo's dual encoder from scratch on an ingest stage's pairs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use umrank::device::DeviceSpec;
use umrank::embedder::{Architecture, DualEncoderConfig, DualEncoderStage};
use umrank::pipeline::{RunOptions, Runner, Stage};

use super::run::print_summary;
use super::stages::StageArgs;
use super::Global;
use umrank::schema::outputs;

/// Train a tiny CLIP-architecture dual encoder from scratch on the (query, positive) pairs of an ingest stage,
/// with CLIP's symmetric in-batch contrastive loss, and write it as a Hugging Face CLIP directory (OUT/model)
/// that `umrank embed --model OUT/model` loads. For data with no pretrained embedder at hand, such as the demo
/// world; real data is better served by a pretrained one (MiniLM, CLIP, GME).
#[derive(Debug, clap::Args)]
pub struct EmbedderArgs {
    #[command(flatten)]
    pub stage: StageArgs,

    /// The ingest stage directory (its queries, corpus, qrels and images datasets).
    #[arg(long, value_name = "INGEST_DIR")]
    pub from: PathBuf,

    /// Seed of the initial weights and the data order; the same seed gives the same model.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// The split whose pairs are trained on.
    #[arg(long, default_value = "train")]
    pub split: String,

    /// The held-out split whose recall@1 is logged after every epoch ("none" to skip).
    #[arg(long, default_value = "val")]
    pub val_split: String,

    /// Passes over the training pairs.
    #[arg(long, default_value_t = 30)]
    pub epochs: usize,

    /// Pairs per step; the other pairs of a batch are each pair's negatives.
    #[arg(long, default_value_t = 64, value_name = "N")]
    pub batch_size: usize,

    /// Peak learning rate (AdamW; warmup, then cosine decay to zero).
    #[arg(long, default_value_t = 2e-3)]
    pub lr: f64,

    /// Share of the steps spent warming up.
    #[arg(long, default_value_t = 0.1)]
    pub warmup_ratio: f64,

    /// AdamW's decoupled weight decay.
    #[arg(long, default_value_t = 0.05)]
    pub weight_decay: f64,

    /// Hidden width of both towers.
    #[arg(long, default_value_t = 64)]
    pub width: usize,

    /// Encoder layers per tower.
    #[arg(long, default_value_t = 2)]
    pub layers: usize,

    /// Attention heads per layer (must divide the width).
    #[arg(long, default_value_t = 4)]
    pub heads: usize,

    /// Width of the embedding space.
    #[arg(long, default_value_t = 64)]
    pub projection_dim: usize,

    /// Side images are resized and centre-cropped to.
    #[arg(long, default_value_t = 56)]
    pub image_size: usize,

    /// Side of a vision patch.
    #[arg(long, default_value_t = 8)]
    pub patch_size: usize,

    /// Longest text in tokens; longer texts are truncated.
    #[arg(long, default_value_t = 64)]
    pub max_text_tokens: usize,

    /// cpu, cuda or cuda:K.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceSpec,
}

pub fn embedder(args: &EmbedderArgs, global: &Global) -> anyhow::Result<()> {
    const UPSTREAM: &str = "ingest";
    const NAME: &str = "embedder";
    let config = DualEncoderConfig {
        split: args.split.clone(),
        val_split: (args.val_split != "none").then(|| args.val_split.clone()),
        architecture: Architecture {
            width: args.width,
            layers: args.layers,
            heads: args.heads,
            projection_dim: args.projection_dim,
            image_size: args.image_size,
            patch_size: args.patch_size,
            max_text_tokens: args.max_text_tokens,
        },
        epochs: args.epochs,
        batch_size: args.batch_size,
        lr: args.lr,
        warmup_ratio: args.warmup_ratio,
        weight_decay: args.weight_decay,
        ..DualEncoderConfig::new(UPSTREAM)
    };
    let stage: Box<dyn Stage> = Box::new(DualEncoderStage::new(config)?);
    let dirs: BTreeMap<String, PathBuf> = [
        (NAME.to_string(), args.stage.out.clone()),
        (UPSTREAM.to_string(), args.from.clone()),
    ]
    .into();
    let options = RunOptions {
        force: args.stage.force,
        shard: args.stage.shard,
        device: args.device,
        policy: global.policy(),
        dirs,
        ..Default::default()
    };
    let workdir = args
        .stage
        .out
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let reports =
        Runner::new(workdir, args.seed, vec![(NAME.to_string(), stage)], options).run()?;
    print_summary(NAME, &reports);
    println!(
        "model: {}",
        args.stage.out.join(outputs::embedder::MODEL).display()
    );
    Ok(())
}
