//! Peak memory of a real checkpoint, SmolLM2-135M-Instruct: one LoRA training step and an eval's scoring pass
//! (issue 17). `benches/smollm2_vs_peft.py` runs this beside transformers + peft on the same weights and tokens.
//!
//! The model directory is SmolLM2's GGUF (Q4_1) dequantised to f32 by transformers and written as safetensors,
//! config.json and tokenizer.json (the script does that), so that both sides train the same numbers. The step is
//! the train stage's: groups of 1 + 4 reranker prompts (docs/method.md#prompt-layout: system turn, instruction,
//! query, document) cut to 128 tokens by the prompt builder, 4 groups per micro-batch, LoRA r 16 on the seven
//! projections with dropout, f32, the SFT objective (the stage's default), backward, gradient clipping and AdamW,
//! under the config the stage would run: `default` is the default levers (shared prefix, packing, layer
//! recomputation: a `model` checkpoint's default), `plain` adds `--no-shared-prefix --no-packing` (padded rows,
//! recomputation still on). `eval` loads the model with the adapter the `default` step wrote, as the eval stage
//! does, and scores pairs of the same prompts a batch at a time.
//!
//! Each measurement runs in a process of its own, so the kernel's high-water mark of the process's resident
//! memory (`VmHWM`) is that measurement's: the figure is the high-water mark minus the resident memory before the
//! model was built. Each child also reports the high-water mark after each phase, and the memory plan's estimate
//! of the same config (`umrank run --plan`) part by part, so a regression shows where it is.
//!
//!     cargo bench --bench smollm2_memory -- --model DIR [--prompts-out FILE] [--adapter DIR] [--eval-pairs 80]
//!
//! `--prompts-out` writes the token ids of the step's prompts and of the scored pairs, and the yes/no ids, for the
//! peer to run on the same tokens; `--adapter` keeps the step's adapter for the peer to score with. Each
//! measurement is printed as a `RESULT {json}` line for scripts.

#[path = "common/lora_step.rs"]
mod lora_step;
#[path = "common/measure.rs"]
mod measure;
#[path = "common/smollm2_prompts.rs"]
mod smollm2_prompts;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result};
use candle_core::Device;
use clap::Parser;
use serde_json::{json, Value};
use umrank::models::reranker::{PairSide, Reranker};
use umrank::models::text::tokenizer::Tokenizer;
use umrank::plan::{ModelShape, Target};
use umrank::train::TrainConfig;

use lora_step::{LoraStepper, Phase};
use measure::{run_measurement, status_kib};
use smollm2_prompts::{prompts, Texts, INSTRUCTION};

#[derive(Parser)]
struct Args {
    /// The f32 model directory (config.json, model.safetensors, tokenizer.json).
    #[arg(long)]
    model: PathBuf,
    /// Groups per micro-batch.
    #[arg(long, default_value_t = 4)]
    groups: usize,
    /// Negatives per group.
    #[arg(long, default_value_t = 4)]
    negatives: usize,
    /// Longest prompt in tokens.
    #[arg(long, default_value_t = 128)]
    max_len: usize,
    /// Pairs the eval measurement scores (the peak must not grow with them).
    #[arg(long, default_value_t = 80)]
    eval_pairs: usize,
    /// Pairs per forward pass in the eval measurement (the eval stage's default).
    #[arg(long, default_value_t = 8)]
    eval_batch: usize,
    /// Also write the prompts (token ids of the training step's and of the eval's) and the yes/no ids to this
    /// JSON file.
    #[arg(long)]
    prompts_out: Option<PathBuf>,
    /// Where the `default` step writes its adapter (PEFT format), which the eval loads [default: a temporary
    /// directory].
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// Internal: run one measurement in this process (`default`, `plain` or `eval`).
    #[arg(long, hide = true)]
    child: Option<String>,
    /// Passed by `cargo bench`; ignored.
    #[arg(long, hide = true)]
    bench: bool,
}

/// The training measurements: a name and the lever keys it adds to the stage's defaults.
const LEVERS: [(&str, &str); 2] = [
    ("default", ""),
    ("plain", "shared_prefix = false\npacking = false"),
];

fn main() -> Result<()> {
    let args = Args::parse();
    match args.child.as_deref() {
        Some("eval") => return eval_child(&args),
        Some(levers) => return train_child(&args, levers),
        None => {}
    }
    let tokenizer = Tokenizer::from_dir(&args.model)?;
    let per_group = args.negatives + 1;
    let step = prompts(&tokenizer, args.groups * per_group, per_group, args.max_len)?;
    if let Some(path) = &args.prompts_out {
        let answers = tokenizer.yes_no_ids()?;
        let file = json!({
            "groups": args.groups,
            "per_group": per_group,
            "ids": step,
            "eval_ids": prompts(&tokenizer, args.eval_pairs, per_group, args.max_len)?,
            "eval_batch": args.eval_batch,
            "yes": answers.yes,
            "no": answers.no,
        });
        std::fs::write(path, serde_json::to_string(&file)?)?;
    }
    let lengths: Vec<usize> = step.iter().map(Vec::len).collect();
    println!(
        "SmolLM2-135M ({}), {} groups x (1 + {}) prompts of {}-{} tokens, LoRA r 16, f32",
        args.model.display(),
        args.groups,
        args.negatives,
        lengths.iter().min().unwrap_or(&0),
        lengths.iter().max().unwrap_or(&0)
    );
    let scratch = tempfile::tempdir()?;
    let adapter = args
        .adapter
        .clone()
        .unwrap_or_else(|| scratch.path().join("adapter"));
    for child in ["default", "plain", "eval"] {
        let row = run_child(&args, child, &adapter)?;
        let mib = |key: &str| row[key].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0);
        println!(
            "{child:>8}: peak {:.0} MiB above the start (plan {:.0} MiB), {:.1} s; high-water mark by phase: {}",
            mib("measured_bytes"),
            mib("plan_bytes"),
            row["seconds"].as_f64().unwrap_or(0.0),
            row["phases"]
        );
        println!("RESULT {row}");
    }
    Ok(())
}

/// Runs one measurement in a fresh process and returns its `RESULT` object.
fn run_child(args: &Args, child: &str, adapter: &Path) -> Result<Value> {
    let mut command = Command::new(std::env::current_exe()?);
    command
        .arg("--model")
        .arg(&args.model)
        .arg("--adapter")
        .arg(adapter)
        .args([
            "--child",
            child,
            "--groups",
            &args.groups.to_string(),
            "--negatives",
            &args.negatives.to_string(),
            "--max-len",
            &args.max_len.to_string(),
            "--eval-pairs",
            &args.eval_pairs.to_string(),
            "--eval-batch",
            &args.eval_batch.to_string(),
        ]);
    run_measurement(command, child)
}

/// The train stage's config for the model directory with `levers` added to its defaults.
fn train_config(args: &Args, levers: &str) -> Result<TrainConfig> {
    Ok(toml::from_str(&format!(
        "model = '{}'\ngroups_per_batch = {}\nnegatives = {}\nmax_len = {}\n{levers}",
        args.model.display(),
        args.groups,
        args.negatives,
        args.max_len
    ))?)
}

/// One training step as `Trainer::train_step` runs it (one micro-batch), with the resident high-water mark after
/// building the model, after the forward pass, after the backward pass and after the optimizer step.
fn train_child(args: &Args, name: &str) -> Result<()> {
    umrank::malloc::retain_freed_memory();
    let (_, levers) = LEVERS
        .into_iter()
        .find(|(lever, _)| *lever == name)
        .with_context(|| format!("no measurement `{name}`"))?;
    let config = train_config(args, levers)?;
    let baseline = status_kib("VmRSS")?;
    let above = |field: &str| -> Result<u64> { Ok((status_kib(field)? - baseline) * 1024) };
    let mut stepper = LoraStepper::build(config.clone())?;
    let built = above("VmRSS")?;
    let per_group = args.negatives + 1;
    let ids = prompts(
        stepper.model.tokenizer(),
        args.groups * per_group,
        per_group,
        args.max_len,
    )?;
    let mut phases = serde_json::Map::new();
    phases.insert("built".into(), json!(built));
    let clock = Instant::now();
    let stepped = stepper.step(&ids, per_group, |phase| {
        let name = match phase {
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Step => "step",
        };
        phases.insert(name.into(), json!(above("VmHWM")?));
        Ok(())
    })?;
    let seconds = clock.elapsed().as_secs_f64();
    let measured = above("VmHWM")?;
    if name == "default" {
        if let Some(dir) = &args.adapter {
            stepper.model.save_adapter(dir)?;
        }
    }
    let shape = ModelShape::read(&args.model.join("config.json"))?;
    let plan = umrank::plan::train::plan(&config, &shape, Target::Cpu);
    println!(
        "RESULT {}",
        json!({
            "measurement": name,
            "tokens": stepped.tokens,
            "loss": stepped.loss,
            "grad_norm": stepped.grad_norm,
            "measured_bytes": measured,
            "phases": phases,
            "plan_bytes": plan.peak_bytes(),
            "plan": parts(&plan),
            "seconds": seconds,
        })
    );
    Ok(())
}

/// Scoring as the eval stage does it: the model with the trained adapter, pairs a batch at a time, keeping only
/// the scores. The weights figure is the resident memory the loaded model added.
fn eval_child(args: &Args) -> Result<()> {
    umrank::malloc::retain_freed_memory();
    let adapter = args
        .adapter
        .as_deref()
        .context("the eval child needs --adapter")?;
    let baseline = status_kib("VmRSS")?;
    let above = |field: &str| -> Result<u64> { Ok((status_kib(field)? - baseline) * 1024) };
    let reranker = Reranker::load(&args.model, Some(adapter), &Device::Cpu)?;
    let loaded = above("VmRSS")?;
    let texts = Texts::new(args.eval_pairs, args.negatives + 1);
    let clock = Instant::now();
    let mut scores = Vec::with_capacity(args.eval_pairs);
    let mut first_batch = 0;
    for pairs in texts.pairs.chunks(args.eval_batch) {
        let mut prepared = Vec::with_capacity(pairs.len());
        for (query, document) in pairs {
            let side = |text| PairSide {
                text: Some(text),
                image: None,
            };
            prepared.push(reranker.prompt(
                INSTRUCTION,
                side(query),
                side(document),
                args.max_len,
            )?);
        }
        scores.extend(reranker.score(&prepared, args.eval_batch)?);
        if first_batch == 0 {
            first_batch = above("VmHWM")?;
        }
    }
    let seconds = clock.elapsed().as_secs_f64();
    let measured = above("VmHWM")?;
    let shape = ModelShape::read(&args.model.join("config.json"))?;
    let plan = umrank::plan::inference::eval_plan(
        &shape,
        true,
        args.eval_batch as u64,
        args.max_len as u64,
        Target::Cpu,
    );
    println!(
        "RESULT {}",
        json!({
            "measurement": "eval",
            "pairs": scores.len(),
            "batch": args.eval_batch,
            "measured_bytes": measured,
            "phases": {"loaded": loaded, "first_batch": first_batch, "all_batches": measured},
            "plan_bytes": plan.peak_bytes(),
            "plan": parts(&plan),
            "seconds": seconds,
        })
    );
    Ok(())
}

fn parts(plan: &umrank::plan::MemoryPlan) -> Value {
    plan.parts
        .iter()
        .map(|part| (part.name.to_string(), json!(part.bytes)))
        .collect::<serde_json::Map<_, _>>()
        .into()
}
