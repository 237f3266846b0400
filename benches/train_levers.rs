//! The training speed levers of issue 6 against the plain path, on the CPU: each lever alone (vision cache,
//! packing, shared prefix) and all three together, timed over real optimizer steps of the `train` loop (prompts,
//! forward, backward, AdamW) on the same data, in one process, one variant after the other.
//!
//! The config is small: the tiny Qwen2-VL model (LoRA r 16, the default recipe; `--tune full` trains every weight
//! and the LM head, as the demo's from-scratch rerankers do), groups of 1 + 7 from the demo
//! world with random negatives, 2 groups per step, images of 56 and then 112 px. The prompt's shared part (system
//! turn, instruction, query and its image) is most of each prompt, as in a reranker corpus.
//!
//!     cargo bench --bench train_levers -- [--steps 8] [--rounds 2] [--sides 56,112] [--tune lora|full]
//!         [--retain-freed-memory]
//!
//! `--retain-freed-memory` applies the allocator setting the `umrank` binary uses (see `umrank::malloc`); without
//! it the process keeps glibc's defaults, so two runs, one with and one without, measure that lever too
//! (`benches/all.py` does). Each variant's figure is also printed as a `RESULT {json}` line for scripts.
//!
//! (`cargo test --release --bench train_levers` runs the same program with the test build.) Throughput is
//! sequences per second over the timed steps, after one untimed warm-up step per variant, the best of a few
//! rounds over all variants; wall-clock figures move with whatever else the machine is running.

/// The dataset readers `train_data` reads the ingested world with; the bench needs only those.
#[allow(dead_code)]
#[path = "../tests/it/common/datasets.rs"]
mod datasets;
#[path = "../tests/it/common/train_data.rs"]
mod train_data;

use std::path::Path;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Parser;
use train_data::{demo_data, tokenizer_dir, DemoData, GroupsConfig};
use umrank::dataset::Dataset;
use umrank::train::{prepare, train_prepared, RunSettings, TrainConfig, TrainInputs};
use umrank::world::WorldSize;

#[derive(Parser)]
struct Args {
    /// Timed optimizer steps per variant (after one warm-up step).
    #[arg(long, default_value_t = 8)]
    steps: u64,
    /// Rounds over all variants; each variant's best round is reported (the machine is shared).
    #[arg(long, default_value_t = 2)]
    rounds: usize,
    /// Image sides in pixels, one world each.
    #[arg(long, value_delimiter = ',', default_value = "56,112")]
    sides: Vec<u32>,
    /// What trains: `lora` (the default recipe) or `full` (every weight and the LM head, as the demo's
    /// from-scratch rerankers train).
    #[arg(long, default_value = "lora", value_parser = ["lora", "full"])]
    tune: String,
    /// Keep freed memory in the process, as the `umrank` binary does.
    #[arg(long)]
    retain_freed_memory: bool,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

const NEGATIVES: usize = 7;

/// A variant: its name and its lever keys.
const VARIANTS: [(&str, &str); 5] = [
    (
        "plain (padded, no cache, no shared prefix)",
        "packing = false\nvision_cache = false\nshared_prefix = false",
    ),
    (
        "vision cache",
        "packing = false\nvision_cache = true\nshared_prefix = false",
    ),
    (
        "packing",
        "packing = true\nvision_cache = false\nshared_prefix = false",
    ),
    (
        "shared prefix (its row is packed)",
        "packing = false\nvision_cache = false\nshared_prefix = true",
    ),
    (
        "all three (the default)",
        "packing = true\nvision_cache = true\nshared_prefix = true",
    ),
];

fn main() -> Result<()> {
    let args = Args::parse();
    if args.retain_freed_memory {
        umrank::malloc::retain_freed_memory();
    }
    describe_machine(args.retain_freed_memory);
    let tuning = match args.tune.as_str() {
        "full" => "tune = 'full'\ntrain_lm_head = true",
        _ => "tune = 'lora'",
    };
    let tmp = tempfile::tempdir()?;
    for &side in &args.sides {
        let data = demo_data(
            &tmp.path().join(format!("world-{side}")),
            WorldSize::Small,
            side,
            GroupsConfig {
                datasets: vec![],
                negatives: NEGATIVES,
                split: "train".into(),
            },
            11,
        );
        println!(
            "\n{side} px images, {} tuning, groups of 1 + {NEGATIVES}, 2 groups per step, {} timed steps, best of {} \
             rounds:",
            args.tune, args.steps, args.rounds
        );
        let mut best = [0f64; VARIANTS.len()];
        let mut tokens = 0;
        for _ in 0..args.rounds {
            for (k, (_, keys)) in VARIANTS.iter().enumerate() {
                let out = tmp.path().join(format!("run-{side}"));
                let keys = format!("{tuning}\n{keys}");
                let (seq_per_s, step_tokens) = measure(&data, &keys, args.steps, &out)?;
                best[k] = best[k].max(seq_per_s);
                tokens = step_tokens;
                std::fs::remove_dir_all(&out).ok();
            }
        }
        for ((name, _), seq_per_s) in VARIANTS.iter().zip(best) {
            println!(
                "  {name:<44} {seq_per_s:>7.1} seq/s  x{:.2} vs plain",
                seq_per_s / best[0]
            );
            println!(
                "RESULT {}",
                serde_json::json!({"side": side, "tune": args.tune, "variant": name, "seq_per_s": seq_per_s})
            );
        }
        println!("  ({tokens} prompt tokens per step)");
    }
    Ok(())
}

/// Trains `steps + 1` steps with the lever `keys` and returns the sequences per second of all but the first, and
/// the prompt tokens of a step.
fn measure(data: &DemoData, keys: &str, steps: u64, out: &Path) -> Result<(f64, u64)> {
    let config: TrainConfig = toml::from_str(&format!(
        "init = 'tiny'\ntokenizer = '{}'\nmax_len = 1024\ngroups_per_batch = 2\ncheckpoint_every = 0\n\
         negatives = {NEGATIVES}\nmax_steps = {}\n{keys}",
        tokenizer_dir().display(),
        steps + 1
    ))?;
    let inputs = TrainInputs {
        groups: Dataset::open(&data.shards.join("sft"))?,
        corpus: None,
        images: Some(Dataset::open(&data.ingest.join("images"))?),
    };
    let device = Device::Cpu;
    let prepared = prepare(&config, &inputs, 3, &device)?;
    let settings = RunSettings {
        seed: 3,
        device,
        out_dir: out.to_path_buf(),
        run_key: "train-levers".into(),
        stop_after: None,
    };
    let (outcome, _) = train_prepared(&config, prepared, &settings)?;
    let timed = outcome.timing.get(1..).context("no timed steps")?;
    let sequences = (2 * (NEGATIVES + 1)) as f64;
    let seconds: f64 = timed.iter().map(|row| sequences / row.seq_per_s).sum();
    let tokens = timed.first().map_or(0, |row| {
        (row.tokens_per_s * sequences / row.seq_per_s).round() as u64
    });
    Ok((sequences * timed.len() as f64 / seconds, tokens))
}

/// The machine the figures come from.
fn describe_machine(retain_freed_memory: bool) {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let threads = std::env::var("CANDLE_NUM_THREADS").unwrap_or_else(|_| "unset".into());
    let allocator = if retain_freed_memory {
        "freed memory retained"
    } else {
        "glibc defaults"
    };
    println!(
        "train levers on {cpu}, {cores} cores available, CANDLE_NUM_THREADS={threads}, allocator: {allocator}; \
         every variant in this one process, one after the other"
    );
}
