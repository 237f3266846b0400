//! Peak memory and time of one training step on the CPU, the reference path against blocked attention with
//! layer recomputation, each beside the memory plan's estimate (issue 17).
//!
//! A Qwen2.5-VL-shaped decoder (its 16 query heads over 2 key/value heads and its MLP ratio; width and depth
//! reduced to fit this CPU) with LoRA r 16 on the seven projections, dropout on, f32, trains one step (forward,
//! loss, backward, AdamW) on one group of 1 + 3 sequences of `len` tokens that share a short prefix. Two paths:
//! `reference` (attention materialising its scores, every activation kept: what umrank did before) and
//! `blocked+recompute` (the blocked kernel, each layer recomputed in the backward pass, the MLP in slices). Each
//! point runs in a process of its own, so that the kernel's high-water mark of the process's resident memory
//! (`VmHWM`) is that step's: the figure is the high-water mark minus the resident memory before the model was
//! built. A point whose plan exceeds the memory the machine has available is not run (it would be killed).
//! The plan's estimate (`umrank::plan::train::plan_on`) is computed from the same config.json and train config.
//!
//!     cargo bench --bench train_memory -- [--lengths 256,512,1024,2048] [--width 512] [--layers 4]
//!
//! Each point is also printed as a `RESULT {json}` line for `benches/all.py`.

#[path = "common/measure.rs"]
mod measure;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Parser;
use rand::{Rng, SeedableRng};
use umrank::models::layers::attention::AttentionKernel;
use umrank::models::layers::recompute::RecomputeTape;
use umrank::optim::{AdamW, GradAccumulator};
use umrank::plan::{ModelShape, Target};
use umrank::train::config::Recompute;
use umrank::train::encode::Sequence;
use umrank::train::forward::{batch_logits, BatchLayout};
use umrank::train::model::TrainableReranker;
use umrank::train::objective::group_loss;
use umrank::train::TrainConfig;

use measure::{run_measurement, status_kib, status_kib_of};

#[derive(Parser)]
struct Args {
    /// Tokens per sequence; the step trains 1 + 3 of them (about 4x as many tokens).
    #[arg(long, value_delimiter = ',', default_value = "256,512,1024,2048")]
    lengths: Vec<usize>,
    /// Decoder width (16 heads of width / 16).
    #[arg(long, default_value_t = 512)]
    width: usize,
    /// Decoder layers.
    #[arg(long, default_value_t = 4)]
    layers: usize,
    /// Internal: run one point in this process.
    #[arg(long, hide = true)]
    child: Option<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const NEGATIVES: usize = 3;
const SHARED_PREFIX: usize = 32;

/// The two paths compared: the reference (scores materialised, nothing recomputed) and the blocked kernel with
/// layer recomputation.
const PATHS: [(&str, AttentionKernel, Recompute); 2] = [
    ("reference", AttentionKernel::Reference, Recompute::None),
    (
        "blocked+recompute",
        AttentionKernel::Blocked,
        Recompute::Layers,
    ),
];

fn main() -> Result<()> {
    let args = Args::parse();
    let dir = tempfile::tempdir()?;
    let config = write_model_config(dir.path(), args.width, args.layers)?;
    if let Some(spec) = &args.child {
        return child(spec, &config);
    }
    println!(
        "one LoRA training step, Qwen2.5-VL-shaped decoder (16 heads, 2 kv heads, width {}, {} layers, f32), \
         1 + {NEGATIVES} sequences sharing a {SHARED_PREFIX}-token prefix",
        args.width, args.layers
    );
    println!(
        "{:>6} {:>18} {:>13} {:>10} {:>7} {:>8}",
        "tokens", "path", "measured MiB", "plan MiB", "plan/m", "step s"
    );
    let shape = ModelShape::read(&config)?;
    let mut rows = Vec::new();
    for &len in &args.lengths {
        for (path, kernel, recompute) in PATHS {
            let train = train_config(&config, len, recompute)?;
            let planned =
                umrank::plan::train::plan_on(&train, &shape, Target::Cpu, kernel).peak_bytes();
            let available = status_kib_of("/proc/meminfo", "MemAvailable")? * 1024;
            let row = if planned > available * 9 / 10 {
                println!(
                    "{:>6} {path:>18} not run: the plan's {} MiB exceed 90% of the {} MiB available",
                    synthetic_tokens(len),
                    planned >> 20,
                    available >> 20
                );
                serde_json::json!({"len": len, "tokens": synthetic_tokens(len), "path": path,
                                   "plan_bytes": planned, "skipped": true})
            } else {
                let row = run_child(&args, len, path)?;
                let mib = |key: &str| row[key].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0);
                println!(
                    "{:>6} {path:>18} {:>13.0} {:>10.0} {:>7.2} {:>8.2}",
                    row["tokens"],
                    mib("measured_bytes"),
                    mib("plan_bytes"),
                    mib("plan_bytes") / mib("measured_bytes"),
                    row["seconds"].as_f64().unwrap_or(0.0)
                );
                row
            };
            println!("RESULT {row}");
            rows.push(row);
        }
    }
    summarise(&rows);
    Ok(())
}

/// The criteria over the measured points: peak growth per doubling with blocked+recompute, its step
/// time against the reference's where that ran, and the plan's error.
fn summarise(rows: &[serde_json::Value]) {
    let measured = |path: &str| -> Vec<&serde_json::Value> {
        rows.iter()
            .filter(|r| r["path"] == path && r["skipped"].is_null())
            .collect()
    };
    let blocked = measured("blocked+recompute");
    for pair in blocked.windows(2) {
        let growth = pair[1]["measured_bytes"].as_f64().unwrap_or(0.0)
            / pair[0]["measured_bytes"].as_f64().unwrap_or(1.0);
        println!(
            "blocked+recompute peak, {} -> {} tokens: x{growth:.2}",
            pair[0]["tokens"], pair[1]["tokens"]
        );
    }
    for reference in measured("reference") {
        if let Some(ours) = blocked.iter().find(|r| r["len"] == reference["len"]) {
            let ratio = ours["seconds"].as_f64().unwrap_or(0.0)
                / reference["seconds"].as_f64().unwrap_or(1.0);
            println!(
                "step time at {} tokens, blocked+recompute / reference: x{ratio:.2}",
                reference["tokens"]
            );
        }
    }
    let worst = rows
        .iter()
        .filter(|r| r["skipped"].is_null())
        .map(|r| {
            let plan = r["plan_bytes"].as_f64().unwrap_or(0.0);
            let measured = r["measured_bytes"].as_f64().unwrap_or(1.0);
            (plan / measured - 1.0).abs()
        })
        .fold(0.0f64, f64::max);
    println!("largest plan error: {:.0}%", worst * 100.0);
}

/// Runs one configuration in a fresh process and returns its `RESULT` object.
fn run_child(args: &Args, len: usize, path: &str) -> Result<serde_json::Value> {
    let mut command = Command::new(std::env::current_exe()?);
    command.args([
        "--child",
        &format!("{len}:{path}"),
        "--width",
        &args.width.to_string(),
        "--layers",
        &args.layers.to_string(),
    ]);
    run_measurement(command, &format!("{len}:{path}"))
}

/// The reduced Qwen2.5-VL text decoder: 16 heads over 2 key/value heads, an MLP 5.375 times the width (11008 /
/// 2048), tied embeddings, the Qwen2 tokenizer's vocabulary.
fn write_model_config(dir: &Path, width: usize, layers: usize) -> Result<PathBuf> {
    let config = serde_json::json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": 151936,
        "hidden_size": width,
        "intermediate_size": width * 43 / 8,
        "num_hidden_layers": layers,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": true,
        "torch_dtype": "float32",
    });
    let path = dir.join("config.json");
    std::fs::write(&path, serde_json::to_string_pretty(&config)?)?;
    Ok(path)
}

fn train_config(model_config: &Path, len: usize, recompute: Recompute) -> Result<TrainConfig> {
    let recompute = match recompute {
        Recompute::None => "none",
        Recompute::Layers => "layers",
    };
    let tokenizer =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/qwen2_prefix");
    Ok(toml::from_str(&format!(
        "init = '{}'\ntokenizer = '{}'\ntune = 'lora'\nmax_len = {len}\nnegatives = {NEGATIVES}\n\
         groups_per_batch = 1\nrecompute = '{recompute}'\nprecision = 'f32'",
        model_config.display(),
        tokenizer.display()
    ))?)
}

/// One measurement: build the model, train one step, report the resident high-water mark and the plan.
fn child(spec: &str, model_config: &Path) -> Result<()> {
    umrank::malloc::retain_freed_memory();
    let (len, path) = spec.split_once(':').context("child spec is LEN:PATH")?;
    let len: usize = len.parse()?;
    let (_, kernel, recompute) = PATHS
        .into_iter()
        .find(|(name, _, _)| *name == path)
        .with_context(|| format!("no path `{path}`"))?;
    let config = train_config(model_config, len, recompute)?;
    let baseline = status_kib("VmRSS")?;
    let mut model = TrainableReranker::build(&config, 0, &Device::Cpu)?;
    model.set_attention_kernel(kernel);
    let sequences = synthetic_group(len);
    let vars: Vec<_> = model.trainable().into_iter().map(|(_, v)| v).collect();
    let mut optimizer = AdamW::new(vars.clone(), config.adamw())?;
    let mut accumulator = GradAccumulator::new(vars);
    let clock = Instant::now();
    let tape = (recompute == Recompute::Layers).then(RecomputeTape::new);
    let logits = batch_logits(
        &model,
        None,
        &sequences,
        NEGATIVES + 1,
        BatchLayout::SharedPrefix,
        true,
        tape.as_ref(),
    )?;
    let report = group_loss(&config.objective_config()?, &logits.z_yes, &logits.z_no)?;
    let grads = match tape {
        Some(tape) => tape.backward(&report.loss)?,
        None => report.loss.backward()?,
    };
    accumulator.add(&grads)?;
    drop(grads);
    optimizer.step(&accumulator.take()?, 1e-4)?;
    let seconds = clock.elapsed().as_secs_f64();
    let measured = (status_kib("VmHWM")? - baseline) * 1024;
    let shape = ModelShape::read(model_config)?;
    let plan = umrank::plan::train::plan_on(&config, &shape, Target::Cpu, kernel);
    println!(
        "RESULT {}",
        serde_json::json!({
            "len": len,
            "path": path,
            "tokens": synthetic_tokens(len),
            "measured_bytes": measured,
            "plan_bytes": plan.peak_bytes(),
            "seconds": seconds,
        })
    );
    Ok(())
}

/// Tokens in the packed row of [`synthetic_group`]: the prefix once, then each sequence's own tokens.
fn synthetic_tokens(len: usize) -> usize {
    let prefix = SHARED_PREFIX.min(len / 2);
    prefix + (NEGATIVES + 1) * (len - prefix)
}

/// A group of 1 + NEGATIVES sequences of `len` tokens: a common prefix (as a group's prompts share their query),
/// then random ordinary tokens.
fn synthetic_group(len: usize) -> Vec<Sequence> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let prefix: Vec<u32> = (0..SHARED_PREFIX.min(len / 2))
        .map(|_| rng.random_range(1000..100_000))
        .collect();
    (0..=NEGATIVES)
        .map(|_| {
            let mut ids = prefix.clone();
            ids.extend((ids.len()..len).map(|_| rng.random_range(1000..100_000u32)));
            Sequence {
                ids,
                images: Vec::new(),
            }
        })
        .collect()
}
