//! The trained model as a Hugging Face CLIP directory: config.json, model.safetensors, tokenizer.json,
//! tokenizer_config.json and preprocessor_config.json, loadable by the embed stage and by transformers'
//! `CLIPModel` with `PreTrainedTokenizerFast`.

use std::fs;
use std::path::{Path, PathBuf};

use candle_nn::VarMap;
use serde_json::{json, Value};

use super::config::Architecture;
use super::error::DualEncoderError;
use super::vocab::{END_OF_TEXT, END_OF_TEXT_ID, PAD, PAD_ID, UNK};

/// CLIP's initial logit scale, ln(1 / 0.07).
const LOGIT_SCALE_INIT: f64 = 2.6592;

/// transformers' `CLIPConfig` for `arch` and a vocabulary of `vocab_size` tokens.
pub fn clip_config(arch: &Architecture, vocab_size: usize) -> Value {
    let tower = |model_type: &str| {
        json!({
            "model_type": model_type,
            "hidden_size": arch.width,
            "intermediate_size": 4 * arch.width,
            "num_hidden_layers": arch.layers,
            "num_attention_heads": arch.heads,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": 1e-5,
            "attention_dropout": 0.0,
            "initializer_range": 0.02,
            "initializer_factor": 1.0,
            "projection_dim": arch.projection_dim,
        })
    };
    let mut text = tower("clip_text_model");
    text["vocab_size"] = vocab_size.into();
    text["max_position_embeddings"] = arch.max_text_tokens.into();
    text["eos_token_id"] = END_OF_TEXT_ID.into();
    text["bos_token_id"] = END_OF_TEXT_ID.into();
    text["pad_token_id"] = PAD_ID.into();
    let mut vision = tower("clip_vision_model");
    vision["image_size"] = arch.image_size.into();
    vision["patch_size"] = arch.patch_size.into();
    vision["num_channels"] = 3.into();
    json!({
        "architectures": ["CLIPModel"],
        "model_type": "clip",
        "projection_dim": arch.projection_dim,
        "logit_scale_init_value": LOGIT_SCALE_INIT,
        "initializer_factor": 1.0,
        "dtype": "float32",
        "text_config": text,
        "vision_config": vision,
    })
}

/// A `CLIPImageProcessor` config: bicubic resize of the shortest edge and a centre crop to `image_size`, then
/// CLIP's normalisation.
pub fn preprocessor_config(arch: &Architecture) -> Value {
    json!({
        "image_processor_type": "CLIPImageProcessor",
        "do_resize": true,
        "size": {"shortest_edge": arch.image_size},
        "resample": 3,
        "do_center_crop": true,
        "crop_size": {"height": arch.image_size, "width": arch.image_size},
        "do_rescale": true,
        "rescale_factor": 1.0 / 255.0,
        "do_normalize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "do_convert_rgb": true,
    })
}

fn tokenizer_config(arch: &Architecture) -> Value {
    json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": arch.max_text_tokens,
        "unk_token": UNK,
        "eos_token": END_OF_TEXT,
        "pad_token": PAD,
    })
}

/// The files of a model directory, written to `dir` all at once: into a hidden sibling first, renamed into place
/// when complete, so that a killed run never leaves a directory that loads half-written weights.
pub struct ModelFiles<'a> {
    pub config: &'a Value,
    pub preprocessor: &'a Value,
    pub tokenizer: &'a Value,
    pub arch: &'a Architecture,
    pub weights: &'a VarMap,
}

impl ModelFiles<'_> {
    pub fn write(&self, dir: &Path) -> Result<(), DualEncoderError> {
        let partial = partial_path(dir);
        if partial.exists() {
            fs::remove_dir_all(&partial).map_err(DualEncoderError::io(&partial))?;
        }
        fs::create_dir_all(&partial).map_err(DualEncoderError::io(&partial))?;
        for (name, value) in [
            ("config.json", self.config),
            ("preprocessor_config.json", self.preprocessor),
            ("tokenizer.json", self.tokenizer),
            ("tokenizer_config.json", &tokenizer_config(self.arch)),
        ] {
            let path = partial.join(name);
            let text = serde_json::to_string_pretty(value).map_err(|e| DualEncoderError::Io {
                path: path.clone(),
                source: e.into(),
            })?;
            fs::write(&path, text + "\n").map_err(DualEncoderError::io(&path))?;
        }
        let weights = partial.join("model.safetensors");
        self.weights
            .save(&weights)
            .map_err(DualEncoderError::compute("save model.safetensors"))?;
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(DualEncoderError::io(dir))?;
        }
        fs::rename(&partial, dir).map_err(DualEncoderError::io(dir))
    }
}

fn partial_path(dir: &Path) -> PathBuf {
    let mut name = std::ffi::OsString::from(".");
    name.push(dir.file_name().unwrap_or_default());
    name.push(".partial");
    dir.with_file_name(name)
}
