//! The reranker being trained: a Qwen2-VL / Qwen2.5-VL model or a text-only decoder, its tokenizer, and the list
//! of variables the optimiser may touch.
//!
//! The model layer loads base weights as plain (frozen) tensors. Training needs some of them as `Var`s instead:
//! every decoder weight for full fine-tuning, the LM head when it is unfrozen, the vision tower when it is tuned.
//! [`ParamSource`] sits between the checkpoint (or a seeded random initialiser) and the model's `VarBuilder` and
//! hands out a `Var` for exactly the names the [`Trainable`] rule selects, a frozen tensor for the rest, and
//! remembers every tensor by its checkpoint name so that a fully fine-tuned model can be written back out.
//! LoRA adapters live in the decoder's projections and are always trainable.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::init::Init;
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use serde_json::{json, Value};

use super::config::{ModelSource, TrainConfig, Tuning};
use super::failure::TrainRunError;
use super::warm;
use crate::models::backbone::Backbone;
use crate::models::decoder::Decoder;
use crate::models::formats::gguf::GgufCheckpoint;
use crate::models::formats::hf_config::DecoderConfig;
use crate::models::formats::weights::Weights;
use crate::models::init::seeded_var_builder;
use crate::models::layers::attention::AttentionKernel;
use crate::models::qwen2_vl::Qwen2VlModel;
use crate::models::reranker::{gguf_chat_template, gguf_tokenizer};
use crate::models::text::chat_template::{ChatTemplate, ChatTemplates, TEMPLATE_JINJA_FILE};
use crate::models::text::prompt::{
    PromptBuilder, PromptError, IMAGE_PAD, VISION_END, VISION_START,
};
use crate::models::text::prompt_format::{PromptFormat, PromptSettings};
use crate::models::text::tokenizer::{AnswerIds, Tokenizer};
use crate::schema::outputs;

/// Which base weights train, by checkpoint name.
#[derive(Debug, Clone, Copy)]
pub struct Trainable {
    pub full: bool,
    pub lm_head: bool,
    pub vision: bool,
    /// The LM head is the token embedding matrix: it trains only when both the head and the body do.
    pub tied: bool,
}

impl Trainable {
    pub fn of(config: &TrainConfig, tied: bool) -> Self {
        Self {
            full: config.tune == Tuning::Full,
            lm_head: config.train_lm_head,
            vision: config.train_vision,
            tied,
        }
    }

    pub fn selects(&self, name: &str) -> bool {
        if is_vision(name) {
            self.vision
        } else if name == "lm_head.weight" {
            self.lm_head
        } else if name.ends_with("embed_tokens.weight") && self.tied {
            self.lm_head && self.full
        } else {
            self.full
        }
    }
}

fn is_vision(name: &str) -> bool {
    name.starts_with("visual.") || name.starts_with("model.visual.")
}

/// Where base tensors come from.
enum Origin {
    Checkpoint(VarBuilder<'static>),
    /// Seeded random values, with the variables kept in `_vars` (the builder creates each once).
    Random {
        builder: VarBuilder<'static>,
        _vars: VarMap,
        scale: InitScale,
    },
}

/// One tensor handed to the model.
#[derive(Clone)]
struct Served {
    name: String,
    tensor: Tensor,
    var: Option<Var>,
}

/// A `VarBuilder` backend that serves base tensors, trainable ones as `Var`s, and records them all.
#[derive(Clone)]
struct ParamSource {
    origin: Arc<Origin>,
    rule: Trainable,
    served: Arc<Mutex<Vec<Served>>>,
}

impl ParamSource {
    fn served(&self) -> Result<Vec<Served>, TrainRunError> {
        self.served
            .lock()
            .map(|served| served.clone())
            .map_err(|_| TrainRunError::model("the parameter list's lock is poisoned"))
    }
}

/// The standard deviations of a from-scratch model's weights: the config's `initializer_range` for the decoder
/// and `vision_config.initializer_range` for the vision tower, each 0.02 (transformers' default for Qwen2 and
/// Qwen2-VL) when absent.
#[derive(Debug, Clone, Copy, PartialEq)]
struct InitScale {
    decoder: f64,
    vision: f64,
}

impl InitScale {
    const TRANSFORMERS_DEFAULT: f64 = 0.02;

    fn of(config: &Value) -> Self {
        let range = |table: Option<&Value>| {
            table
                .and_then(|t| t.get("initializer_range"))
                .and_then(Value::as_f64)
                .unwrap_or(Self::TRANSFORMERS_DEFAULT)
        };
        Self {
            decoder: range(Some(config)),
            vision: range(config.get("vision_config")),
        }
    }

    /// Initial values of the weight `name`: norms at one, biases at zero, every other weight normal with the
    /// decoder's or the vision tower's standard deviation.
    fn init(&self, name: &str) -> Init {
        let leaf = name
            .trim_end_matches(".weight")
            .rsplit('.')
            .next()
            .unwrap_or("");
        if name.ends_with(".bias") {
            Init::Const(0.0)
        } else if leaf.contains("norm") || leaf.starts_with("ln") {
            Init::Const(1.0)
        } else {
            let stdev = if is_vision(name) {
                self.vision
            } else {
                self.decoder
            };
            Init::Randn { mean: 0.0, stdev }
        }
    }
}

impl SimpleBackend for ParamSource {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let mut served = self
            .served
            .lock()
            .map_err(|_| candle_core::Error::Msg("the parameter list's lock is poisoned".into()))?;
        if let Some(known) = served.iter().find(|s| s.name == name) {
            return Ok(known.tensor.clone());
        }
        let base = match self.origin.as_ref() {
            Origin::Checkpoint(vb) => vb.get(shape, name)?,
            Origin::Random { builder, scale, .. } => builder
                .get_with_hints(shape, name, scale.init(name))?
                .detach(),
        }
        .to_dtype(dtype)?
        .to_device(device)?;
        let (tensor, var) = if self.rule.selects(name) {
            let var = Var::from_tensor(&base)?;
            (var.as_tensor().clone(), Some(var))
        } else {
            (base.detach(), None)
        };
        served.push(Served {
            name: name.to_string(),
            tensor: tensor.clone(),
            var,
        });
        Ok(tensor)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        match self.origin.as_ref() {
            Origin::Checkpoint(vb) => vb.get_unchecked_dtype(name, dtype)?.to_device(device),
            Origin::Random { .. } => {
                candle_core::bail!(
                    "{name}: a randomly initialised model needs the shape to create it"
                )
            }
        }
    }

    /// A random model is laid out as a transformers-4 checkpoint: `model.*`, `visual.*`, `lm_head`.
    fn contains_tensor(&self, name: &str) -> bool {
        match self.origin.as_ref() {
            Origin::Checkpoint(vb) => vb.contains_tensor(name),
            Origin::Random { .. } => {
                !name.starts_with("model.language_model.") && !name.starts_with("model.visual.")
            }
        }
    }
}

/// The reranker being trained: its network with the trainable variables marked, and what scoring needs besides
/// it. (Inference loads a [`crate::models::reranker::Reranker`] instead, from the files training writes.)
pub struct TrainableReranker {
    backbone: Backbone,
    tokenizer: Tokenizer,
    answers: AnswerIds,
    pad_id: u32,
    prompt: PromptSettings,
    /// The model's chat template, for the `template` prompt format.
    template: Option<ChatTemplate>,
    /// What a full fine-tuning's model directory copies; absent for a GGUF base.
    hf_files: Option<HfFiles>,
    base_name: String,
    served: Vec<Served>,
}

impl TrainableReranker {
    /// Builds the base model of `config` on `device`, attaches LoRA adapters when tuning with LoRA, and marks the
    /// trainable base weights. Random initialisation and adapter initialisation both follow `seed`.
    pub fn build(config: &TrainConfig, seed: u64, device: &Device) -> Result<Self, TrainRunError> {
        let dtype = config.precision_on(device).dtype();
        let source = config.model_source()?;
        let base = match &source {
            ModelSource::Pretrained(path) if path.is_file() => {
                BaseModel::gguf(path, dtype, device)?
            }
            ModelSource::Pretrained(dir) => BaseModel::hf_dir(dir, dtype, device)?,
            ModelSource::Tiny { vision, tokenizer } => {
                let loaded = Tokenizer::from_dir(tokenizer)?;
                let name = if *vision {
                    "umrank-tiny"
                } else {
                    "umrank-tiny-text"
                };
                let config_json = tiny_config(&loaded, *vision)?;
                BaseModel::random(
                    config_json,
                    PathBuf::from(name),
                    tokenizer,
                    seed,
                    dtype,
                    device,
                )?
            }
            ModelSource::Config { config, tokenizer } => BaseModel::random(
                read_json(config)?,
                config.clone(),
                tokenizer,
                seed,
                dtype,
                device,
            )?,
        };
        let BaseModel {
            decoder_config,
            hf_files,
            tokenizer,
            gguf_template,
            base_name,
            origin,
        } = base;
        let params = ParamSource {
            origin: Arc::new(origin),
            rule: Trainable::of(config, decoder_config.tie_word_embeddings),
            served: Arc::new(Mutex::new(Vec::new())),
        };
        let vb = VarBuilder::from_backend(Box::new(params.clone()), dtype, device.clone());
        let vision = hf_files
            .as_ref()
            .filter(|files| files.config_json.get("vision_config").is_some());
        let mut backbone = if let Some(files) = vision {
            Backbone::Vl(Box::new(
                Qwen2VlModel::from_var_builder(&files.config_json, &files.config_path, vb)
                    .map_err(TrainRunError::model)?,
            ))
        } else {
            Backbone::Text(Box::new(
                Decoder::new(&decoder_config, vb).map_err(TrainRunError::model)?,
            ))
        };
        if let (Tuning::Lora, Some(init)) = (config.tune, &config.init_adapter) {
            let dir = warm::resolve(init, config)?;
            let loaded = backbone.decoder_mut().load_lora(&dir, seed)?;
            warm::check_shape(&dir, loaded, &config.lora_config())?;
        } else if config.tune == Tuning::Lora {
            let attached = backbone
                .decoder_mut()
                .add_lora(&config.lora_config(), seed)?;
            if attached == 0 {
                return Err(TrainRunError::model(format!(
                    "no projection matches lora_targets {:?}",
                    config.lora_targets
                )));
            }
        }
        let prompt = config.prompt_settings();
        let template = match prompt.format {
            PromptFormat::Template => Some(match &hf_files {
                Some(files) => ChatTemplates::from_dir(&files.tokenizer_dir)
                    .and_then(|templates| templates.into_selected(None, false))
                    .map_err(PromptError::from)?,
                None => gguf_template.ok_or_else(|| {
                    TrainRunError::model(format!(
                        "{base_name}: prompt = \"template\" needs a chat template, and this GGUF carries none \
                         (tokenizer.chat_template)"
                    ))
                })?,
            }),
            _ => None,
        };
        // Building a prompt builder checks the format against the vocabulary before anything trains.
        PromptBuilder::for_settings(&tokenizer, &prompt, template.as_ref())?;
        let answers = tokenizer.answer_ids(&prompt.answer_tokens.yes, &prompt.answer_tokens.no)?;
        let pad_id = tokenizer.pad_id()?;
        let served = params.served()?;
        Ok(Self {
            backbone,
            tokenizer,
            answers,
            pad_id,
            prompt,
            template,
            hf_files,
            base_name,
            served,
        })
    }

    pub fn backbone(&self) -> &Backbone {
        &self.backbone
    }

    pub fn decoder(&self) -> &Decoder {
        self.backbone.decoder()
    }

    /// Runs every attention of the model (decoder and vision tower) on `kernel`.
    pub fn set_attention_kernel(&mut self, kernel: AttentionKernel) {
        self.backbone.set_attention_kernel(kernel);
    }

    /// Tokens per slice of a recomputed decoder MLP (see [`Decoder::set_recompute_rows`]).
    pub fn set_recompute_rows(&mut self, rows: usize) {
        self.backbone.decoder_mut().set_recompute_rows(rows);
    }

    pub fn vl(&self) -> Option<&Qwen2VlModel> {
        self.backbone.vision_language()
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// The prompt builder of the run's prompt format.
    pub fn prompt_builder(&self) -> Result<PromptBuilder<'_>, PromptError> {
        PromptBuilder::for_settings(&self.tokenizer, &self.prompt, self.template.as_ref())
    }

    /// Records the run's prompt settings in `dir`, beside the adapter or model written there.
    pub fn record_prompt(&self, dir: &Path) -> Result<(), TrainRunError> {
        self.prompt
            .record(dir)
            .map_err(|e| TrainRunError::model(e.to_string()))
    }

    pub fn answers(&self) -> AnswerIds {
        self.answers
    }

    /// The id right-padded rows are filled with (masked out, never an image placeholder).
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Every trainable variable with a stable name: LoRA matrices as `<projection>.lora_A` / `.lora_B`, base
    /// weights by checkpoint name. The order is fixed by the model, so optimizer state lines up across runs.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        let mut vars = Vec::new();
        for linear in self.decoder().linears() {
            if let Some(adapter) = linear.lora() {
                vars.push((format!("{}.lora_A", linear.path()), adapter.a().clone()));
                vars.push((format!("{}.lora_B", linear.path()), adapter.b().clone()));
            }
        }
        vars.extend(
            self.served
                .iter()
                .filter_map(|s| s.var.as_ref().map(|v| (s.name.clone(), v.clone()))),
        );
        vars
    }

    /// Every base tensor by checkpoint name (trained ones with their current values), LoRA excluded.
    pub fn base_weights(&self) -> Vec<(String, Tensor)> {
        self.served
            .iter()
            .map(|s| (s.name.clone(), s.tensor.clone()))
            .collect()
    }

    /// Whether a vision tower is being trained (its output cannot then be cached).
    pub fn trains_vision(&self) -> bool {
        self.served
            .iter()
            .any(|s| s.var.is_some() && is_vision(&s.name))
    }

    /// Where each adapter's dropout generator stands, in projection order.
    pub fn dropout_positions(&self) -> candle_core::Result<Vec<Option<u128>>> {
        self.decoder()
            .linears()
            .iter()
            .filter_map(|l| l.lora())
            .map(|adapter| adapter.dropout_position())
            .collect()
    }

    /// Restores positions [`Self::dropout_positions`] returned.
    pub fn set_dropout_positions(&self, positions: &[Option<u128>]) -> Result<(), TrainRunError> {
        let adapters: Vec<_> = self
            .decoder()
            .linears()
            .into_iter()
            .filter_map(|l| l.lora())
            .collect();
        if adapters.len() != positions.len() {
            return Err(TrainRunError::model(format!(
                "{} dropout positions for {} adapters",
                positions.len(),
                adapters.len()
            )));
        }
        for (adapter, position) in adapters.iter().zip(positions) {
            if let Some(position) = position {
                adapter.set_dropout_position(*position)?;
            }
        }
        Ok(())
    }

    /// Writes the LoRA adapters in PEFT's format into `dir`, plus [`outputs::train::EXTRA_WEIGHTS`] when base weights trained too.
    pub fn save_adapter(&self, dir: &Path) -> Result<(), TrainRunError> {
        self.decoder().save_lora(dir, Some(&self.base_name))?;
        let extra: Vec<(String, Tensor)> = self
            .served
            .iter()
            .filter(|s| s.var.is_some())
            .map(|s| (s.name.clone(), s.tensor.clone()))
            .collect();
        if !extra.is_empty() {
            write_safetensors(&dir.join(outputs::train::EXTRA_WEIGHTS), &extra)?;
        }
        Ok(())
    }

    /// Writes a complete Hugging Face model directory: config.json, [`outputs::train::FULL_WEIGHTS`] and the tokenizer files.
    pub fn save_full(&self, dir: &Path) -> Result<(), TrainRunError> {
        let Some(files) = &self.hf_files else {
            return Err(TrainRunError::model(format!(
                "{}: a GGUF base has no config.json to write a fully fine-tuned model directory with",
                self.base_name
            )));
        };
        std::fs::create_dir_all(dir).map_err(TrainRunError::io(dir))?;
        let config_path = dir.join("config.json");
        let text = serde_json::to_string_pretty(&files.config_json)
            .map_err(|e| TrainRunError::model(format!("config.json: {e}")))?;
        std::fs::write(&config_path, text + "\n").map_err(TrainRunError::io(&config_path))?;
        write_safetensors(
            &dir.join(outputs::train::FULL_WEIGHTS),
            &self.base_weights(),
        )?;
        for file in [
            "tokenizer.json",
            "tokenizer_config.json",
            TEMPLATE_JINJA_FILE,
        ] {
            let from = files.tokenizer_dir.join(file);
            if from.is_file() {
                let to = dir.join(file);
                std::fs::copy(&from, &to).map_err(TrainRunError::io(&to))?;
            }
        }
        Ok(())
    }
}

/// Named tensors into one safetensors file, sorted by name so the bytes depend on the values only.
pub(crate) fn write_safetensors(
    path: &Path,
    tensors: &[(String, Tensor)],
) -> Result<(), TrainRunError> {
    let sorted: BTreeMap<String, Tensor> = tensors
        .iter()
        .map(|(name, tensor)| Ok((name.clone(), tensor.detach().to_device(&Device::Cpu)?)))
        .collect::<candle_core::Result<_>>()?;
    safetensors::serialize_to_file(&sorted, None, path).map_err(|e| TrainRunError::Checkpoint {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

fn read_json(path: &Path) -> Result<Value, TrainRunError> {
    let text = std::fs::read_to_string(path).map_err(TrainRunError::io(path))?;
    serde_json::from_str(&text).map_err(|e| TrainRunError::Data {
        path: path.to_path_buf(),
        message: format!("invalid JSON: {e}"),
    })
}

/// A Hugging Face model's config and tokenizer files, which a fully fine-tuned model directory copies.
struct HfFiles {
    config_json: Value,
    config_path: PathBuf,
    tokenizer_dir: PathBuf,
}

/// The base model before LoRA and the trainable rule apply: its architecture, tokenizer and tensors.
struct BaseModel {
    decoder_config: DecoderConfig,
    hf_files: Option<HfFiles>,
    tokenizer: Tokenizer,
    /// The chat template a GGUF carries in its metadata (a model directory's is read from its files).
    gguf_template: Option<ChatTemplate>,
    base_name: String,
    origin: Origin,
}

impl BaseModel {
    /// A Hugging Face model directory: config.json, safetensors weights and tokenizer files.
    fn hf_dir(dir: &Path, dtype: DType, device: &Device) -> Result<Self, TrainRunError> {
        let config_path = dir.join("config.json");
        let config_json = read_json(&config_path)?;
        let origin = Origin::Checkpoint(
            Weights::from_model_dir(dir)
                .map_err(TrainRunError::model)?
                .into_var_builder(dtype, device),
        );
        Self::with_json(
            config_json,
            config_path,
            dir,
            dir.display().to_string(),
            origin,
        )
    }

    /// A llama GGUF file, dequantised; its architecture and vocabulary come from the file's metadata, so a
    /// quantised release trains without a Hugging Face copy of the same model.
    fn gguf(path: &Path, dtype: DType, device: &Device) -> Result<Self, TrainRunError> {
        let checkpoint = GgufCheckpoint::read(path, device).map_err(TrainRunError::model)?;
        let tokenizer =
            gguf_tokenizer(checkpoint.tokenizer(), path).map_err(TrainRunError::model)?;
        let gguf_template =
            gguf_chat_template(&checkpoint, &tokenizer, path).map_err(TrainRunError::model)?;
        Ok(Self {
            decoder_config: checkpoint.config().clone(),
            hf_files: None,
            tokenizer,
            gguf_template,
            base_name: path.display().to_string(),
            origin: Origin::Checkpoint(checkpoint.weights().into_var_builder(dtype, device)),
        })
    }

    /// Seeded random weights for the architecture `config_json` describes, with `tokenizer_dir`'s tokenizer.
    fn random(
        config_json: Value,
        config_path: PathBuf,
        tokenizer_dir: &Path,
        seed: u64,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, TrainRunError> {
        let vars = VarMap::new();
        let origin = Origin::Random {
            builder: seeded_var_builder(&vars, seed, dtype, device),
            _vars: vars,
            scale: InitScale::of(&config_json),
        };
        let name = config_path.display().to_string();
        Self::with_json(config_json, config_path, tokenizer_dir, name, origin)
    }

    fn with_json(
        config_json: Value,
        config_path: PathBuf,
        tokenizer_dir: &Path,
        base_name: String,
        origin: Origin,
    ) -> Result<Self, TrainRunError> {
        let decoder_config =
            DecoderConfig::from_json(&config_json, &config_path).map_err(TrainRunError::model)?;
        Ok(Self {
            decoder_config,
            tokenizer: Tokenizer::from_dir(tokenizer_dir)?,
            gguf_template: None,
            hf_files: Some(HfFiles {
                config_json,
                config_path,
                tokenizer_dir: tokenizer_dir.to_owned(),
            }),
            base_name,
            origin,
        })
    }
}

/// The built-in tiny architecture over `tokenizer`'s vocabulary: a 2-layer Qwen2 decoder of width 64 with an
/// untied (so separately freezable) LM head, and for the VL variant a 2-block vision tower of width 32 with
/// Qwen2-VL's patching (14 px patches, 2 x 2 merge). Small enough to train on a CPU in a minute.
///
/// Weights start at a standard deviation of 1/sqrt(width), not transformers' 0.02: at width 64, 0.02 leaves the
/// attention logits near zero and their gradients (each the product of two small projections) smaller still, and
/// the model sat at the label prior for hundreds of steps (text -> text SFT with mined negatives: loss 2.50 -> 2.16
/// in 300 steps at 0.02, 2.50 -> 0.85 at 1/sqrt(64)).
pub fn tiny_config(tokenizer: &Tokenizer, vision: bool) -> Result<Value, TrainRunError> {
    const HIDDEN: usize = 64;
    const VISION_WIDTH: usize = 32;
    let width_scaled = |width: usize| 1.0 / (width as f64).sqrt();
    let vocab = tokenizer.vocab_size(true);
    let mut config = json!({
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": vocab,
        "hidden_size": HIDDEN,
        "intermediate_size": 2 * HIDDEN,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "rope_theta": 10000.0,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": false,
        "torch_dtype": "float32",
        "initializer_range": width_scaled(HIDDEN),
    });
    if vision {
        let id = |token: &str| tokenizer.special_token_id(token);
        config["architectures"] = json!(["Qwen2VLForConditionalGeneration"]);
        config["model_type"] = json!("qwen2_vl");
        config["rope_scaling"] = json!({"type": "mrope", "mrope_section": [2, 3, 3]});
        config["image_token_id"] = json!(id(IMAGE_PAD)?);
        config["vision_start_token_id"] = json!(id(VISION_START)?);
        config["vision_end_token_id"] = json!(id(VISION_END)?);
        config["vision_config"] = json!({
            "model_type": "qwen2_vl",
            "depth": 2,
            "embed_dim": VISION_WIDTH,
            "hidden_size": HIDDEN,
            "num_heads": 2,
            "mlp_ratio": 2,
            "hidden_act": "quick_gelu",
            "in_chans": 3,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "initializer_range": width_scaled(VISION_WIDTH),
        });
    }
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stdev(init: Init) -> f64 {
        match init {
            Init::Randn { stdev, .. } => stdev,
            other => panic!("expected a normal init, got {other:?}"),
        }
    }

    #[test]
    fn init_scale_reads_both_initializer_ranges_and_defaults_to_transformers() {
        let scale = InitScale::of(&json!({
            "initializer_range": 0.125,
            "vision_config": {"initializer_range": 0.25}
        }));
        assert_eq!(
            stdev(scale.init("model.layers.0.self_attn.q_proj.weight")),
            0.125
        );
        assert_eq!(stdev(scale.init("lm_head.weight")), 0.125);
        assert_eq!(stdev(scale.init("visual.blocks.0.attn.qkv.weight")), 0.25);
        assert!(matches!(scale.init("model.norm.weight"), Init::Const(v) if v == 1.0));
        assert!(matches!(scale.init("visual.merger.ln_q.weight"), Init::Const(v) if v == 1.0));
        assert!(
            matches!(scale.init("model.layers.0.self_attn.q_proj.bias"), Init::Const(v) if v == 0.0)
        );

        let defaults = InitScale::of(&json!({"vision_config": {}}));
        assert_eq!(defaults.decoder, 0.02);
        assert_eq!(defaults.vision, 0.02);
    }
}
