//! Llama-architecture GGUF checkpoints (llama.cpp's format), dequantised on load into the Hugging Face tensor
//! names, so that the same [`Decoder`] runs them.
//!
//! Two conventions differ from a Hugging Face checkpoint besides the names:
//! - llama.cpp rotates adjacent pairs of a head's query/key channels (GPT-J style) for the llama architecture, so
//!   its converter reorders each head's q and k rows from transformers' rotate-half pairing `(i, i + d/2)` to
//!   `(2i, 2i + 1)`. We undo that reordering on load, after which the rotate-half rotary applies unchanged.
//! - GGUF lists dimensions innermost first; candle's reader already reverses them to the usual `(out, in)`.
//!
//! The configuration comes from the `llama.*` metadata and the tokenizer from the embedded vocabulary (see
//! [`crate::models::text::gguf_tokenizer`]). Quantised tensors are expanded to f32 here: training needs dense weights anyway,
//! and at the sizes this serves (SmolLM2-135M for tests) memory is not the constraint.

use crate::models::decoder::Decoder;
use crate::models::formats::hf_config::{Architecture, ConfigError, DecoderConfig};
use crate::models::formats::weights::Weights;
use crate::models::layers::activation::Activation;
use crate::models::text::gguf_tokenizer;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use tokenizers::Tokenizer;

#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot open {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not a readable GGUF file: {source}")]
    Read {
        path: PathBuf,
        source: Box<candle_core::Error>,
    },
    #[error("{path}: missing metadata `{key}`")]
    MissingKey { path: PathBuf, key: String },
    #[error("{path}: metadata `{key}` must be {expected}")]
    WrongType {
        path: PathBuf,
        key: String,
        expected: &'static str,
    },
    #[error("{path}: {what} is not supported")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: tensor `{name}`: {source}")]
    Tensor {
        path: PathBuf,
        name: String,
        source: Box<candle_core::Error>,
    },
    #[error("{path}: cannot build the tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{path}: cannot build the decoder: {source}")]
    Build {
        path: PathBuf,
        source: Box<candle_core::Error>,
    },
}

/// A GGUF checkpoint, read and dequantised.
pub struct GgufCheckpoint {
    path: PathBuf,
    config: DecoderConfig,
    tokenizer: Tokenizer,
    bos_token_id: Option<u32>,
    eos_token_id: Option<u32>,
    chat_template: Option<String>,
    /// Hugging Face names, f32.
    tensors: HashMap<String, Tensor>,
}

impl GgufCheckpoint {
    /// Reads `path`, dequantising every tensor to f32 on `device`.
    pub fn read(path: &Path, device: &Device) -> Result<Self, GgufError> {
        let file = File::open(path).map_err(|source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reader = BufReader::new(file);
        let content = Content::read(&mut reader).map_err(|source| GgufError::Read {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let meta = Metadata {
            values: &content.metadata,
            path,
        };
        let config = read_config(&meta, &content)?;
        let tokenizer = gguf_tokenizer::from_metadata(&meta)?;
        let mut tensors = HashMap::with_capacity(content.tensor_infos.len());
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let tensor_error = |source| GgufError::Tensor {
                path: path.to_path_buf(),
                name: name.clone(),
                source: Box::new(source),
            };
            let hf_name = hf_name(name).ok_or_else(|| GgufError::Unsupported {
                path: path.to_path_buf(),
                what: format!("tensor `{name}` (no Hugging Face llama counterpart)"),
            })?;
            let tensor = content
                .tensor(&mut reader, name, device)
                .and_then(|q| q.dequantize(device))
                .map_err(tensor_error)?;
            let tensor = match rotary_heads(&hf_name, &config) {
                Some(heads) => rotate_half_rows(&tensor, heads).map_err(tensor_error)?,
                None => tensor,
            };
            tensors.insert(hf_name, tensor);
        }
        Ok(Self {
            path: path.to_path_buf(),
            bos_token_id: meta.u32("tokenizer.ggml.bos_token_id")?,
            eos_token_id: meta.u32("tokenizer.ggml.eos_token_id")?,
            chat_template: meta.string("tokenizer.chat_template")?.map(str::to_string),
            config,
            tokenizer,
            tensors,
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn bos_token_id(&self) -> Option<u32> {
        self.bos_token_id
    }

    pub fn eos_token_id(&self) -> Option<u32> {
        self.eos_token_id
    }

    /// The Jinja chat template stored in the file, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }

    /// The dequantised tensors under their Hugging Face names (shared, not copied).
    pub fn weights(&self) -> Weights {
        Weights::from_tensors(&self.path, self.tensors.clone())
    }

    /// The decoder in `dtype` on `device`.
    pub fn decoder(&self, dtype: DType, device: &Device) -> Result<Decoder, GgufError> {
        Decoder::new(&self.config, self.weights().into_var_builder(dtype, device)).map_err(
            |source| GgufError::Build {
                path: self.path.clone(),
                source: Box::new(source),
            },
        )
    }
}

/// The Hugging Face name of a llama GGUF tensor.
fn hf_name(gguf: &str) -> Option<String> {
    match gguf {
        "token_embd.weight" => return Some("model.embed_tokens.weight".into()),
        "output_norm.weight" => return Some("model.norm.weight".into()),
        "output.weight" => return Some("lm_head.weight".into()),
        _ => {}
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let module = match rest.strip_suffix(".weight")? {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}.weight"))
}

/// The number of heads whose rows llama.cpp interleaved, for the query and key projections.
fn rotary_heads(hf_name: &str, config: &DecoderConfig) -> Option<usize> {
    if hf_name.ends_with("self_attn.q_proj.weight") {
        Some(config.num_attention_heads)
    } else if hf_name.ends_with("self_attn.k_proj.weight") {
        Some(config.num_key_value_heads)
    } else {
        None
    }
}

/// Reorders each head's rows from llama.cpp's adjacent pairs `(2i, 2i + 1)` back to rotate-half pairs
/// `(i, i + d/2)`: row `2i + j` of a head moves to row `j * d/2 + i`.
fn rotate_half_rows(weight: &Tensor, heads: usize) -> candle_core::Result<Tensor> {
    let (out, inner) = weight.dims2()?;
    if heads == 0 || out % (2 * heads) != 0 {
        candle_core::bail!("{out} rows do not split into {heads} heads of pairs");
    }
    weight
        .reshape((heads, out / heads / 2, 2, inner))?
        .transpose(1, 2)?
        .contiguous()?
        .reshape((out, inner))
}

fn read_config(meta: &Metadata, content: &Content) -> Result<DecoderConfig, GgufError> {
    let arch = meta.required_string("general.architecture")?;
    if arch != "llama" {
        return Err(meta.unsupported(format!(
            "architecture `{arch}` (only llama GGUF files are read)"
        )));
    }
    if let Some(kind) = meta.string("llama.rope.scaling.type")? {
        if kind != "none" {
            return Err(meta.unsupported(format!("rope scaling `{kind}`")));
        }
    }
    let hidden = meta.required_usize("llama.embedding_length")?;
    let heads = meta.required_usize("llama.attention.head_count")?;
    let head_dim = match meta.usize("llama.attention.key_length")? {
        Some(dim) => dim,
        None if heads > 0 && hidden % heads == 0 => hidden / heads,
        None => {
            return Err(meta.unsupported(format!(
                "embedding_length {hidden} that {heads} heads do not divide"
            )))
        }
    };
    if let Some(rotary) = meta.usize("llama.rope.dimension_count")? {
        if rotary != head_dim {
            return Err(meta.unsupported(format!(
                "partial rotary ({rotary} of {head_dim} head channels)"
            )));
        }
    }
    let vocab_size = match content.tensor_infos.get("token_embd.weight") {
        Some(info) => info.shape.dims()[0],
        None => {
            return Err(GgufError::MissingKey {
                path: meta.path.to_path_buf(),
                key: "tensor token_embd.weight".into(),
            })
        }
    };
    let config = DecoderConfig {
        architecture: Architecture::Llama,
        vocab_size,
        hidden_size: hidden,
        intermediate_size: meta.required_usize("llama.feed_forward_length")?,
        num_hidden_layers: meta.required_usize("llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: meta
            .usize("llama.attention.head_count_kv")?
            .unwrap_or(heads),
        head_dim,
        rms_norm_eps: meta
            .f64("llama.attention.layer_norm_rms_epsilon")?
            .unwrap_or(1e-5),
        rope_theta: meta.f64("llama.rope.freq_base")?.unwrap_or(10_000.0),
        mrope_section: None,
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        qkv_bias: false,
        o_bias: false,
        qk_norm: false,
        hidden_act: Activation::Silu,
        max_position_embeddings: meta.usize("llama.context_length")?.unwrap_or(2048),
        torch_dtype: None,
    };
    config.validate(meta.path)?;
    Ok(config)
}

/// Typed access to GGUF metadata, with errors naming the key and file.
pub(crate) struct Metadata<'a> {
    values: &'a HashMap<String, Value>,
    pub(crate) path: &'a Path,
}

impl Metadata<'_> {
    fn wrong(&self, key: &str, expected: &'static str) -> GgufError {
        GgufError::WrongType {
            path: self.path.to_path_buf(),
            key: key.to_string(),
            expected,
        }
    }

    fn missing(&self, key: &str) -> GgufError {
        GgufError::MissingKey {
            path: self.path.to_path_buf(),
            key: key.to_string(),
        }
    }

    pub(crate) fn unsupported(&self, what: String) -> GgufError {
        GgufError::Unsupported {
            path: self.path.to_path_buf(),
            what,
        }
    }

    pub(crate) fn usize(&self, key: &str) -> Result<Option<usize>, GgufError> {
        self.values
            .get(key)
            .map(|value| {
                integer(value)
                    .and_then(|n| usize::try_from(n).ok())
                    .ok_or_else(|| self.wrong(key, "a non-negative integer"))
            })
            .transpose()
    }

    pub(crate) fn required_usize(&self, key: &str) -> Result<usize, GgufError> {
        self.usize(key)?.ok_or_else(|| self.missing(key))
    }

    pub(crate) fn u32(&self, key: &str) -> Result<Option<u32>, GgufError> {
        self.usize(key)?
            .map(|n| u32::try_from(n).map_err(|_| self.wrong(key, "a 32-bit token id")))
            .transpose()
    }

    fn f64(&self, key: &str) -> Result<Option<f64>, GgufError> {
        self.values
            .get(key)
            .map(|value| match value {
                Value::F32(x) => Ok(f64::from(*x)),
                Value::F64(x) => Ok(*x),
                other => integer(other)
                    .map(|n| n as f64)
                    .ok_or_else(|| self.wrong(key, "a number")),
            })
            .transpose()
    }

    pub(crate) fn bool(&self, key: &str) -> Result<Option<bool>, GgufError> {
        self.values
            .get(key)
            .map(|value| match value {
                Value::Bool(b) => Ok(*b),
                _ => Err(self.wrong(key, "a boolean")),
            })
            .transpose()
    }

    pub(crate) fn string(&self, key: &str) -> Result<Option<&str>, GgufError> {
        self.values
            .get(key)
            .map(|value| match value {
                Value::String(s) => Ok(s.as_str()),
                _ => Err(self.wrong(key, "a string")),
            })
            .transpose()
    }

    pub(crate) fn required_string(&self, key: &str) -> Result<&str, GgufError> {
        self.string(key)?.ok_or_else(|| self.missing(key))
    }

    pub(crate) fn required_strings(&self, key: &str) -> Result<Vec<&str>, GgufError> {
        let wrong = || self.wrong(key, "a list of strings");
        match self.values.get(key) {
            None => Err(self.missing(key)),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.as_str()),
                    _ => Err(wrong()),
                })
                .collect(),
            Some(_) => Err(wrong()),
        }
    }

    pub(crate) fn integers(&self, key: &str) -> Result<Option<Vec<i64>>, GgufError> {
        let wrong = || self.wrong(key, "a list of integers");
        match self.values.get(key) {
            None => Ok(None),
            Some(Value::Array(items)) => items
                .iter()
                .map(|item| integer(item).ok_or_else(wrong))
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(wrong()),
        }
    }
}

fn integer(value: &Value) -> Option<i64> {
    match *value {
        Value::U8(n) => Some(i64::from(n)),
        Value::I8(n) => Some(i64::from(n)),
        Value::U16(n) => Some(i64::from(n)),
        Value::I16(n) => Some(i64::from(n)),
        Value::U32(n) => Some(i64::from(n)),
        Value::I32(n) => Some(i64::from(n)),
        Value::U64(n) => i64::try_from(n).ok(),
        Value::I64(n) => Some(n),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_llama_tensor_names() {
        let cases = [
            ("token_embd.weight", "model.embed_tokens.weight"),
            ("output.weight", "lm_head.weight"),
            ("output_norm.weight", "model.norm.weight"),
            (
                "blk.12.attn_q.weight",
                "model.layers.12.self_attn.q_proj.weight",
            ),
            (
                "blk.0.attn_output.weight",
                "model.layers.0.self_attn.o_proj.weight",
            ),
            (
                "blk.3.ffn_down.weight",
                "model.layers.3.mlp.down_proj.weight",
            ),
            (
                "blk.3.ffn_norm.weight",
                "model.layers.3.post_attention_layernorm.weight",
            ),
        ];
        for (gguf, hf) in cases {
            assert_eq!(hf_name(gguf).as_deref(), Some(hf), "{gguf}");
        }
        for unknown in [
            "rope_freqs.weight",
            "blk.x.attn_q.weight",
            "blk.0.attn_q.bias",
            "blk.0.ssm.weight",
        ] {
            assert_eq!(hf_name(unknown), None, "{unknown}");
        }
    }

    /// With head_dim 4: stored rows per head are (x0, x2, x1, x3) pairs; rotate-half order is (x0, x1, x2, x3).
    #[test]
    fn undoes_the_pair_interleave_per_head() {
        let stored: Vec<f32> = [0., 2., 1., 3., 10., 12., 11., 13.].to_vec();
        let weight = Tensor::from_vec(stored, (8, 1), &Device::Cpu).unwrap();
        let rows = rotate_half_rows(&weight, 2).unwrap().flatten_all().unwrap();
        assert_eq!(
            rows.to_vec1::<f32>().unwrap(),
            [0., 1., 2., 3., 10., 11., 12., 13.]
        );
        assert!(rotate_half_rows(&weight, 3).is_err());
    }
}
