//! CPU throughput of umrank's three hot loops on real checkpoints (issue 18); `benches/throughput_vs_torch.py`
//! runs each beside its PyTorch counterpart on the same weights and the same inputs, in the same run:
//!
//!     cargo bench --bench throughput -- prompts --model DIR --out FILE      # the token ids both sides use
//!     cargo bench --bench throughput -- train --model DIR --prompts FILE [--plain] [--no-recompute] [--steps 4]
//!     cargo bench --bench throughput -- score --model DIR --prompts FILE [--repeats 2]
//!     cargo bench --bench throughput -- embed --model DIR --texts FILE [--batch 64] [--repeats 2]
//!
//! `train` is the train stage's LoRA step on a decoder (SmolLM2-135M in the table): groups of 1 + 4 prompts of
//! at most 128 tokens, 4 groups per step, LoRA r 16 on the seven projections, f32, SFT, AdamW; with the stage's
//! default levers, with `--plain` without shared prefixes and packing (the layout transformers runs), or with
//! `--no-recompute` keeping every activation as transformers does by default. `score` is the eval stage's scoring
//! of pairs in batches, zero-shot (each query's prompt head once). `embed` is the embed stage's text path of a
//! sentence embedder (all-MiniLM-L6-v2 in the table) over a JSON list of texts, taken in the file's order and cut
//! into batches as given (the driver sorts them longest first, as sentence-transformers does, so both sides see
//! the same batches).
//!
//! One untimed warm-up, then each repeat is timed on its own; the figure is the median repeat's rate. Each result
//! is printed as a `RESULT {json}` line.

#[path = "common/lora_step.rs"]
mod lora_step;
#[path = "common/smollm2_prompts.rs"]
mod smollm2_prompts;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::{Parser, Subcommand};
use serde::Deserialize;
use serde_json::json;
use umrank::models::embedders::{self, EmbedderOptions};
use umrank::models::reranker::{PreparedPair, Reranker};
use umrank::models::text::tokenizer::Tokenizer;
use umrank::train::TrainConfig;

use lora_step::LoraStepper;
use smollm2_prompts::prompts;

#[derive(Parser)]
struct Args {
    #[command(subcommand)]
    what: What,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true, global = true)]
    bench: bool,
}

#[derive(Subcommand)]
enum What {
    /// Writes the token ids of the training groups and of the scored pairs, and the yes/no ids.
    Prompts {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Groups per training step.
        #[arg(long, default_value_t = 4)]
        groups: usize,
        /// Negatives per group.
        #[arg(long, default_value_t = 4)]
        negatives: usize,
        /// Longest prompt in tokens.
        #[arg(long, default_value_t = 128)]
        max_len: usize,
        /// Pairs one scoring repeat scores.
        #[arg(long, default_value_t = 96)]
        pairs: usize,
        /// Pairs per forward pass when scoring (the eval stage's default).
        #[arg(long, default_value_t = 8)]
        batch: usize,
    },
    /// Times LoRA training steps on the prompts file's groups.
    Train {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompts: PathBuf,
        /// Without shared prefixes and packing: padded rows, as transformers trains.
        #[arg(long)]
        plain: bool,
        /// Keep every activation instead of recomputing each layer in the backward pass (transformers' default
        /// without gradient checkpointing): faster, more memory.
        #[arg(long)]
        no_recompute: bool,
        #[arg(long, default_value_t = 4)]
        steps: usize,
    },
    /// Times scoring the prompts file's pairs.
    Score {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        prompts: PathBuf,
        #[arg(long, default_value_t = 2)]
        repeats: usize,
    },
    /// Times embedding a JSON list of texts.
    Embed {
        #[arg(long)]
        model: PathBuf,
        #[arg(long)]
        texts: PathBuf,
        #[arg(long, default_value_t = 64)]
        batch: usize,
        #[arg(long, default_value_t = 2)]
        repeats: usize,
    },
}

/// The prompts file both sides read.
#[derive(Deserialize)]
struct PromptsFile {
    groups: usize,
    per_group: usize,
    max_len: usize,
    ids: Vec<Vec<u32>>,
    score_ids: Vec<Vec<u32>>,
    score_batch: usize,
}

fn main() -> Result<()> {
    // As the umrank binary does at start-up (src/malloc.rs).
    umrank::malloc::retain_freed_memory();
    match Args::parse().what {
        What::Prompts {
            model,
            out,
            groups,
            negatives,
            max_len,
            pairs,
            batch,
        } => write_prompts(&model, &out, groups, negatives + 1, max_len, pairs, batch),
        What::Train {
            model,
            prompts,
            plain,
            no_recompute,
            steps,
        } => train(&model, &read_prompts(&prompts)?, plain, no_recompute, steps),
        What::Score {
            model,
            prompts,
            repeats,
        } => score(&model, &read_prompts(&prompts)?, repeats),
        What::Embed {
            model,
            texts,
            batch,
            repeats,
        } => embed(&model, &texts, batch, repeats),
    }
}

fn write_prompts(
    model: &Path,
    out: &Path,
    groups: usize,
    per_group: usize,
    max_len: usize,
    pairs: usize,
    batch: usize,
) -> Result<()> {
    let tokenizer = Tokenizer::from_dir(model)?;
    let answers = tokenizer.yes_no_ids()?;
    let file = json!({
        "groups": groups,
        "per_group": per_group,
        "max_len": max_len,
        "ids": prompts(&tokenizer, groups * per_group, per_group, max_len)?,
        "score_ids": prompts(&tokenizer, pairs, per_group, max_len)?,
        "score_batch": batch,
        "yes": answers.yes,
        "no": answers.no,
    });
    std::fs::write(out, serde_json::to_string(&file)?)
        .with_context(|| format!("writing {}", out.display()))
}

fn read_prompts(path: &Path) -> Result<PromptsFile> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Runs `work` once untimed, then `repeats` times timed, and returns the median repeat's seconds.
fn median_seconds(repeats: usize, mut work: impl FnMut() -> Result<()>) -> Result<f64> {
    work()?;
    let mut seconds = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let clock = Instant::now();
        work()?;
        seconds.push(clock.elapsed().as_secs_f64());
    }
    seconds.sort_by(f64::total_cmp);
    Ok(seconds[seconds.len() / 2])
}

fn train(
    model: &Path,
    prompts: &PromptsFile,
    plain: bool,
    no_recompute: bool,
    steps: usize,
) -> Result<()> {
    let levers = if plain {
        "shared_prefix = false\npacking = false"
    } else {
        ""
    };
    let recompute = if no_recompute {
        "recompute = 'none'"
    } else {
        ""
    };
    let config: TrainConfig = toml::from_str(&format!(
        "model = '{}'\ngroups_per_batch = {}\nnegatives = {}\nmax_len = {}\n{levers}\n{recompute}",
        model.display(),
        prompts.groups,
        prompts.per_group - 1,
        prompts.max_len
    ))?;
    let mut stepper = LoraStepper::build(config)?;
    let mut reports = Vec::new();
    let seconds = median_seconds(steps, || {
        reports.push(stepper.step(&prompts.ids, prompts.per_group, |_| Ok(()))?);
        Ok(())
    })?;
    let first = &reports[0];
    println!(
        "RESULT {}",
        json!({
            "measurement": match (plain, no_recompute) {
                (true, _) => "train-plain",
                (false, true) => "train-no-recompute",
                (false, false) => "train",
            },
            "sequences_per_s": prompts.ids.len() as f64 / seconds,
            "step_seconds": seconds,
            "tokens": first.tokens,
            "first_loss": first.loss,
            "first_grad_norm": first.grad_norm,
            "threads": rayon::current_num_threads(),
        })
    );
    Ok(())
}

fn score(model: &Path, prompts: &PromptsFile, repeats: usize) -> Result<()> {
    let reranker = Reranker::load(model, None, &Device::Cpu)?;
    let pairs: Vec<PreparedPair> = prompts
        .score_ids
        .iter()
        .map(|ids| PreparedPair {
            ids: ids.clone(),
            images: Vec::new(),
        })
        .collect();
    let seconds = median_seconds(repeats, || {
        reranker.score(&pairs, prompts.score_batch)?;
        Ok(())
    })?;
    println!(
        "RESULT {}",
        json!({
            "measurement": "score",
            "pairs_per_s": pairs.len() as f64 / seconds,
            "batch": prompts.score_batch,
            "threads": rayon::current_num_threads(),
        })
    );
    Ok(())
}

fn embed(model: &Path, texts: &Path, batch: usize, repeats: usize) -> Result<()> {
    let texts: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(texts).with_context(|| format!("reading {}", texts.display()))?,
    )?;
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    let options = EmbedderOptions {
        batch_size: batch,
        ..EmbedderOptions::default()
    };
    let embedder = embedders::load(model, &options)?;
    let seconds = median_seconds(repeats, || {
        embedder.embed_texts(&texts)?;
        Ok(())
    })?;
    println!(
        "RESULT {}",
        json!({
            "measurement": "embed",
            "texts_per_s": texts.len() as f64 / seconds,
            "batch": batch,
            "threads": rayon::current_num_threads(),
        })
    );
    Ok(())
}
