//! The text decoder's configuration, read from a Hugging Face `config.json`.
//!
//! Two layouts reach us. Released checkpoints were written by transformers 4: the text fields sit at the top level
//! (next to a nested `vision_config` for Qwen2-VL), `rope_theta` is a top-level number and Qwen2-VL's M-RoPE is
//! declared as `rope_scaling: {type: "mrope", mrope_section: [...]}`. transformers 5 nests a VL model's text fields
//! under `text_config` and folds `rope_theta` and `mrope_section` into `rope_parameters`. Both are read into one
//! [`DecoderConfig`]. Keys transformers gives a default are defaulted the same way; the structural sizes, which it
//! cannot guess either, are required. Anything the decoder would silently get wrong (a rope scaling other than
//! plain or M-RoPE, sliding-window attention, MLP biases) is refused.

use crate::models::layers::activation::Activation;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The decoder families the configuration can describe; they differ only in biases, q/k norms and RoPE flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Architecture {
    Llama,
    Qwen2,
    /// The text part of Qwen2-VL and Qwen2.5-VL: Qwen2 with M-RoPE.
    Qwen2Vl,
    Qwen3,
}

impl Architecture {
    fn from_model_type(model_type: &str) -> Option<Self> {
        match model_type {
            "llama" => Some(Self::Llama),
            "qwen2" => Some(Self::Qwen2),
            "qwen2_vl" | "qwen2_5_vl" => Some(Self::Qwen2Vl),
            "qwen3" => Some(Self::Qwen3),
            _ => None,
        }
    }

    /// transformers' configuration defaults for the keys a config.json may leave out.
    fn defaults(self) -> Defaults {
        match self {
            Self::Llama => Defaults {
                rms_norm_eps: 1e-6,
                rope_theta: 10_000.0,
                max_position_embeddings: 2048,
            },
            Self::Qwen2 | Self::Qwen3 => Defaults {
                rms_norm_eps: 1e-6,
                rope_theta: 10_000.0,
                max_position_embeddings: 32_768,
            },
            Self::Qwen2Vl => Defaults {
                rms_norm_eps: 1e-5,
                rope_theta: 1_000_000.0,
                max_position_embeddings: 32_768,
            },
        }
    }
}

struct Defaults {
    rms_norm_eps: f64,
    rope_theta: f64,
    max_position_embeddings: usize,
}

/// Everything the decoder needs to build itself.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    pub architecture: Architecture,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    /// Explicit in Qwen3 (where `heads * head_dim` need not equal `hidden_size`), otherwise `hidden / heads`.
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Qwen2-VL's M-RoPE split of the rotary bands over (temporal, height, width) positions.
    pub mrope_section: Option<Vec<usize>>,
    /// The LM head reuses the token embedding matrix (no `lm_head.weight` in the files).
    pub tie_word_embeddings: bool,
    /// Biases on the q, k and v projections (always in Qwen2 and Qwen2-VL; `attention_bias` in Llama and Qwen3).
    pub qkv_bias: bool,
    /// Bias on the output projection (`attention_bias` in Llama and Qwen3; never in Qwen2).
    pub o_bias: bool,
    /// Per-head RMSNorm of queries and keys before the rotary (Qwen3).
    pub qk_norm: bool,
    pub hidden_act: Activation,
    pub max_position_embeddings: usize,
    /// The dtype the checkpoint was saved in (`torch_dtype`, or `dtype` in transformers 5), informational.
    pub torch_dtype: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: missing key `{key}`")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: key `{key}` must be {expected}, found {found}")]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
        found: String,
    },
    #[error("{path}: {what} is not supported")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: inconsistent configuration: {what}")]
    Inconsistent { path: PathBuf, what: String },
}

impl DecoderConfig {
    /// Reads `config.json` (or any file in its format).
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let value: Value = serde_json::from_str(&text).map_err(|source| ConfigError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&value, path)
    }

    /// Reads an already parsed config; `path` only names the source in errors.
    pub fn from_json(value: &Value, path: &Path) -> Result<Self, ConfigError> {
        let top = Section::root(value, path)?;
        let model_type = top.required_str("model_type")?;
        let architecture =
            Architecture::from_model_type(model_type).ok_or_else(|| ConfigError::Unsupported {
                path: path.to_path_buf(),
                what: format!("model_type `{model_type}`"),
            })?;
        let text = match top.object("text_config")? {
            Some(nested) => nested,
            None => top.clone(),
        };
        let defaults = architecture.defaults();

        let hidden_size = text.required_usize("hidden_size")?;
        let num_attention_heads = text.required_usize("num_attention_heads")?;
        let head_dim = match text.usize("head_dim")? {
            Some(dim) => dim,
            None if architecture == Architecture::Qwen3 => 128,
            None => whole_division(hidden_size, num_attention_heads, path)?,
        };
        let attention_bias = text.bool("attention_bias")?.unwrap_or(false);
        let (qkv_bias, o_bias) = match architecture {
            Architecture::Qwen2 | Architecture::Qwen2Vl => (true, false),
            Architecture::Llama | Architecture::Qwen3 => (attention_bias, attention_bias),
        };
        let rope = Rope::read(&text, defaults.rope_theta)?;
        if architecture == Architecture::Qwen2Vl && rope.mrope_section.is_none() {
            return Err(ConfigError::MissingKey {
                path: path.to_path_buf(),
                key: rope.section_key(&text),
            });
        }
        text.refuse_true("use_sliding_window", "sliding-window attention")?;
        text.refuse_true("mlp_bias", "a bias in the MLP projections")?;

        let config = Self {
            architecture,
            vocab_size: text.required_usize("vocab_size")?,
            hidden_size,
            intermediate_size: text.required_usize("intermediate_size")?,
            num_hidden_layers: text.required_usize("num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: text
                .usize("num_key_value_heads")?
                .unwrap_or(num_attention_heads),
            head_dim,
            rms_norm_eps: text.f64("rms_norm_eps")?.unwrap_or(defaults.rms_norm_eps),
            rope_theta: rope.theta,
            mrope_section: rope.mrope_section,
            tie_word_embeddings: match text.bool("tie_word_embeddings")? {
                Some(tied) => tied,
                None => top.bool("tie_word_embeddings")?.unwrap_or(false),
            },
            qkv_bias,
            o_bias,
            qk_norm: architecture == Architecture::Qwen3,
            hidden_act: text.activation("hidden_act")?,
            max_position_embeddings: text
                .usize("max_position_embeddings")?
                .unwrap_or(defaults.max_position_embeddings),
            torch_dtype: [&text, &top]
                .iter()
                .find_map(|section| {
                    ["torch_dtype", "dtype"]
                        .iter()
                        .find_map(|key| section.get(key).and_then(Value::as_str))
                })
                .map(str::to_string),
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the relations between sizes that the layers rely on, so that a bad config fails here with its file
    /// named rather than as a shape error deep inside a forward pass.
    pub fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let inconsistent = |what: String| ConfigError::Inconsistent {
            path: path.to_path_buf(),
            what,
        };
        let sizes = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
        ];
        if let Some((key, _)) = sizes.iter().find(|(_, size)| *size == 0) {
            return Err(inconsistent(format!("{key} is 0")));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(inconsistent(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            )));
        }
        if self.head_dim % 2 != 0 {
            return Err(inconsistent(format!(
                "head_dim {} must be even for the rotary embedding",
                self.head_dim
            )));
        }
        if let Some(section) = &self.mrope_section {
            let sum: usize = section.iter().sum();
            if sum != self.head_dim / 2 {
                return Err(inconsistent(format!(
                    "mrope_section {section:?} sums to {sum}, expected head_dim / 2 = {}",
                    self.head_dim / 2
                )));
            }
        }
        Ok(())
    }
}

fn whole_division(hidden: usize, heads: usize, path: &Path) -> Result<usize, ConfigError> {
    if heads == 0 || hidden % heads != 0 {
        return Err(ConfigError::Inconsistent {
            path: path.to_path_buf(),
            what: format!(
                "hidden_size {hidden} is not a multiple of num_attention_heads {heads}, and no head_dim is given"
            ),
        });
    }
    Ok(hidden / heads)
}

/// The rotary settings, wherever the layout keeps them.
struct Rope {
    theta: f64,
    mrope_section: Option<Vec<usize>>,
    /// `rope_parameters` (transformers 5) or `rope_scaling` (transformers 4), when present.
    source_key: Option<&'static str>,
}

impl Rope {
    fn read(text: &Section, default_theta: f64) -> Result<Self, ConfigError> {
        let (params, source_key) = match text.object("rope_parameters")? {
            Some(params) => (Some(params), Some("rope_parameters")),
            None => match text.object("rope_scaling")? {
                Some(params) => (Some(params), Some("rope_scaling")),
                None => (None, None),
            },
        };
        let mut theta = text.f64("rope_theta")?;
        let mut mrope_section = None;
        if let Some(params) = &params {
            // transformers 5 writes `rope_type: default` next to a legacy `type: mrope`; both must be plain or
            // M-RoPE, which differ only in where positions come from.
            for key in ["rope_type", "type"] {
                if let Some(kind) = params.str(key)? {
                    if kind != "default" && kind != "mrope" {
                        return Err(ConfigError::Unsupported {
                            path: params.path.to_path_buf(),
                            what: format!("rope scaling `{}` = `{kind}`", params.key(key)),
                        });
                    }
                }
            }
            theta = theta.or(params.f64("rope_theta")?);
            mrope_section = params.usize_list("mrope_section")?;
        }
        Ok(Self {
            theta: theta.unwrap_or(default_theta),
            mrope_section,
            source_key,
        })
    }

    /// Where a missing `mrope_section` was expected, for the error message.
    fn section_key(&self, text: &Section) -> String {
        text.key(&format!(
            "{}.mrope_section",
            self.source_key.unwrap_or("rope_scaling")
        ))
    }
}

/// A JSON object inside config.json, with the dotted path of its keys for error messages.
#[derive(Clone)]
struct Section<'a> {
    map: &'a Map<String, Value>,
    prefix: String,
    path: &'a Path,
}

impl<'a> Section<'a> {
    fn root(value: &'a Value, path: &'a Path) -> Result<Self, ConfigError> {
        let map = value.as_object().ok_or_else(|| ConfigError::WrongType {
            path: path.to_path_buf(),
            key: "(top level)".into(),
            expected: "a JSON object",
            found: json_kind(value).into(),
        })?;
        Ok(Self {
            map,
            prefix: String::new(),
            path,
        })
    }

    fn key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }

    /// A key whose value is `null` counts as absent, as in transformers.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|value| !value.is_null())
    }

    fn wrong_type(&self, key: &str, expected: &'static str, found: &Value) -> ConfigError {
        ConfigError::WrongType {
            path: self.path.to_path_buf(),
            key: self.key(key),
            expected,
            found: json_kind(found).into(),
        }
    }

    fn missing(&self, key: &str) -> ConfigError {
        ConfigError::MissingKey {
            path: self.path.to_path_buf(),
            key: self.key(key),
        }
    }

    fn object(&self, key: &str) -> Result<Option<Section<'a>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Section {
                map,
                prefix: format!("{}.", self.key(key)),
                path: self.path,
            })),
            Some(other) => Err(self.wrong_type(key, "an object", other)),
        }
    }

    fn usize(&self, key: &str) -> Result<Option<usize>, ConfigError> {
        self.get(key)
            .map(|value| as_usize(value).ok_or_else(|| self.wrong_type(key, "a count", value)))
            .transpose()
    }

    fn required_usize(&self, key: &str) -> Result<usize, ConfigError> {
        self.usize(key)?.ok_or_else(|| self.missing(key))
    }

    fn usize_list(&self, key: &str) -> Result<Option<Vec<usize>>, ConfigError> {
        let Some(value) = self.get(key) else {
            return Ok(None);
        };
        let wrong = || self.wrong_type(key, "a list of counts", value);
        let items = value.as_array().ok_or_else(wrong)?;
        items
            .iter()
            .map(|item| as_usize(item).ok_or_else(wrong))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn f64(&self, key: &str) -> Result<Option<f64>, ConfigError> {
        self.get(key)
            .map(|value| {
                value
                    .as_f64()
                    .ok_or_else(|| self.wrong_type(key, "a number", value))
            })
            .transpose()
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.get(key)
            .map(|value| {
                value
                    .as_bool()
                    .ok_or_else(|| self.wrong_type(key, "true or false", value))
            })
            .transpose()
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>, ConfigError> {
        self.get(key)
            .map(|value| {
                value
                    .as_str()
                    .ok_or_else(|| self.wrong_type(key, "a string", value))
            })
            .transpose()
    }

    fn required_str(&self, key: &str) -> Result<&'a str, ConfigError> {
        self.str(key)?.ok_or_else(|| self.missing(key))
    }

    fn activation(&self, key: &str) -> Result<Activation, ConfigError> {
        let Some(name) = self.str(key)? else {
            return Ok(Activation::Silu);
        };
        serde_json::from_value(Value::String(name.to_string())).map_err(|_| {
            ConfigError::Unsupported {
                path: self.path.to_path_buf(),
                what: format!("`{}` = `{name}`", self.key(key)),
            }
        })
    }

    fn refuse_true(&self, key: &str, what: &str) -> Result<(), ConfigError> {
        if self.bool(key)? == Some(true) {
            return Err(ConfigError::Unsupported {
                path: self.path.to_path_buf(),
                what: format!("{what} (`{}` = true)", self.key(key)),
            });
        }
        Ok(())
    }
}

fn as_usize(value: &Value) -> Option<usize> {
    value.as_u64().and_then(|n| usize::try_from(n).ok())
}

fn json_kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<DecoderConfig, ConfigError> {
        DecoderConfig::from_json(&value, Path::new("dir/config.json"))
    }

    /// The shape of Qwen2-VL-2B-Instruct's released (transformers 4) config.json.
    fn qwen2_vl_v4() -> Value {
        json!({
            "architectures": ["Qwen2VLForConditionalGeneration"],
            "attention_dropout": 0.0,
            "bos_token_id": 151643,
            "eos_token_id": 151645,
            "vision_start_token_id": 151652,
            "vision_end_token_id": 151653,
            "vision_token_id": 151654,
            "image_token_id": 151655,
            "video_token_id": 151656,
            "hidden_act": "silu",
            "hidden_size": 1536,
            "initializer_range": 0.02,
            "intermediate_size": 8960,
            "max_position_embeddings": 32768,
            "max_window_layers": 28,
            "model_type": "qwen2_vl",
            "num_attention_heads": 12,
            "num_hidden_layers": 28,
            "num_key_value_heads": 2,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "sliding_window": 32768,
            "tie_word_embeddings": true,
            "torch_dtype": "bfloat16",
            "transformers_version": "4.41.2",
            "use_cache": true,
            "use_sliding_window": false,
            "vision_config": {
                "depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
                "hidden_size": 1536, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
                "temporal_patch_size": 2
            },
            "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]},
            "vocab_size": 151936
        })
    }

    #[test]
    fn reads_transformers4_qwen2_vl() {
        let config = parse(qwen2_vl_v4()).unwrap();
        assert_eq!(config.architecture, Architecture::Qwen2Vl);
        assert_eq!(config.head_dim, 128);
        assert_eq!(config.num_key_value_heads, 2);
        assert_eq!(config.mrope_section, Some(vec![16, 24, 24]));
        assert_eq!(config.rope_theta, 1e6);
        assert!(config.tie_word_embeddings && config.qkv_bias && !config.o_bias && !config.qk_norm);
        assert_eq!(config.torch_dtype.as_deref(), Some("bfloat16"));
    }

    #[test]
    fn reads_transformers5_nested_text_config() {
        let config = parse(json!({
            "model_type": "qwen2_5_vl",
            "dtype": "bfloat16",
            "tie_word_embeddings": true,
            "text_config": {
                "model_type": "qwen2_5_vl_text",
                "vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008,
                "num_hidden_layers": 36, "num_attention_heads": 16, "num_key_value_heads": 2,
                "rms_norm_eps": 1e-06,
                "rope_parameters": {"rope_type": "default", "type": "mrope", "rope_theta": 1000000.0,
                                    "mrope_section": [16, 24, 24]}
            },
            "vision_config": {"depth": 32}
        }))
        .unwrap();
        assert_eq!(config.architecture, Architecture::Qwen2Vl);
        assert_eq!((config.hidden_size, config.head_dim), (2048, 128));
        assert_eq!(config.mrope_section, Some(vec![16, 24, 24]));
        assert_eq!(config.rope_theta, 1e6);
        assert!(
            config.tie_word_embeddings,
            "falls back to the top-level key"
        );
        assert_eq!(config.torch_dtype.as_deref(), Some("bfloat16"));
    }

    #[test]
    fn reads_qwen3_and_llama() {
        let qwen3 = parse(json!({
            "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072,
            "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
            "rope_theta": 1000000, "tie_word_embeddings": true, "attention_bias": false
        }))
        .unwrap();
        assert_eq!(qwen3.head_dim, 128);
        assert!(qwen3.qk_norm && !qwen3.qkv_bias);
        assert_eq!(qwen3.mrope_section, None);

        let llama = parse(json!({
            "model_type": "llama", "vocab_size": 49152, "hidden_size": 576, "intermediate_size": 1536,
            "num_hidden_layers": 30, "num_attention_heads": 9, "num_key_value_heads": 3,
            "rope_theta": 100000, "rms_norm_eps": 1e-05, "attention_bias": true, "rope_scaling": null
        }))
        .unwrap();
        assert_eq!(llama.head_dim, 64);
        assert!(llama.qkv_bias && llama.o_bias && !llama.tie_word_embeddings);
        assert_eq!(llama.rope_theta, 1e5);
        assert_eq!(llama.hidden_act, Activation::Silu);
    }

    #[test]
    fn missing_key_is_named_with_its_file() {
        let mut value = qwen2_vl_v4();
        value.as_object_mut().unwrap().remove("hidden_size");
        let err = parse(value).unwrap_err().to_string();
        assert!(
            err.contains("dir/config.json") && err.contains("`hidden_size`"),
            "{err}"
        );

        let mut value = qwen2_vl_v4();
        value.as_object_mut().unwrap().remove("rope_scaling");
        let err = parse(value).unwrap_err().to_string();
        assert!(err.contains("`rope_scaling.mrope_section`"), "{err}");

        let err = parse(json!({"model_type": "qwen2_vl", "text_config": {"hidden_size": 8}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("`text_config.num_attention_heads`"), "{err}");
    }

    #[test]
    fn refuses_what_the_decoder_cannot_do() {
        let llama = |extra: Value| {
            let mut value = json!({
                "model_type": "llama", "vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
                "num_hidden_layers": 1, "num_attention_heads": 2
            });
            value
                .as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            parse(value).map_err(|err| err.to_string())
        };
        let err =
            llama(json!({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}})).unwrap_err();
        assert!(err.contains("`rope_scaling.rope_type` = `llama3`"), "{err}");
        let err = llama(json!({"mlp_bias": true})).unwrap_err();
        assert!(err.contains("mlp_bias"), "{err}");
        let err = llama(json!({"hidden_act": "relu"})).unwrap_err();
        assert!(err.contains("`hidden_act` = `relu`"), "{err}");
        let err = llama(json!({"hidden_size": "8"})).unwrap_err();
        assert!(err.contains("`hidden_size` must be a count"), "{err}");
        let err = llama(json!({"num_key_value_heads": 3})).unwrap_err();
        assert!(err.contains("not a multiple"), "{err}");
        let err = parse(json!({"model_type": "gpt2"}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("model_type `gpt2`"), "{err}");
        assert!(llama(json!({})).is_ok());
    }

    #[test]
    fn mrope_section_must_cover_half_the_head() {
        let mut value = qwen2_vl_v4();
        value["rope_scaling"]["mrope_section"] = json!([16, 24, 20]);
        let err = parse(value).unwrap_err().to_string();
        assert!(err.contains("sums to 60"), "{err}");
    }
}
