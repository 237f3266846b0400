//! The memory plans of stages that run a model without training it: eval (reranker scoring) and embed (GME).
//! Nothing is kept for a backward pass, so besides the weights a batch costs its hidden states and one layer's
//! working set at a time, the attention kernel's buffers and the batch's images.

use std::path::Path;

use super::footprint::{self, Widths};
use super::shape::ModelShape;
use super::train::Target;
use super::{halvings, MemoryPlan, Part, PlanContext, PlanError, Verdict};
use crate::eval::EvalConfig;
use crate::models::adapters::lora::DECODER_TARGETS;

/// Pixel bounds of a model directory without a `preprocessor_config.json` (docs/method.md#image-bounds).
const DEFAULT_MAX_PIXELS: u64 = 1280 * 28 * 28;
/// The LoRA rank assumed for an adapter the plan cannot read yet (the train recipe's).
const ASSUMED_RANK: u64 = 16;
/// Text tokens planned per embedded input besides its image: GME inputs are records' texts and instructions.
const EMBED_TEXT_TOKENS: u64 = 512;

/// A batch of a scoring or embedding pass.
#[derive(Debug, Clone, Copy)]
pub struct Batch {
    /// Inputs per forward pass (pairs for scoring).
    pub inputs: u64,
    /// Tokens of the longest input.
    pub tokens: u64,
    /// Images per input at most.
    pub images: u64,
}

/// The plan of reranking with `shape` (plus a LoRA adapter when `adapter`) in batches of `batch` pairs of up to
/// `max_len` tokens.
pub fn eval_plan(
    shape: &ModelShape,
    adapter: bool,
    batch: u64,
    max_len: u64,
    target: Target,
) -> MemoryPlan {
    let mut plan = pass_plan(
        shape,
        Batch {
            inputs: batch,
            tokens: max_len,
            images: 2,
        },
        target,
    );
    if adapter {
        let all: Vec<String> = DECODER_TARGETS.iter().map(|t| t.to_string()).collect();
        let params = shape.decoder.lora_params(ASSUMED_RANK, &all);
        plan.add(Part::new(
            "adapter",
            params * Widths::of(model_bytes(target)).adapter,
        ));
        plan.notes.push(format!(
            "the adapter is planned at rank {ASSUMED_RANK} on the seven projections"
        ));
    }
    plan
}

/// The plan of embedding with GME (a Qwen2-VL model) in batches of `batch` inputs.
pub fn embed_plan(shape: &ModelShape, batch: u64, model_bytes: u64, target: Target) -> MemoryPlan {
    let image_tokens = shape
        .vision
        .as_ref()
        .map_or(0, |v| v.max_merged_tokens(DEFAULT_MAX_PIXELS));
    let mut plan = pass_plan_with(
        shape,
        Batch {
            inputs: batch,
            tokens: image_tokens + EMBED_TEXT_TOKENS,
            images: 1,
        },
        target,
        model_bytes,
    );
    plan.notes.push(format!(
        "each input planned at one image of {image_tokens} tokens and {EMBED_TEXT_TOKENS} text tokens"
    ));
    plan
}

/// Scoring runs bf16 on CUDA and f32 on the CPU (`crate::models::reranker::Reranker::load`).
fn model_bytes(target: Target) -> u64 {
    match target {
        Target::Cpu => 4,
        Target::Cuda => 2,
    }
}

fn pass_plan(shape: &ModelShape, batch: Batch, target: Target) -> MemoryPlan {
    pass_plan_with(shape, batch, target, model_bytes(target))
}

fn pass_plan_with(
    shape: &ModelShape,
    batch: Batch,
    target: Target,
    model_bytes: u64,
) -> MemoryPlan {
    let w = Widths::of(model_bytes);
    let d = &shape.decoder;
    let tokens = batch.inputs * batch.tokens;
    let attention = match target {
        Target::Cpu => tokens * footprint::blocked_attention_forward(d, w),
        Target::Cuda => {
            tokens * footprint::blocked_attention_forward(d, w)
                + footprint::device_attention_tiles(batch.inputs, d.heads)
        }
    };
    let images = shape.vision.as_ref().map_or(0, |vision| {
        let patches = batch.inputs * batch.images * vision.max_patches(DEFAULT_MAX_PIXELS);
        patches * (vision.patch_dim * 4 + footprint::vision_block_inference(vision, w))
    });
    MemoryPlan::new(vec![
        Part::new("weights", shape.params() * w.model),
        Part::new(
            "activations",
            tokens * (2 * d.hidden * w.model + footprint::decoder_layer_inference(d, w)),
        ),
        Part::new("attention_workspace", attention),
        Part::new("image_buffers", images),
    ])
}

/// The plan of an eval stage checked against the device, with a smaller batch or shorter prompts as fixes.
pub fn eval_verdict(config: &EvalConfig, ctx: &PlanContext) -> Result<Verdict, PlanError> {
    let model = match (&config.model, &config.model_from) {
        (Some(model), _) => model.clone(),
        (None, Some(stage)) => (ctx.stage_dir)(stage).join(crate::schema::outputs::train::MODEL),
        (None, None) => return Err(PlanError::Unplannable("no model given".into())),
    };
    if !model.is_dir() && model.extension().is_some_and(|e| e == "gguf") {
        return Err(PlanError::Unplannable(format!(
            "{}: GGUF models are not planned",
            model.display()
        )));
    }
    let shape = ModelShape::read(&model.join("config.json"))?;
    let adapter = config.adapter.is_some() || config.adapter_from.is_some();
    let (batch, max_len) = (config.batch as u64, config.max_len as u64);
    let plan_of = |batch: u64, max_len: u64| eval_plan(&shape, adapter, batch, max_len, ctx.target);
    let mut alternatives: Vec<(String, MemoryPlan)> = halvings(batch, 1)
        .map(|b| (format!("lower batch to {b}"), plan_of(b, max_len)))
        .collect();
    alternatives.extend(
        halvings(max_len, 512).map(|len| (format!("lower max_len to {len}"), plan_of(batch, len))),
    );
    Ok(Verdict::new(
        plan_of(batch, max_len),
        ctx.device_bytes,
        alternatives,
    ))
}

/// The plan of an embed stage checked against the device, with a smaller batch as the fix. Only GME
/// (Qwen2-VL) embedders are planned.
pub fn embed_verdict(
    model: &Path,
    batch: u64,
    model_bytes: u64,
    ctx: &PlanContext,
) -> Result<Verdict, PlanError> {
    let shape = ModelShape::read(&model.join("config.json"))?;
    if shape.vision.is_none() {
        return Err(PlanError::Unplannable(format!(
            "{}: only GME (Qwen2-VL) embedders are planned",
            model.display()
        )));
    }
    let plan_of = |batch: u64| embed_plan(&shape, batch, model_bytes, ctx.target);
    let alternatives: Vec<(String, MemoryPlan)> = halvings(batch, 1)
        .map(|b| (format!("lower batch_size to {b}"), plan_of(b)))
        .collect();
    Ok(Verdict::new(plan_of(batch), ctx.device_bytes, alternatives))
}
