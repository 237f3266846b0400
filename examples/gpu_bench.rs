//! GPU checks and benchmarks of the model layer, run on a borrowed GPU by `benches/gpu/run.sh`.
//!
//! `parity` loads the committed tiny checkpoints (the same files the parity tests match against transformers) on
//! the CPU and on the GPU and compares their outputs, so a CUDA-only fault in an op shows up as a number.
//! `train` times forward + backward + AdamW of a Qwen2.5-VL reranker built from a config alone (random weights,
//! no download), with LoRA on the decoder and the vision tower frozen, on one group of prompts that each carry an
//! image: the workload of the PyTorch figure in docs/performance.md#gpu-reference-figures. With `--recompute` each
//! decoder layer is recomputed in the backward pass (the PyTorch side's gradient checkpointing), which is what
//! lets the paper's 3200-token prompts train; attention runs on the blocked algorithm either way (on a GPU its
//! tensor-op tiles). It reports the device's peak memory where the backend tells it. `score` times inference
//! scoring of a batch of such pairs. `topk` (built with the `cuda` feature only) checks the miner's CUDA exact top-k
//! against the CPU's and times it (see gpu_bench/topk.rs). Every result is one JSON line on stdout. Everything but
//! `topk` also runs on the CPU with a tiny config, which is how it is tested before a GPU session.

#[cfg(feature = "cuda")]
#[path = "gpu_bench/topk.rs"]
mod topk;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::init::Init;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Optimizer, VarBuilder};
use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use umrank::device::DeviceSpec;
use umrank::models::adapters::lora::LoraConfig;
use umrank::models::decoder::{select_positions, Decoder};
use umrank::models::formats::hf_config::DecoderConfig;
use umrank::models::layers::recompute::RecomputeTape;
use umrank::models::qwen2_vl::config::VisionConfig;
use umrank::models::qwen2_vl::grid::ImageGrid;
use umrank::models::qwen2_vl::model::Qwen2VlModel;
use umrank::models::qwen2_vl::rope_index::MropeTokens;
use umrank::models::qwen2_vl::score::{score_batch, ImagePatches, PaddedBatch, ScoreInput};
use umrank::models::qwen2_vl::vision::VisionTransformer;
use umrank::models::text::tokenizer::AnswerIds;

#[derive(Parser)]
#[command(about = "GPU parity checks and model benchmarks (prints JSON lines)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Compare every tiny fixture's outputs on DEVICE against the CPU.
    Parity {
        /// tests/fixtures/models
        #[arg(long, default_value = "tests/fixtures/models")]
        fixtures: PathBuf,
        #[arg(long, default_value = "cuda")]
        device: DeviceSpec,
    },
    /// Time LoRA training steps on one group of image-text prompts.
    Train {
        #[command(flatten)]
        shape: Workload,
        /// Timed steps after one warm-up step.
        #[arg(long, default_value_t = 3)]
        steps: usize,
        /// Recompute each decoder layer in the backward pass instead of keeping its activations.
        #[arg(long)]
        recompute: bool,
    },
    /// Time inference scoring of one batch of image-text pairs.
    Score {
        #[command(flatten)]
        shape: Workload,
        #[arg(long, default_value_t = 3)]
        repeats: usize,
    },
    /// Check the CUDA exact top-k against the CPU miner, then time it on the shape of
    /// docs/performance.md#gpu-reference-figures.
    #[cfg(feature = "cuda")]
    Topk(topk::TopkArgs),
}

#[derive(clap::Args)]
struct Workload {
    /// A Qwen2-VL / Qwen2.5-VL config.json; weights are random.
    #[arg(long)]
    config: PathBuf,
    #[arg(long, default_value = "cuda")]
    device: DeviceSpec,
    /// bf16 or f32.
    #[arg(long, default_value = "bf16")]
    dtype: String,
    /// Prompts per step (a group of 1 positive + 16 negatives is 17).
    #[arg(long, default_value_t = 17)]
    batch: usize,
    /// Image side in pixels (a multiple of 28).
    #[arg(long, default_value_t = 448)]
    image_side: usize,
    /// Text tokens per prompt besides the image placeholders.
    #[arg(long, default_value_t = 63)]
    text_tokens: usize,
    /// LoRA rank on the decoder's seven projections.
    #[arg(long, default_value_t = 16)]
    lora_rank: usize,
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Parity { fixtures, device } => parity(&fixtures, &device.candle()?),
        Command::Train {
            shape,
            steps,
            recompute,
        } => train(&shape, steps, recompute),
        Command::Score { shape, repeats } => score(&shape, repeats),
        #[cfg(feature = "cuda")]
        Command::Topk(args) => topk::run(&args),
    }
}

fn emit(line: Value) {
    println!("{line}");
}

fn parity(fixtures: &Path, device: &Device) -> Result<()> {
    let mut worst = 0f64;
    for name in ["qwen2_vl", "qwen2_5_vl"] {
        let dir = fixtures.join("vlm").join(name);
        let cpu = Qwen2VlModel::from_model_dir(&dir, DType::F32, &Device::Cpu)?;
        let gpu = Qwen2VlModel::from_model_dir(&dir, DType::F32, device)?;
        let err = vl_parity(&cpu, &gpu, device)?;
        emit(json!({"check": "parity", "model": name, "max_rel_err": err}));
        worst = worst.max(err);
    }
    for name in ["qwen2", "qwen3", "llama"] {
        let dir = fixtures.join(name);
        let cpu = Decoder::from_model_dir(&dir, DType::F32, &Device::Cpu)?;
        let gpu = Decoder::from_model_dir(&dir, DType::F32, device)?;
        let err = text_parity(&cpu, &gpu)?;
        emit(json!({"check": "parity", "model": name, "max_rel_err": err}));
        worst = worst.max(err);
    }
    emit(json!({"check": "parity", "model": "all", "max_rel_err": worst, "pass": worst < 1e-4}));
    if worst >= 1e-4 {
        bail!("GPU outputs differ from the CPU's by {worst:e}");
    }
    Ok(())
}

/// Hidden states of two image-text prompts of different lengths, padded together.
fn vl_parity(cpu: &Qwen2VlModel, gpu: &Qwen2VlModel, device: &Device) -> Result<f64> {
    let grid = ImageGrid { t: 1, h: 4, w: 8 };
    let config = cpu.vision_config();
    let prompts = [
        image_prompt(cpu.tokens(), grid, 7, 3),
        image_prompt(cpu.tokens(), grid, 4, 11),
    ];
    let pixels = seeded(&[2 * grid.t * grid.h * grid.w, config.patch_dim()], 1)?;
    let run = |model: &Qwen2VlModel, device: &Device| -> Result<Vec<f32>> {
        let pixels = pixels.to_device(device)?;
        let per_image = grid.t * grid.h * grid.w;
        let images: Vec<ImagePatches> = (0..2)
            .map(|i| -> Result<ImagePatches> {
                Ok(ImagePatches {
                    pixels: pixels.narrow(0, i * per_image, per_image)?,
                    grid,
                })
            })
            .collect::<Result<_>>()?;
        let inputs: Vec<ScoreInput> = prompts
            .iter()
            .zip(images.chunks(1))
            .map(|(ids, images)| ScoreInput { ids, images })
            .collect();
        let batch = PaddedBatch::new(&inputs, 0)?;
        let hidden = model.forward(&batch.as_vl(), false)?;
        Ok(hidden.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
    };
    Ok(max_rel_err(&run(gpu, device)?, &run(cpu, &Device::Cpu)?))
}

fn text_parity(cpu: &Decoder, gpu: &Decoder) -> Result<f64> {
    let ids: Vec<Vec<u32>> = vec![
        (0..9).map(|i| 3 + 7 * i).collect(),
        (0..5).map(|i| 5 + 11 * i).collect(),
    ];
    let inputs: Vec<ScoreInput> = ids
        .iter()
        .map(|ids| ScoreInput { ids, images: &[] })
        .collect();
    let batch = PaddedBatch::new(&inputs, 0)?;
    let run = |model: &Decoder| -> Result<Vec<f32>> {
        use umrank::models::qwen2_vl::score::HiddenStates;
        let hidden = model.hidden_states(&batch, false)?;
        Ok(hidden.flatten_all()?.to_dtype(DType::F32)?.to_vec1()?)
    };
    Ok(max_rel_err(&run(gpu)?, &run(cpu)?))
}

/// Largest element error relative to the reference's largest magnitude: robust to near-zero elements.
fn max_rel_err(got: &[f32], want: &[f32]) -> f64 {
    let scale = want
        .iter()
        .fold(0f64, |m, &v| m.max(f64::from(v).abs()))
        .max(1e-12);
    let diff = got
        .iter()
        .zip(want)
        .fold(0f64, |m, (&a, &b)| m.max(f64::from(a - b).abs()));
    if got.len() != want.len() {
        return f64::INFINITY;
    }
    diff / scale
}

/// `text` ordinary tokens, one image's placeholders, then `tail` more tokens.
fn image_prompt(tokens: &MropeTokens, grid: ImageGrid, text: usize, tail: usize) -> Vec<u32> {
    let merged = grid.t * grid.h * grid.w / (tokens.spatial_merge_size * tokens.spatial_merge_size);
    let word = |i: usize| 100 + (i * 37 % 5000) as u32;
    let mut ids: Vec<u32> = (0..text).map(word).collect();
    ids.push(tokens.vision_start_token_id);
    ids.extend(std::iter::repeat_n(tokens.image_token_id, merged));
    ids.push(tokens.vision_start_token_id + 1);
    ids.extend((text..text + tail).map(word));
    ids
}

/// Deterministic values in [-1, 1) that do not depend on the device's random generator.
fn seeded(shape: &[usize], seed: u64) -> Result<Tensor> {
    let n: usize = shape.iter().product();
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let values: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect();
    Ok(Tensor::from_vec(values, shape, &Device::Cpu)?)
}

/// Frozen random weights for a model built from its config alone: plain tensors, not `Var`s, so the backward
/// pass tracks only the LoRA adapters, as with a loaded checkpoint.
struct RandomFrozen;

impl SimpleBackend for RandomFrozen {
    fn get(
        &self,
        shape: Shape,
        _: &str,
        _: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        Tensor::randn(0f32, 0.02, shape, device)?.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("{name}: a random model has no shape for an unchecked tensor")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

struct Bench {
    model: Qwen2VlModel,
    batch: PaddedBatch,
    device: Device,
    tokens: usize,
}

fn build(shape: &Workload) -> Result<Bench> {
    let device = shape.device.candle()?;
    let dtype = match shape.dtype.as_str() {
        "bf16" => DType::BF16,
        "f32" => DType::F32,
        other => bail!("--dtype {other}: expected bf16 or f32"),
    };
    let text = std::fs::read_to_string(&shape.config)
        .with_context(|| format!("{}", shape.config.display()))?;
    let json: Value = serde_json::from_str(&text)?;
    let decoder_config = DecoderConfig::from_json(&json, &shape.config)?;
    let vision_config = VisionConfig::from_model_config(&json)?;
    let id = |key: &str| {
        json[key]
            .as_u64()
            .map(|v| v as u32)
            .with_context(|| format!("config lacks {key}"))
    };
    let tokens = MropeTokens {
        image_token_id: id("image_token_id")?,
        vision_start_token_id: id("vision_start_token_id")?,
        spatial_merge_size: vision_config.spatial_merge_size,
    };
    let vb = VarBuilder::from_backend(Box::new(RandomFrozen), dtype, device.clone());
    let vision = VisionTransformer::new(&vision_config, vb.pp("visual"))?;
    let decoder = Decoder::new(&decoder_config, vb)?;
    let model = Qwen2VlModel::new(decoder, vision, tokens);

    let side = shape.image_side / vision_config.patch_size;
    let grid = ImageGrid {
        t: 1,
        h: side,
        w: side,
    };
    let patches = grid.h * grid.w;
    let prompt = image_prompt(
        &tokens,
        grid,
        shape.text_tokens / 2,
        shape.text_tokens - shape.text_tokens / 2,
    );
    let pixels = Tensor::randn(
        0f32,
        1.0,
        (shape.batch * patches, vision_config.patch_dim()),
        &device,
    )?
    .to_dtype(dtype)?;
    let images: Vec<ImagePatches> = (0..shape.batch)
        .map(|i| -> Result<ImagePatches> {
            Ok(ImagePatches {
                pixels: pixels.narrow(0, i * patches, patches)?,
                grid,
            })
        })
        .collect::<Result<_>>()?;
    let inputs: Vec<ScoreInput> = images
        .chunks(1)
        .map(|images| ScoreInput {
            ids: &prompt,
            images,
        })
        .collect();
    let batch = PaddedBatch::new(&inputs, 0)?;
    let tokens_total = prompt.len() * shape.batch;
    emit(
        json!({"event": "built", "params_decoder_layers": decoder_config.num_hidden_layers,
        "tokens_per_seq": prompt.len(), "image_tokens_per_seq": patches / 4, "batch": shape.batch}),
    );
    Ok(Bench {
        model,
        batch,
        device,
        tokens: tokens_total,
    })
}

/// Yes/no ids of the Qwen2 vocabulary (docs/method.md#yes-and-no-logits); random weights make any two rows equivalent
/// for timing.
fn answers(model: &Qwen2VlModel) -> AnswerIds {
    let vocab = model.decoder().config().vocab_size as u32;
    AnswerIds {
        yes: 9693.min(vocab - 1),
        no: 2152.min(vocab - 2),
    }
}

fn train(shape: &Workload, steps: usize, recompute: bool) -> Result<()> {
    let mut bench = build(shape)?;
    let lora = LoraConfig {
        r: shape.lora_rank,
        alpha: 2.0 * shape.lora_rank as f64,
        dropout: 0.0,
        ..LoraConfig::default()
    };
    let adapters = bench.model.decoder_mut().add_lora(&lora, 0)?;
    let vars = bench.model.decoder().lora_vars();
    let mut optimizer = candle_nn::AdamW::new_lr(vars, 1e-4)?;
    let answers = answers(&bench.model);
    let mut times = Vec::new();
    for step in 0..=steps {
        bench.device.synchronize()?;
        let start = Instant::now();
        let tape = recompute.then(RecomputeTape::new);
        let hidden = bench
            .model
            .forward_on(&bench.batch.as_vl(), true, tape.as_ref())?;
        let logits = bench
            .model
            .decoder()
            .token_logits(
                &select_positions(&hidden, &bench.batch.last)?,
                &[answers.yes, answers.no],
            )?
            .to_dtype(DType::F32)?;
        let loss = sft_loss(&logits.narrow(1, 0, 1)?, &logits.narrow(1, 1, 1)?)?;
        let grads = match tape {
            Some(tape) => tape.backward(&loss)?,
            None => loss.backward()?,
        };
        optimizer.step(&grads)?;
        bench.device.synchronize()?;
        let seconds = start.elapsed().as_secs_f64();
        emit(
            json!({"event": "step", "step": step, "seconds": seconds, "loss": loss.to_scalar::<f32>()?}),
        );
        if step > 0 {
            times.push(seconds);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    emit(
        json!({"bench": "train_lora", "config": shape.config, "dtype": shape.dtype, "batch": shape.batch,
        "adapters": adapters, "image_side": shape.image_side, "recompute": recompute,
        "tokens_per_seq": bench.tokens / shape.batch, "step_seconds": mean,
        "seq_per_s": shape.batch as f64 / mean, "tokens_per_s": bench.tokens as f64 / mean}),
    );
    Ok(())
}

/// Pointwise SFT loss of a group whose first prompt is the positive (docs/method.md#sft), summed over its documents.
fn sft_loss(z_yes: &Tensor, z_no: &Tensor) -> Result<Tensor> {
    let (z_yes, z_no) = (z_yes.flatten_all()?, z_no.flatten_all()?);
    let n = z_yes.dim(0)?;
    let mut signs = vec![-1f32; n];
    signs[0] = 1.0;
    let signs = Tensor::new(signs.as_slice(), z_yes.device())?;
    let margin = ((&z_yes - &z_no)? * signs)?;
    let softplus = (margin.neg()?.exp()? + 1.0)?.log()?;
    Ok(softplus.sum_all()?)
}

fn score(shape: &Workload, repeats: usize) -> Result<()> {
    let bench = build(shape)?;
    let answers = answers(&bench.model);
    let mut times = Vec::new();
    for repeat in 0..=repeats {
        bench.device.synchronize()?;
        let start = Instant::now();
        let scores = score_batch(&bench.model, &bench.batch, answers, false)?;
        let _ = scores.to_vec()?;
        let seconds = start.elapsed().as_secs_f64();
        if repeat > 0 {
            times.push(seconds);
        }
    }
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    emit(
        json!({"bench": "score", "config": shape.config, "dtype": shape.dtype, "batch": shape.batch,
        "batch_seconds": mean, "pairs_per_s": shape.batch as f64 / mean}),
    );
    Ok(())
}
