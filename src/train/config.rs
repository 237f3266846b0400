//! The `[train]` table: what to train, on which shards, with which objective and optimiser.
//!
//! The table is flat (one key per setting) so that a pipeline file and the `umrank train` flags name the same
//! things. The objective keys (`objective`, `weight`, `direction`, `tau`, `temperature`) are checked together and
//! turned into an [`ObjectiveConfig`]; every other problem is reported with the key it concerns.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::objective::{DirectionSource, Objective, ObjectiveConfig, WeightSource};
use crate::media::preprocess::ImageBackend;
use crate::models::adapters::lora::{LoraConfig, DECODER_TARGETS};
use crate::models::text::prompt_format::{AnswerTokens, PromptFormat, PromptSettings};
use crate::optim::AdamWConfig;
use crate::optim::{Decay, Schedule};
use crate::plan::parse_bytes;

/// Which shard dataset the groups are read from. Both hold the same groups; `sft` carries the document parts in
/// its rows, `cl` names documents by id and takes their parts from the ingest stage's corpus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DataFormat {
    Sft,
    Cl,
}

impl DataFormat {
    /// The dataset's directory under the shards stage.
    pub fn dir_name(self) -> &'static str {
        match self {
            Self::Sft => "sft",
            Self::Cl => "cl",
        }
    }
}

/// The objective by name; `unified` takes `weight`, `direction` and `tau`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ObjectiveName {
    Sft,
    Cl,
    Unified,
}

/// What the optimiser updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Tuning {
    /// LoRA adapters on the decoder's projections; the base weights stay frozen.
    Lora,
    /// Every decoder weight (but the LM head unless `train_lm_head`): for small models.
    Full,
}

/// The dtype weights and activations are kept in. Optimiser moments are f32 either way, and bf16 weights are
/// trained through f32 master copies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
}

impl Precision {
    pub fn dtype(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
            Self::Bf16 => candle_core::DType::BF16,
        }
    }
}

/// Which activations the backward pass gets by recomputing them instead of keeping them from the forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    /// Keep every activation until the backward pass: the fastest step, the most memory.
    None,
    /// Keep only each decoder layer's and vision block's input, and run the layer again during the backward
    /// pass: activation memory of one layer plus one hidden state per layer, for about one more forward pass of
    /// compute. The gradients are the same.
    Layers,
}

/// How the base model comes to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// A Hugging Face model directory (Qwen2-VL / Qwen2.5-VL, or a text-only Qwen2/Qwen3/Llama decoder), or a
    /// llama GGUF file (LoRA only).
    Pretrained(PathBuf),
    /// Random initialisation of a built-in tiny architecture, with the tokenizer of `tokenizer`.
    Tiny { vision: bool, tokenizer: PathBuf },
    /// Random initialisation of the architecture a `config.json` describes.
    Config { config: PathBuf, tokenizer: PathBuf },
}

/// The built-in tiny Qwen2-VL architecture (decoder and vision tower), for demos and tests from scratch.
pub const INIT_TINY: &str = "tiny";
/// The built-in tiny text-only Qwen2 decoder.
pub const INIT_TINY_TEXT: &str = "tiny-text";

/// The `[train]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The upstream stage whose `sft/` and `cl/` datasets are trained on.
    #[serde(default = "default_shards")]
    pub shards: String,
    /// The upstream ingest stage: the corpus (for `cl` groups) and the images.
    #[serde(default = "default_ingest")]
    pub ingest: String,
    #[serde(default = "default_data")]
    pub data: DataFormat,

    /// A Hugging Face model directory to start from, or a llama GGUF file (LoRA only).
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// Random initialisation instead: `tiny`, `tiny-text`, or the path of a config.json.
    #[serde(default)]
    pub init: Option<String>,
    /// The tokenizer directory (tokenizer.json) for `init`.
    #[serde(default)]
    pub tokenizer: Option<PathBuf>,
    /// Warm start (LoRA only): the release, release stage, PEFT adapter directory or train stage whose adapter
    /// the run starts from instead of a fresh one; see [`super::warm`]. Left out of the serialised config when
    /// unset, so that runs without it keep their fingerprints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_adapter: Option<PathBuf>,

    #[serde(default = "default_objective")]
    pub objective: ObjectiveName,
    /// Unified objective: where the weights come from (sft, cl or const).
    #[serde(default)]
    pub weight: Option<WeightSource>,
    /// Unified objective: the direction (sft or cl).
    #[serde(default)]
    pub direction: Option<DirectionSource>,
    /// Unified objective: zero the weight of examples already learned (p+ > 1 - tau, p- < tau).
    #[serde(default)]
    pub tau: Option<f64>,
    /// CL temperature.
    #[serde(default = "one")]
    pub temperature: f64,

    #[serde(default = "default_tuning")]
    pub tune: Tuning,
    #[serde(default = "default_lora_r")]
    pub lora_r: usize,
    #[serde(default = "default_lora_alpha")]
    pub lora_alpha: f64,
    #[serde(default = "default_lora_dropout")]
    pub lora_dropout: f64,
    #[serde(default = "default_lora_targets")]
    pub lora_targets: Vec<String>,
    /// Train the LM head too (with tied embeddings this also trains the token embeddings).
    #[serde(default)]
    pub train_lm_head: bool,
    /// Train the vision tower (all of its weights) instead of keeping it frozen.
    #[serde(default)]
    pub train_vision: bool,

    #[serde(default = "default_lr")]
    pub lr: f64,
    #[serde(default)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value; 0 turns clipping off.
    #[serde(default = "one")]
    pub max_grad_norm: f64,
    #[serde(default = "default_beta1")]
    pub beta1: f64,
    #[serde(default = "default_beta2")]
    pub beta2: f64,
    #[serde(default = "default_eps")]
    pub eps: f64,
    #[serde(default)]
    pub warmup_steps: u64,
    #[serde(default = "default_decay")]
    pub decay: Decay,
    /// The learning rate the decay ends at, as a fraction of `lr`.
    #[serde(default)]
    pub min_lr_ratio: f64,

    #[serde(default = "default_epochs")]
    pub epochs: u64,
    /// Stop after this many optimizer steps (the schedule spans them); default: `epochs` over the data.
    #[serde(default)]
    pub max_steps: Option<u64>,
    /// Groups per micro-batch (one forward and backward pass).
    #[serde(default = "default_groups")]
    pub groups_per_batch: usize,
    /// Micro-batches whose gradients are summed into one optimizer step.
    #[serde(default = "default_accumulation")]
    pub accumulation: usize,
    /// Negatives per group; groups with more keep the first N, groups with fewer are rejected. Default: the
    /// largest number in the data.
    #[serde(default)]
    pub negatives: Option<usize>,
    /// Longest sequence in tokens: text is cut (document first, then query, then instruction), image tokens
    /// never; a group with a document that cannot fit is rejected.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// The prompt format: `paper`, `qwen3-reranker` or `template` (the model's chat template); recorded with the
    /// trained adapter or model so that eval, `umrank score` and a release ask it the same way.
    #[serde(default, skip_serializing_if = "is_default")]
    pub prompt: PromptFormat,
    /// The judgement words `[yes, no]`, each a single token of the vocabulary.
    #[serde(default, skip_serializing_if = "is_default")]
    pub answer_tokens: AnswerTokens,
    /// Weight dtype; default bf16 on CUDA, f32 on the CPU.
    #[serde(default)]
    pub precision: Option<Precision>,
    /// Image pixel bounds for the Qwen2-VL image processor.
    #[serde(default = "default_min_pixels")]
    pub min_pixels: u64,
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
    /// Whose image resizing and normalisation to reproduce: transformers' torchvision image processor (its
    /// default) or its PIL one. Releases record it, so the model is scored with the processor it was trained with.
    #[serde(default)]
    pub image_processor: ImageBackend,

    /// Write a checkpoint every N optimizer steps (0: never).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// How many of the newest checkpoints to keep.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
    /// Continue from the newest complete checkpoint of the same run, if there is one.
    #[serde(default = "yes")]
    pub resume: bool,

    /// Run a frozen vision tower once per distinct image and reuse its output for the whole run.
    #[serde(default = "yes")]
    pub vision_cache: bool,
    /// The most the vision cache may hold (`"4GiB"`, `"512MiB"`): beyond it, the outputs used least recently are
    /// dropped (and recomputed if their image comes back).
    #[serde(default = "default_cache_budget")]
    pub vision_cache_budget: String,
    /// Pack a micro-batch's sequences into one row instead of padding them to the longest.
    #[serde(default = "yes")]
    pub packing: bool,
    /// Run the tokens a group's prompts begin with (system turn, instruction, query and its image) once per group
    /// instead of once per prompt, each prompt's rest attending to them. Same logits; the row is packed whatever
    /// `packing` says.
    #[serde(default = "yes")]
    pub shared_prefix: bool,
    /// Activation recomputation, `layers` or `none`. Default: `layers` when training a checkpoint (`model`),
    /// `none` for a model initialised from scratch (`init`). A real checkpoint at the paper's lengths needs it
    /// (`umrank run --plan` shows the activations with and without), while the built-in tiny models' activations
    /// are a few megabytes and recomputing them would only cost time.
    #[serde(default)]
    pub recompute: Option<Recompute>,
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

fn default_shards() -> String {
    "shards".into()
}
fn default_ingest() -> String {
    "ingest".into()
}
fn default_data() -> DataFormat {
    DataFormat::Sft
}
fn default_objective() -> ObjectiveName {
    ObjectiveName::Sft
}
fn one() -> f64 {
    1.0
}
fn yes() -> bool {
    true
}
fn default_tuning() -> Tuning {
    Tuning::Lora
}
fn default_lora_r() -> usize {
    LoraConfig::default().r
}
fn default_lora_alpha() -> f64 {
    LoraConfig::default().alpha
}
fn default_lora_dropout() -> f64 {
    LoraConfig::default().dropout
}
fn default_lora_targets() -> Vec<String> {
    DECODER_TARGETS.iter().map(|t| t.to_string()).collect()
}
fn default_lr() -> f64 {
    1e-4
}
fn default_beta1() -> f64 {
    AdamWConfig::default().beta1
}
fn default_beta2() -> f64 {
    AdamWConfig::default().beta2
}
fn default_eps() -> f64 {
    AdamWConfig::default().eps
}
fn default_decay() -> Decay {
    Decay::Cosine
}
fn default_epochs() -> u64 {
    1
}
fn default_groups() -> usize {
    2
}
fn default_accumulation() -> usize {
    1
}
fn default_max_len() -> usize {
    3200
}
/// docs/method.md#image-bounds: 4 x 28 x 28 to 1280 x 28 x 28 pixels.
fn default_min_pixels() -> u64 {
    4 * 28 * 28
}
fn default_max_pixels() -> u64 {
    1280 * 28 * 28
}
fn default_cache_budget() -> String {
    "4GiB".into()
}
fn default_checkpoint_every() -> u64 {
    500
}
fn default_keep() -> usize {
    2
}

/// A key with an unusable value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("[train] `{key}`: {problem}")]
pub struct ConfigProblem {
    pub key: &'static str,
    pub problem: String,
}

fn problem<T>(key: &'static str, problem: impl Into<String>) -> Result<T, ConfigProblem> {
    Err(ConfigProblem {
        key,
        problem: problem.into(),
    })
}

impl TrainConfig {
    /// The prompt format and judgement tokens of the run.
    pub fn prompt_settings(&self) -> PromptSettings {
        PromptSettings {
            format: self.prompt,
            answer_tokens: self.answer_tokens.clone(),
        }
    }

    /// Checks every key; the first problem found is returned.
    pub fn validate(&self) -> Result<(), ConfigProblem> {
        if let ModelSource::Pretrained(path) = self.model_source()? {
            if self.tune == Tuning::Full && path.is_file() {
                return problem(
                    "tune",
                    "a GGUF `model` trains LoRA adapters only: a fully fine-tuned model directory needs the \
                     config.json a GGUF file lacks",
                );
            }
        }
        self.objective_config()?;
        self.schedule_shape()?;
        if let Some(problem) = self.lora_config().problem() {
            let key = if problem.starts_with("dropout") {
                "lora_dropout"
            } else if problem.starts_with("alpha") {
                "lora_alpha"
            } else if problem.starts_with("target") {
                "lora_targets"
            } else {
                "lora_r"
            };
            return self::problem(key, problem);
        }
        if self.init_adapter.is_some() && self.tune != Tuning::Lora {
            return problem(
                "init_adapter",
                "only a LoRA run (`tune = \"lora\"`) starts from an adapter",
            );
        }
        self.adamw()
            .check()
            .or_else(|e| problem("lr", e.to_string()))?;
        for (key, value) in [
            ("groups_per_batch", self.groups_per_batch),
            ("accumulation", self.accumulation),
            ("keep_checkpoints", self.keep_checkpoints),
        ] {
            if value == 0 {
                return problem(key, "must be at least 1");
            }
        }
        if self.negatives == Some(0) {
            return problem("negatives", "a group needs at least one negative");
        }
        if self.max_len < 16 {
            return problem(
                "max_len",
                format!("{} tokens cannot hold the prompt", self.max_len),
            );
        }
        if self.min_pixels == 0 || self.min_pixels > self.max_pixels {
            return problem(
                "min_pixels",
                format!(
                    "{} must be positive and at most max_pixels ({})",
                    self.min_pixels, self.max_pixels
                ),
            );
        }
        if let Err(e) = parse_bytes(&self.vision_cache_budget) {
            return problem("vision_cache_budget", e);
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return problem("lr", format!("{} is not a positive number", self.lr));
        }
        Ok(())
    }

    /// Where the base model comes from: exactly one of `model` and `init`.
    pub fn model_source(&self) -> Result<ModelSource, ConfigProblem> {
        let tokenizer = || match &self.tokenizer {
            Some(dir) => Ok(dir.clone()),
            None => problem("tokenizer", "`init` needs a tokenizer directory"),
        };
        match (&self.model, self.init.as_deref()) {
            (Some(dir), None) => {
                if self.tokenizer.is_some() {
                    return problem("tokenizer", "a `model` directory brings its own tokenizer");
                }
                Ok(ModelSource::Pretrained(dir.clone()))
            }
            (None, Some(INIT_TINY)) => Ok(ModelSource::Tiny {
                vision: true,
                tokenizer: tokenizer()?,
            }),
            (None, Some(INIT_TINY_TEXT)) => Ok(ModelSource::Tiny {
                vision: false,
                tokenizer: tokenizer()?,
            }),
            (None, Some(path)) if path.ends_with(".json") => Ok(ModelSource::Config {
                config: PathBuf::from(path),
                tokenizer: tokenizer()?,
            }),
            (None, Some(other)) => problem(
                "init",
                format!("`{other}` is neither {INIT_TINY}, {INIT_TINY_TEXT} nor a config.json path"),
            ),
            (Some(_), Some(_)) => problem("init", "give `model` or `init`, not both"),
            (None, None) => problem(
                "model",
                "give `model` (a Hugging Face directory) or `init` (tiny, tiny-text or a config.json)",
            ),
        }
    }

    /// The objective the keys describe.
    pub fn objective_config(&self) -> Result<ObjectiveConfig, ConfigProblem> {
        let objective = match self.objective {
            ObjectiveName::Unified => Objective::Unified {
                weight: match self.weight {
                    Some(weight) => weight,
                    None => {
                        return problem("weight", "the unified objective needs sft, cl or const")
                    }
                },
                direction: match self.direction {
                    Some(direction) => direction,
                    None => return problem("direction", "the unified objective needs sft or cl"),
                },
                tau: self.tau,
            },
            plain => {
                for (key, given) in [
                    ("weight", self.weight.is_some()),
                    ("direction", self.direction.is_some()),
                    ("tau", self.tau.is_some()),
                ] {
                    if given {
                        return problem(key, "only the unified objective takes it");
                    }
                }
                if plain == ObjectiveName::Sft {
                    Objective::Sft
                } else {
                    Objective::Cl
                }
            }
        };
        let config = ObjectiveConfig {
            objective,
            temperature: self.temperature,
        };
        config.check().or_else(|e| {
            let key = if e.to_string().contains("tau") {
                "tau"
            } else {
                "temperature"
            };
            problem(key, e.to_string())
        })?;
        Ok(config)
    }

    pub fn lora_config(&self) -> LoraConfig {
        LoraConfig {
            r: self.lora_r,
            alpha: self.lora_alpha,
            dropout: self.lora_dropout,
            target_modules: self.lora_targets.clone(),
            use_rslora: false,
        }
    }

    pub fn adamw(&self) -> AdamWConfig {
        AdamWConfig {
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            weight_decay: self.weight_decay,
            max_grad_norm: (self.max_grad_norm > 0.0).then_some(self.max_grad_norm),
        }
    }

    /// The schedule over `total_steps` optimizer steps.
    pub fn schedule(&self, total_steps: u64) -> Result<Schedule, ConfigProblem> {
        let schedule = Schedule {
            peak_lr: self.lr,
            warmup_steps: self.warmup_steps.min(total_steps),
            total_steps,
            decay: self.decay,
            min_lr_ratio: self.min_lr_ratio,
        };
        schedule
            .check()
            .or_else(|e| problem("warmup_steps", e.to_string()))?;
        Ok(schedule)
    }

    fn schedule_shape(&self) -> Result<(), ConfigProblem> {
        if self.epochs == 0 && self.max_steps.is_none() {
            return problem("epochs", "must be at least 1 (or give max_steps)");
        }
        if self.max_steps == Some(0) {
            return problem("max_steps", "must be at least 1");
        }
        if !(0.0..=1.0).contains(&self.min_lr_ratio) {
            return problem(
                "min_lr_ratio",
                format!("{} is not in [0, 1]", self.min_lr_ratio),
            );
        }
        Ok(())
    }

    /// Optimizer steps for `groups` training groups.
    pub fn total_steps(&self, groups: usize) -> u64 {
        if let Some(steps) = self.max_steps {
            return steps;
        }
        let per_step = (self.groups_per_batch * self.accumulation) as u64;
        (groups as u64 * self.epochs).div_ceil(per_step).max(1)
    }

    /// `vision_cache_budget` in bytes (0 when unparsable; [`Self::validate`] refuses that).
    pub fn vision_cache_budget_bytes(&self) -> u64 {
        parse_bytes(&self.vision_cache_budget).unwrap_or(0)
    }

    /// The recomputation the run uses: `recompute`, or the default for the model source.
    pub fn recompute_mode(&self) -> Recompute {
        self.recompute.unwrap_or(if self.model.is_some() {
            Recompute::Layers
        } else {
            Recompute::None
        })
    }

    /// The weight dtype on `device`.
    pub fn precision_on(&self, device: &candle_core::Device) -> Precision {
        self.precision.unwrap_or(if device.is_cuda() {
            Precision::Bf16
        } else {
            Precision::F32
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<TrainConfig, String> {
        let config: TrainConfig = toml::from_str(text).map_err(|e| e.message().to_string())?;
        config.validate().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn defaults_follow_the_paper_recipe() {
        let config = parse("model = 'm'").unwrap();
        assert_eq!(
            (config.lora_r, config.lr, config.tune),
            (16, 1e-4, Tuning::Lora)
        );
        assert!(!config.train_lm_head && !config.train_vision);
        assert_eq!(
            config.objective_config().unwrap(),
            ObjectiveConfig::default()
        );
        assert_eq!(config.max_len, 3200);
        assert_eq!(config.recompute_mode(), Recompute::Layers);
    }

    #[test]
    fn recompute_defaults_by_model_source_and_parses() {
        let tiny = parse("init = 'tiny'\ntokenizer = 't'").unwrap();
        assert_eq!(tiny.recompute_mode(), Recompute::None);
        let forced = parse("init = 'tiny'\ntokenizer = 't'\nrecompute = 'layers'").unwrap();
        assert_eq!(forced.recompute_mode(), Recompute::Layers);
        let off = parse("model = 'm'\nrecompute = 'none'").unwrap();
        assert_eq!(off.recompute_mode(), Recompute::None);
        assert!(parse("model = 'm'\nrecompute = 'all'").is_err());
        let budget = parse("model = 'm'\nvision_cache_budget = '512MiB'").unwrap();
        assert_eq!(budget.vision_cache_budget_bytes(), 512 << 20);
        assert!(parse("model = 'm'\nvision_cache_budget = 'big'")
            .unwrap_err()
            .contains("`vision_cache_budget`"));
    }

    #[test]
    fn unified_needs_weight_and_direction_and_others_refuse_them() {
        let unified = parse(
            "model = 'm'\nobjective = 'unified'\nweight = 'const'\ndirection = 'sft'\ntau = 0.1",
        )
        .unwrap();
        assert_eq!(
            unified.objective_config().unwrap().objective,
            Objective::Unified {
                weight: WeightSource::Const,
                direction: DirectionSource::Sft,
                tau: Some(0.1)
            }
        );
        let err = parse("model = 'm'\nobjective = 'unified'\nweight = 'cl'").unwrap_err();
        assert!(err.contains("`direction`"), "{err}");
        let err = parse("model = 'm'\nobjective = 'cl'\ntau = 0.1").unwrap_err();
        assert!(err.contains("`tau`: only the unified"), "{err}");
        let err = parse("model = 'm'\nobjective = 'cl'\ntemperature = 0").unwrap_err();
        assert!(err.contains("`temperature`"), "{err}");
    }

    #[test]
    fn model_sources_and_bad_keys_are_named() {
        let tiny = parse("init = 'tiny-text'\ntokenizer = 't'").unwrap();
        assert_eq!(
            tiny.model_source().unwrap(),
            ModelSource::Tiny {
                vision: false,
                tokenizer: PathBuf::from("t")
            }
        );
        assert!(parse("init = 'tiny'").unwrap_err().contains("`tokenizer`"));
        assert!(parse("").unwrap_err().contains("`model`"));
        assert!(parse("model = 'm'\nlora_r = 0")
            .unwrap_err()
            .contains("`lora_r`"));
        assert!(parse("model = 'm'\ngroups_per_batch = 0")
            .unwrap_err()
            .contains("`groups_per_batch`"));
        assert!(parse("model = 'm'\nlearning_rate = 1")
            .unwrap_err()
            .contains("unknown field"));
    }

    #[test]
    fn total_steps_cover_the_epochs() {
        let mut config =
            parse("model = 'm'\ngroups_per_batch = 2\naccumulation = 3\nepochs = 2").unwrap();
        assert_eq!(config.total_steps(10), 4);
        config.max_steps = Some(7);
        assert_eq!(config.total_steps(10), 7);
    }
}
