//! `umrank train`: the train stage on its own, reading a shards stage directory and an ingest stage directory.
//!
//! Every flag is a key of the pipeline's `[train]` table (`--lora-r` is `lora_r`); a flag left out keeps the
//! table's default, so the defaults live in one place (`umrank::train::config`).

use std::path::PathBuf;
use umrank::media::preprocess::ImageBackend;

use anyhow::Context;

use umrank::device::DeviceSpec;
use umrank::models::text::prompt_format::PromptFormat;
use umrank::optim::Decay;
use umrank::pipeline::{RunOptions, Runner};
use umrank::train::config::{DataFormat, ObjectiveName, Precision, Recompute, Tuning};
use umrank::train::objective::{DirectionSource, WeightSource};
use umrank::train::{TrainConfig, TrainStage};

use super::run::print_summary;
use super::Global;

/// Train a reranker on the groups of a shards stage (SFT, CL or a unified objective), with LoRA or full
/// fine-tuning. Writes OUT/adapter (PEFT format; OUT/model for full fine-tuning), OUT/train_log.jsonl (per
/// step: loss, SFT and CL losses, lr, grad norm, mean W+ / W-, throughput) and OUT/checkpoints/.
#[derive(Debug, clap::Args)]
pub struct TrainArgs {
    /// The stage directory: outputs, rejects.parquet and manifest.json go here.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// The shards stage directory (its sft/ and cl/ datasets).
    #[arg(long, value_name = "DIR")]
    pub shards: PathBuf,

    /// The ingest stage directory (corpus/ for cl groups, images/).
    #[arg(long, value_name = "DIR")]
    pub ingest: PathBuf,

    /// Seed of every random choice: initialisation, LoRA init and dropout, data order.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,

    /// Where the model runs: cpu, cuda or cuda:K.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceSpec,

    /// Rerun even if the outputs are up to date.
    #[arg(long)]
    pub force: bool,

    #[command(flatten)]
    pub parallel: super::data_parallel::DataParallelArgs,

    /// Continue from the newest complete checkpoint in OUT/checkpoints written by the same run (same config,
    /// seed and inputs); the result equals an uninterrupted run. Without it, old checkpoints are removed.
    #[arg(long)]
    pub resume: bool,

    /// Which shard dataset to read [default: sft].
    #[arg(long, value_enum)]
    pub data: Option<DataFormat>,

    /// A Hugging Face model directory to start from (Qwen2-VL, Qwen2.5-VL, or a text Qwen2/Qwen3/Llama), or a llama
    /// GGUF file (LoRA only).
    #[arg(long, value_name = "DIR", conflicts_with = "init")]
    pub model: Option<PathBuf>,

    /// Train from random weights: tiny (a small Qwen2-VL), tiny-text (a small Qwen2), or a config.json path.
    #[arg(long, value_name = "tiny|tiny-text|FILE")]
    pub init: Option<String>,

    /// The tokenizer directory for --init.
    #[arg(long, value_name = "DIR")]
    pub tokenizer: Option<PathBuf>,

    /// The loss [default: sft].
    #[arg(long, value_enum)]
    pub objective: Option<ObjectiveName>,

    /// Unified objective: where the per-example weights come from (sft, cl or const).
    #[arg(long, value_parser = parse_weight)]
    pub weight: Option<WeightSource>,

    /// Unified objective: the direction, sft (z_yes - z_no) or cl (z_yes).
    #[arg(long, value_parser = parse_direction)]
    pub direction: Option<DirectionSource>,

    /// Unified objective: zero the weight of examples already learned (positive p > 1 - tau, negative p < tau).
    #[arg(long)]
    pub tau: Option<f64>,

    /// CL temperature (CL loss, CL weights and CL direction) [default: 1].
    #[arg(long)]
    pub temperature: Option<f64>,

    /// What trains: lora (adapters on the decoder projections) or full (every decoder weight) [default: lora].
    #[arg(long, value_enum)]
    pub tune: Option<Tuning>,

    /// Warm start: a release, release stage, PEFT adapter directory or train stage whose adapter the LoRA run
    /// starts from; a release's recorded base hashes must match --model, and its r/alpha/dropout/targets the
    /// --lora-* options.
    #[arg(long)]
    pub init_adapter: Option<PathBuf>,

    /// LoRA rank [default: 16].
    #[arg(long)]
    pub lora_r: Option<usize>,

    /// LoRA alpha; the update is scaled by alpha / r [default: 32].
    #[arg(long)]
    pub lora_alpha: Option<f64>,

    /// Dropout on the LoRA input during training [default: 0.05].
    #[arg(long)]
    pub lora_dropout: Option<f64>,

    /// Projections that get adapters, comma separated [default: q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj].
    #[arg(long, value_delimiter = ',')]
    pub lora_targets: Option<Vec<String>>,

    /// Train the LM head too (frozen by default; with tied embeddings it is the embedding matrix).
    #[arg(long)]
    pub train_lm_head: bool,

    /// Train the vision tower (frozen by default).
    #[arg(long)]
    pub train_vision: bool,

    /// Peak learning rate [default: 1e-4].
    #[arg(long)]
    pub lr: Option<f64>,

    /// Decoupled weight decay [default: 0].
    #[arg(long)]
    pub weight_decay: Option<f64>,

    /// Clip the global gradient norm to this value, 0 for no clipping [default: 1].
    #[arg(long)]
    pub max_grad_norm: Option<f64>,

    /// AdamW beta1 [default: 0.9].
    #[arg(long)]
    pub beta1: Option<f64>,

    /// AdamW beta2 [default: 0.999].
    #[arg(long)]
    pub beta2: Option<f64>,

    /// AdamW epsilon [default: 1e-8].
    #[arg(long)]
    pub eps: Option<f64>,

    /// Linear warmup steps [default: 0].
    #[arg(long)]
    pub warmup_steps: Option<u64>,

    /// Decay after warmup: cosine, linear or constant [default: cosine].
    #[arg(long, value_parser = parse_decay)]
    pub decay: Option<Decay>,

    /// Where the decay ends, as a fraction of the peak learning rate [default: 0].
    #[arg(long)]
    pub min_lr_ratio: Option<f64>,

    /// Passes over the data [default: 1].
    #[arg(long)]
    pub epochs: Option<u64>,

    /// Stop after this many optimizer steps (the schedule spans them) instead of counting epochs.
    #[arg(long)]
    pub max_steps: Option<u64>,

    /// Groups per micro-batch (one forward/backward pass) [default: 2].
    #[arg(long)]
    pub groups_per_batch: Option<usize>,

    /// Micro-batches accumulated into one optimizer step [default: 1].
    #[arg(long)]
    pub accumulation: Option<usize>,

    /// Negatives per group: more are cut, fewer are rejected [default: the most in the data].
    #[arg(long)]
    pub negatives: Option<usize>,

    /// Longest sequence in tokens; text is cut, image tokens never, a group that cannot fit is rejected
    /// [default: 3200].
    #[arg(long)]
    pub max_len: Option<usize>,

    /// Prompt format: paper, qwen3-reranker or template (the model's own chat template) [default: paper].
    #[arg(long, value_name = "FORMAT")]
    pub prompt: Option<PromptFormat>,

    /// The judgement words YES,NO, each a single token of the vocabulary [default: yes,no].
    #[arg(long, value_name = "YES,NO", value_delimiter = ',', num_args = 2)]
    pub answer_tokens: Option<Vec<String>>,

    /// Weight dtype: f32 or bf16 (f32 master weights and moments either way) [default: bf16 on CUDA, else f32].
    #[arg(long, value_enum)]
    pub precision: Option<Precision>,

    /// Smallest image size in pixels for the image processor [default: 3136 = 4 x 28 x 28].
    #[arg(long)]
    pub min_pixels: Option<u64>,

    /// Largest image size in pixels for the image processor [default: 1003520 = 1280 x 28 x 28].
    #[arg(long)]
    pub max_pixels: Option<u64>,

    /// Resize images as transformers' torchvision or PIL image processor does [default: torchvision].
    #[arg(long, value_name = "torchvision|pil")]
    pub image_processor: Option<ImageBackend>,

    /// Write a checkpoint every N optimizer steps, 0 for none [default: 500].
    #[arg(long)]
    pub checkpoint_every: Option<u64>,

    /// How many of the newest checkpoints to keep [default: 2].
    #[arg(long)]
    pub keep_checkpoints: Option<usize>,

    /// Run a frozen vision tower for every occurrence of an image instead of once per distinct image.
    #[arg(long)]
    pub no_vision_cache: bool,

    /// Pad a micro-batch's sequences to the longest instead of packing them into one row.
    #[arg(long)]
    pub no_packing: bool,

    /// Run every prompt of a group whole instead of running the prefix they share (system turn, instruction,
    /// query) once per group.
    #[arg(long)]
    pub no_shared_prefix: bool,

    /// The most the vision cache may hold, e.g. 4GiB; the least recently used outputs are dropped beyond it
    /// [default: 4GiB].
    #[arg(long, value_name = "SIZE")]
    pub vision_cache_budget: Option<String>,

    /// Activation recomputation: layers (keep each layer's input, run the layer again in the backward pass) or
    /// none (keep every activation) [default: layers for --model, none for --init].
    #[arg(long, value_enum)]
    pub recompute: Option<Recompute>,
}

fn parse_weight(s: &str) -> Result<WeightSource, String> {
    parse_enum(s, "sft, cl or const")
}

fn parse_direction(s: &str) -> Result<DirectionSource, String> {
    parse_enum(s, "sft or cl")
}

fn parse_decay(s: &str) -> Result<Decay, String> {
    parse_enum(s, "cosine, linear or constant")
}

/// Parses a lower-case serde name.
fn parse_enum<T: serde::de::DeserializeOwned>(s: &str, expected: &str) -> Result<T, String> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| format!("`{s}`: expected {expected}"))
}

impl TrainArgs {
    /// The `[train]` table the flags describe: only the given keys, so everything else takes its default.
    fn table(&self) -> anyhow::Result<toml::Table> {
        let flags = [
            (
                "train_lm_head",
                Some(toml::Value::Boolean(self.train_lm_head)),
            ),
            (
                "train_vision",
                Some(toml::Value::Boolean(self.train_vision)),
            ),
            ("resume", Some(toml::Value::Boolean(self.resume))),
            (
                "vision_cache",
                Some(toml::Value::Boolean(!self.no_vision_cache)),
            ),
            ("packing", Some(toml::Value::Boolean(!self.no_packing))),
            (
                "shared_prefix",
                Some(toml::Value::Boolean(!self.no_shared_prefix)),
            ),
            ("data", value(&self.data)?),
            ("model", value(&self.model)?),
            ("init", value(&self.init)?),
            ("tokenizer", value(&self.tokenizer)?),
            ("objective", value(&self.objective)?),
            ("weight", value(&self.weight)?),
            ("direction", value(&self.direction)?),
            ("tau", value(&self.tau)?),
            ("temperature", value(&self.temperature)?),
            ("tune", value(&self.tune)?),
            ("init_adapter", value(&self.init_adapter)?),
            ("lora_r", value(&self.lora_r)?),
            ("lora_alpha", value(&self.lora_alpha)?),
            ("lora_dropout", value(&self.lora_dropout)?),
            ("lora_targets", value(&self.lora_targets)?),
            ("lr", value(&self.lr)?),
            ("weight_decay", value(&self.weight_decay)?),
            ("max_grad_norm", value(&self.max_grad_norm)?),
            ("beta1", value(&self.beta1)?),
            ("beta2", value(&self.beta2)?),
            ("eps", value(&self.eps)?),
            ("warmup_steps", value(&self.warmup_steps)?),
            ("decay", value(&self.decay)?),
            ("min_lr_ratio", value(&self.min_lr_ratio)?),
            ("epochs", value(&self.epochs)?),
            ("max_steps", value(&self.max_steps)?),
            ("groups_per_batch", value(&self.groups_per_batch)?),
            ("accumulation", value(&self.accumulation)?),
            ("negatives", value(&self.negatives)?),
            ("max_len", value(&self.max_len)?),
            ("prompt", value(&self.prompt)?),
            ("answer_tokens", value(&self.answer_tokens)?),
            ("precision", value(&self.precision)?),
            ("min_pixels", value(&self.min_pixels)?),
            ("max_pixels", value(&self.max_pixels)?),
            ("image_processor", value(&self.image_processor)?),
            ("checkpoint_every", value(&self.checkpoint_every)?),
            ("keep_checkpoints", value(&self.keep_checkpoints)?),
            ("recompute", value(&self.recompute)?),
            ("vision_cache_budget", value(&self.vision_cache_budget)?),
        ];
        Ok(flags
            .into_iter()
            .filter_map(|(key, value)| value.map(|v| (key.to_string(), v)))
            .collect())
    }
}

/// A given option as a TOML value.
fn value<T: serde::Serialize>(option: &Option<T>) -> anyhow::Result<Option<toml::Value>> {
    option
        .as_ref()
        .map(|v| toml::Value::try_from(v).context("an option value"))
        .transpose()
}

pub fn train(args: &TrainArgs, global: &Global) -> anyhow::Result<()> {
    let config: TrainConfig = toml::Value::Table(args.table()?)
        .try_into()
        .context("the train options")?;
    let stage = TrainStage::new(config)?;
    super::data_parallel::run(&args.parallel, args.device, |device| {
        run_stage(args, global, stage, device)
    })
}

fn run_stage(
    args: &TrainArgs,
    global: &Global,
    stage: TrainStage,
    device: DeviceSpec,
) -> anyhow::Result<()> {
    let options = RunOptions {
        force: args.force,
        device,
        policy: global.policy(),
        dirs: [
            ("train".to_string(), args.out.clone()),
            ("shards".to_string(), args.shards.clone()),
            ("ingest".to_string(), args.ingest.clone()),
        ]
        .into(),
        ..Default::default()
    };
    let workdir = args.out.parent().map(PathBuf::from).unwrap_or_default();
    let reports = Runner::new(
        workdir,
        args.seed,
        vec![("train".to_string(), Box::new(stage))],
        options,
    )
    .run()?;
    print_summary("train", &reports);
    Ok(())
}
