//! The memory plan of a train stage: weights, what the optimiser holds per trainable weight, the activations
//! of the largest micro-batch the config allows, the attention kernel's buffers and the images.

use std::path::Path;

use super::footprint::{self, LoraRun, Widths};
use super::shape::ModelShape;
use super::{format_bytes, halvings, MemoryPlan, Part, PlanError, Verdict};
use crate::models::adapters::lora::DECODER_TARGETS;
use crate::models::decoder::RECOMPUTE_ROWS;
use crate::models::layers::attention::AttentionKernel;
use crate::models::text::tokenizer::Tokenizer;
use crate::train::config::{ModelSource, Precision, Recompute, TrainConfig, Tuning};
use crate::train::model::tiny_config;

/// Negatives assumed when the config leaves them to the data.
pub const ASSUMED_NEGATIVES: usize = 16;

/// Where the plan is for: which attention kernel runs and which dtype the weights default to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The CPU: the blocked kernel's slice implementation, f32 by default.
    Cpu,
    /// A CUDA device: bf16 by default, the blocked algorithm in tensor-op tiles.
    Cuda,
}

impl Target {
    /// The attention kernel training runs on this target.
    pub fn kernel(self) -> AttentionKernel {
        match self {
            Target::Cpu => AttentionKernel::Blocked,
            Target::Cuda => AttentionKernel::Tiled,
        }
    }
}

/// The plan of training `config` on a model of `shape`.
pub fn plan(config: &TrainConfig, shape: &ModelShape, target: Target) -> MemoryPlan {
    plan_on(config, shape, target, target.kernel())
}

/// [`plan`] with attention on `kernel` instead of the target's (the benchmark measures both on the CPU).
pub fn plan_on(
    config: &TrainConfig,
    shape: &ModelShape,
    target: Target,
    kernel: AttentionKernel,
) -> MemoryPlan {
    let run = Run::new(config, shape, target, kernel);
    let mut plan = MemoryPlan::new(vec![
        Part::new("weights", run.weights()),
        Part::new("gradients", run.gradients()),
        Part::new("optimizer", run.optimizer()),
        Part::new("activations", run.activations(config.recompute_mode())),
        Part::new("attention_workspace", run.attention_workspace()),
        Part::new("vision_cache", run.vision_cache()),
        Part::new("image_buffers", run.image_buffers()),
    ]);
    plan.activations = Some([
        (Recompute::None, run.activations(Recompute::None)),
        (Recompute::Layers, run.activations(Recompute::Layers)),
    ]);
    if config.negatives.is_none() {
        plan.notes.push(format!(
            "negatives are not set (the data decides): planned at {ASSUMED_NEGATIVES}"
        ));
    }
    plan
}

/// A train config's sizes, in the terms the parts are counted in.
struct Run<'a> {
    config: &'a TrainConfig,
    shape: &'a ModelShape,
    kernel: AttentionKernel,
    w: Widths,
    /// Sequences per micro-batch.
    sequences: u64,
    /// Tokens per micro-batch, every sequence at `max_len`: the largest micro-batch the config allows.
    tokens: u64,
    lora: Option<LoraRun>,
}

impl<'a> Run<'a> {
    fn new(
        config: &'a TrainConfig,
        shape: &'a ModelShape,
        target: Target,
        kernel: AttentionKernel,
    ) -> Self {
        let precision = config.precision.unwrap_or(match target {
            Target::Cpu => Precision::F32,
            Target::Cuda => Precision::Bf16,
        });
        let model_bytes = match precision {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
        };
        let negatives = config.negatives.unwrap_or(ASSUMED_NEGATIVES) as u64;
        let sequences = config.groups_per_batch as u64 * (1 + negatives);
        let lora = (config.tune == Tuning::Lora).then(|| LoraRun {
            rank: config.lora_r as u64,
            targets: DECODER_TARGETS.map(|name| config.lora_targets.iter().any(|t| t == name)),
            dropout: config.lora_dropout > 0.0,
        });
        Self {
            config,
            shape,
            kernel,
            w: Widths::of(model_bytes),
            sequences,
            tokens: sequences * config.max_len as u64,
            lora,
        }
    }

    fn lora_params(&self) -> u64 {
        self.lora.as_ref().map_or(0, |run| {
            self.shape
                .decoder
                .lora_params(run.rank, &self.config.lora_targets)
        })
    }

    /// Base weights that train, by the rule of `crate::train::model::Trainable`.
    fn trained_base_params(&self) -> u64 {
        let d = &self.shape.decoder;
        let embeddings = d.vocab * d.hidden;
        let full = self.config.tune == Tuning::Full;
        let body = if full {
            d.params() - embeddings - if d.tied { 0 } else { embeddings }
        } else {
            0
        };
        let embed = if full && (!d.tied || self.config.train_lm_head) {
            embeddings
        } else {
            0
        };
        let head = if !d.tied && self.config.train_lm_head {
            embeddings
        } else {
            0
        };
        let vision = match (&self.shape.vision, self.config.train_vision) {
            (Some(vision), true) => vision.params(),
            _ => 0,
        };
        body + embed + head + vision
    }

    fn weights(&self) -> u64 {
        self.shape.params() * self.w.model + self.lora_params() * self.w.adapter
    }

    /// Each trainable weight's gradient in its own dtype, and the f32 sum the micro-batches accumulate into.
    fn gradients(&self) -> u64 {
        let accumulated = self.w.compute;
        self.lora_params() * (self.w.adapter + accumulated)
            + self.trained_base_params() * (self.w.model + accumulated)
    }

    /// AdamW's two f32 moments per trainable weight, and an f32 master copy of each half-precision one.
    fn optimizer(&self) -> u64 {
        let moments = 2 * self.w.compute;
        let master = if self.w.model != self.w.compute {
            self.w.compute
        } else {
            0
        };
        self.lora_params() * moments + self.trained_base_params() * (moments + master)
    }

    /// What autograd holds at the peak of the backward pass: every layer's activations, or with recomputation
    /// each layer's saved inputs plus the intermediates of the larger of a layer's attention half (over the
    /// micro-batch) and MLP half (over one slice of [`RECOMPUTE_ROWS`] tokens); and the gradients crossing a layer.
    fn activations(&self, recompute: Recompute) -> u64 {
        let d = &self.shape.decoder;
        let (w, t) = (self.w, self.tokens);
        let hidden = t * d.hidden * w.model;
        let embeds = hidden * if self.shape.vision.is_some() { 2 } else { 1 };
        let head = t * (2 * d.hidden * w.compute + d.hidden * w.model);
        let lora = self.lora.as_ref();
        let mlp_backward = footprint::mlp_backward(d, lora.is_some(), w);
        let residual_backward = t * footprint::residual_backward(d, w);
        let (layers, vision) = match recompute {
            Recompute::None => {
                let layer = t * footprint::decoder_layer_kept(d, lora, w) + self.scores();
                let crossing = residual_backward + t * mlp_backward;
                (d.layers * layer + crossing, self.vision_blocks(false))
            }
            Recompute::Layers => {
                // Two segments per layer (attention, MLP): their inputs are kept, and the backward pass holds
                // the larger half's intermediates and the gradients entering and leaving it.
                let slice = t.min(RECOMPUTE_ROWS as u64);
                let attention = t * footprint::decoder_attention_kept(d, lora, w) + self.scores();
                let mlp = slice * (footprint::decoder_mlp_kept(d, lora, w) + mlp_backward);
                let saved = (2 * d.layers + 1) * hidden;
                let crossing = residual_backward + 2 * hidden;
                (
                    saved + attention.max(mlp) + crossing,
                    self.vision_blocks(true),
                )
            }
        };
        footprint::with_overhead(embeds + head + layers + vision)
    }

    /// The reference kernel's kept scores of one layer, nothing on the blocked algorithm.
    fn scores(&self) -> u64 {
        match self.kernel {
            AttentionKernel::Blocked | AttentionKernel::Tiled => 0,
            AttentionKernel::Reference => {
                self.sequences
                    * footprint::reference_attention_scores(
                        self.shape.decoder.heads,
                        self.config.max_len as u64,
                        self.w,
                    )
            }
        }
    }

    /// A trained vision tower's kept activations over the micro-batch's patches.
    fn vision_blocks(&self, recompute: bool) -> u64 {
        let Some(vision) = self
            .shape
            .vision
            .as_ref()
            .filter(|_| self.config.train_vision)
        else {
            return 0;
        };
        let patches = self.batch_patches();
        let block = patches * footprint::vision_block_kept(vision, self.w);
        if recompute {
            (vision.depth + 1) * patches * vision.hidden * self.w.model + block
        } else {
            vision.depth * block
        }
    }

    /// Patches of a micro-batch's images: a query and a document image per sequence at `max_pixels`, no more
    /// than the micro-batch's tokens can hold.
    fn batch_patches(&self) -> u64 {
        let Some(vision) = &self.shape.vision else {
            return 0;
        };
        let per_image = vision.max_patches(self.config.max_pixels);
        (2 * self.sequences * per_image).min(self.tokens * vision.merge_unit)
    }

    fn attention_workspace(&self) -> u64 {
        let per_token = self.tokens * footprint::blocked_attention_workspace(&self.shape.decoder);
        match self.kernel {
            AttentionKernel::Blocked => footprint::with_overhead(per_token),
            AttentionKernel::Tiled => {
                let rows = if self.config.packing {
                    1
                } else {
                    self.sequences
                };
                let tiles = footprint::device_attention_tiles(rows, self.shape.decoder.heads);
                footprint::with_overhead(per_token + tiles)
            }
            AttentionKernel::Reference => 0,
        }
    }

    /// The tower outputs kept for the whole run: up to the cache's budget when a frozen tower's outputs are
    /// cached.
    fn vision_cache(&self) -> u64 {
        let cached =
            self.shape.vision.is_some() && self.config.vision_cache && !self.config.train_vision;
        if cached {
            self.config.vision_cache_budget_bytes()
        } else {
            0
        }
    }

    /// Pixels and a frozen tower's working set: one image at a time with the cache, every image of the
    /// micro-batch at once without.
    fn image_buffers(&self) -> u64 {
        let Some(vision) = &self.shape.vision else {
            return 0;
        };
        let patches = if self.config.vision_cache && !self.config.train_vision {
            vision.max_patches(self.config.max_pixels)
        } else {
            self.batch_patches()
        };
        patches * (vision.patch_dim * 4 + footprint::vision_block_inference(vision, self.w))
    }
}

/// The plan of a train stage checked against the device, with the setting that would make it fit when it does
/// not.
pub fn verdict(config: &TrainConfig, ctx: &super::PlanContext) -> Result<Verdict, PlanError> {
    let shape = model_shape(config)?;
    let target = ctx.target;
    let alternatives =
        fixes(config).map(|(change, changed)| (change, plan(&changed, &shape, target)));
    Ok(Verdict::new(
        plan(config, &shape, target),
        ctx.device_bytes,
        alternatives.collect::<Vec<_>>(),
    ))
}

/// The model's shape from its `config.json`, or the built-in tiny config for `init = "tiny"` and `"tiny-text"`.
fn model_shape(config: &TrainConfig) -> Result<ModelShape, PlanError> {
    let source = config
        .model_source()
        .map_err(|e| PlanError::Unplannable(e.to_string()))?;
    match source {
        ModelSource::Pretrained(dir) => ModelShape::read(&dir.join("config.json")),
        ModelSource::Config { config, .. } => ModelShape::read(&config),
        ModelSource::Tiny { vision, tokenizer } => {
            let loaded = Tokenizer::from_dir(&tokenizer)
                .map_err(|e| PlanError::Unplannable(e.to_string()))?;
            let json =
                tiny_config(&loaded, vision).map_err(|e| PlanError::Unplannable(e.to_string()))?;
            ModelShape::from_json(&json, Path::new("tiny"))
        }
    }
}

/// One-setting changes that lower the peak, in the order they cost least: recomputation, smaller micro-batches
/// (with more of them per step, so the step stays the same), a smaller vision cache, smaller images, shorter
/// sequences.
fn fixes(config: &TrainConfig) -> impl Iterator<Item = (String, TrainConfig)> + '_ {
    let with = move |change: &dyn Fn(&mut TrainConfig)| {
        let mut changed = config.clone();
        change(&mut changed);
        changed
    };
    let mut out = Vec::new();
    if config.recompute_mode() == Recompute::None {
        out.push((
            "set recompute = \"layers\"".to_string(),
            with(&|c| c.recompute = Some(Recompute::Layers)),
        ));
    }
    let step = (config.groups_per_batch * config.accumulation) as u64;
    for groups in halvings(config.groups_per_batch as u64, 1) {
        out.push((
            format!(
                "lower groups_per_batch to {groups} (with accumulation = {} for the same step)",
                step.div_ceil(groups)
            ),
            with(&|c| {
                c.groups_per_batch = groups as usize;
                c.accumulation = step.div_ceil(groups) as usize;
            }),
        ));
    }
    if config.vision_cache {
        for budget in halvings(config.vision_cache_budget_bytes(), 256 << 20) {
            out.push((
                format!(
                    "lower vision_cache_budget to \"{}\"",
                    format_bytes(budget).replace(' ', "")
                ),
                with(&|c| c.vision_cache_budget = budget.to_string()),
            ));
        }
    }
    for pixels in halvings(config.max_pixels, config.min_pixels.max(1)) {
        out.push((
            format!("lower max_pixels to {pixels}"),
            with(&|c| c.max_pixels = pixels),
        ));
    }
    for len in halvings(config.max_len as u64, 512) {
        out.push((
            format!("lower max_len to {len}"),
            with(&|c| c.max_len = len as usize),
        ));
    }
    out.into_iter()
}
