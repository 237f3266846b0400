//! LoRA adapters in PEFT's on-disk format: a directory with `adapter_config.json` and `adapter_model.safetensors`,
//! whose keys are the adapted module's path under `base_model.model.`, e.g.
//! `base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight`.
//!
//! Only plain LoRA is read: the PEFT options that change the computation (DoRA, per-layer rank or alpha patterns,
//! layer subsets, trained biases, extra saved modules, regex targets) are refused rather than ignored. Loading is
//! strict both ways: a targeted module with no weights in the file, and a weight in the file that no module takes,
//! are errors, so that an adapter can never silently fail to apply. Qwen2-VL checkpoints keep their decoder either
//! under `model.` or (some transformers versions) under `model.language_model.`; an adapter trained on one layout
//! applies to the other.

use crate::models::adapters::lora::{LoraAdapter, LoraConfig};
use crate::models::layers::linear::Linear;
use candle_core::{Device, Shape, Tensor};
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const ADAPTER_CONFIG: &str = "adapter_config.json";
pub const ADAPTER_WEIGHTS: &str = "adapter_model.safetensors";
const KEY_PREFIX: &str = "base_model.model.";

#[derive(Debug, thiserror::Error)]
pub enum PeftError {
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: {what} is not supported")]
    Unsupported { path: PathBuf, what: String },
    #[error("{path}: cannot read safetensors: {source}")]
    Safetensors {
        path: PathBuf,
        source: Box<candle_core::Error>,
    },
    #[error("{path}: no tensor `{key}` for the targeted module `{module}`")]
    MissingTensor {
        path: PathBuf,
        key: String,
        module: String,
    },
    #[error("{path}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        path: PathBuf,
        key: String,
        expected: Shape,
        found: Shape,
    },
    #[error("{path}: {count} tensors match no adapted module, e.g. `{first}`")]
    UnusedTensors {
        path: PathBuf,
        count: usize,
        first: String,
    },
    #[error("no LoRA adapter is attached: nothing to save to {dir}")]
    NothingToSave { dir: PathBuf },
    #[error("{path}: cannot write: {reason}")]
    Write { path: PathBuf, reason: String },
    #[error("{context}: {source}")]
    Tensor {
        context: String,
        source: Box<candle_core::Error>,
    },
}

/// The fields of PEFT's `adapter_config.json` that decide what the adapter computes.
#[derive(Debug, Deserialize)]
struct ConfigFile {
    peft_type: Option<String>,
    r: usize,
    lora_alpha: f64,
    #[serde(default)]
    lora_dropout: f64,
    target_modules: serde_json::Value,
    #[serde(default)]
    use_rslora: bool,
    #[serde(default)]
    use_dora: bool,
    #[serde(default)]
    fan_in_fan_out: bool,
    bias: Option<String>,
    #[serde(default)]
    rank_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    alpha_pattern: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    layers_to_transform: serde_json::Value,
    #[serde(default)]
    modules_to_save: serde_json::Value,
}

/// A PEFT adapter read from disk, whose tensors are handed out to the modules it targets.
#[derive(Debug)]
pub struct PeftAdapter {
    config: LoraConfig,
    weights_path: PathBuf,
    /// Keys not yet claimed by a module.
    tensors: BTreeMap<String, Tensor>,
}

impl PeftAdapter {
    /// Reads `dir/adapter_config.json` and `dir/adapter_model.safetensors` onto `device`.
    pub fn read(dir: &Path, device: &Device) -> Result<Self, PeftError> {
        let config = read_config(&dir.join(ADAPTER_CONFIG))?;
        let weights_path = dir.join(ADAPTER_WEIGHTS);
        if !weights_path.is_file() {
            return Err(PeftError::Io {
                path: weights_path,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
            });
        }
        let tensors = candle_core::safetensors::load(&weights_path, device)
            .map_err(|source| PeftError::Safetensors {
                path: weights_path.clone(),
                source: Box::new(source),
            })?
            .into_iter()
            .collect();
        Ok(Self {
            config,
            weights_path,
            tensors,
        })
    }

    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Attaches an adapter to every linear the configuration targets, taking its `A` and `B` from the file; `seed`
    /// drives the dropout masks as in [`crate::models::adapters::lora::attach`]. Returns how many were attached.
    pub fn apply(&mut self, linears: &mut [&mut Linear], seed: u64) -> Result<usize, PeftError> {
        let mut attached = 0;
        for (index, linear) in linears.iter_mut().enumerate() {
            if !self.config.targets(linear.module_name()) {
                continue;
            }
            let r = self.config.r;
            let a = self.take(linear.path(), "lora_A", (r, linear.in_dim()).into())?;
            let b = self.take(linear.path(), "lora_B", (linear.out_dim(), r).into())?;
            let path = linear.path().to_string();
            let context = || format!("attaching the adapter of `{path}`");
            let base_dtype = linear.weight().dtype();
            let adapter =
                LoraAdapter::from_weights(a, b, &self.config, (seed, index as u64), base_dtype)
                    .map_err(|source| PeftError::Tensor {
                        context: context(),
                        source: Box::new(source),
                    })?;
            linear
                .set_lora(Some(adapter))
                .map_err(|source| PeftError::Tensor {
                    context: context(),
                    source: Box::new(source),
                })?;
            attached += 1;
        }
        Ok(attached)
    }

    /// Checks that every tensor of the file found its module.
    pub fn finish(self) -> Result<(), PeftError> {
        match self.tensors.keys().next() {
            None => Ok(()),
            Some(first) => Err(PeftError::UnusedTensors {
                path: self.weights_path,
                count: self.tensors.len(),
                first: first.clone(),
            }),
        }
    }

    /// Removes and returns the `matrix` (`lora_A` / `lora_B`) weight of the module at `path`, under either decoder
    /// layout.
    fn take(&mut self, path: &str, matrix: &str, expected: Shape) -> Result<Tensor, PeftError> {
        let key = peft_key(path, matrix);
        let found = std::iter::once(key.clone())
            .chain(alternate_layout(path).map(|alt| peft_key(&alt, matrix)))
            .find_map(|candidate| {
                self.tensors
                    .remove(&candidate)
                    .map(|tensor| (candidate, tensor))
            });
        let Some((found_key, tensor)) = found else {
            return Err(PeftError::MissingTensor {
                path: self.weights_path.clone(),
                key,
                module: path.to_string(),
            });
        };
        if tensor.shape() != &expected {
            return Err(PeftError::ShapeMismatch {
                path: self.weights_path.clone(),
                key: found_key,
                expected,
                found: tensor.shape().clone(),
            });
        }
        Ok(tensor)
    }
}

/// Writes `config` and the adapters of `linears` in PEFT's format into `dir` (created if needed). Values are saved
/// in the adapters' dtype, so reading them back gives bit-identical adapters.
pub fn save(
    dir: &Path,
    config: &LoraConfig,
    linears: &[&Linear],
    base_model: Option<&str>,
) -> Result<(), PeftError> {
    let mut tensors: BTreeMap<String, Tensor> = BTreeMap::new();
    for linear in linears {
        if let Some(adapter) = linear.lora() {
            let a = adapter.a().as_tensor().detach();
            let b = adapter.b().as_tensor().detach();
            tensors.insert(peft_key(linear.path(), "lora_A"), a);
            tensors.insert(peft_key(linear.path(), "lora_B"), b);
        }
    }
    if tensors.is_empty() {
        return Err(PeftError::NothingToSave {
            dir: dir.to_path_buf(),
        });
    }
    std::fs::create_dir_all(dir).map_err(|source| PeftError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let weights_path = dir.join(ADAPTER_WEIGHTS);
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(&tensors, Some(metadata), &weights_path).map_err(|err| {
        PeftError::Write {
            path: weights_path.clone(),
            reason: err.to_string(),
        }
    })?;
    let config_path = dir.join(ADAPTER_CONFIG);
    let text = serde_json::to_string_pretty(&config_json(config, base_model)).map_err(|err| {
        PeftError::Write {
            path: config_path.clone(),
            reason: err.to_string(),
        }
    })?;
    std::fs::write(&config_path, text + "\n").map_err(|source| PeftError::Io {
        path: config_path,
        source,
    })
}

fn peft_key(path: &str, matrix: &str) -> String {
    format!("{KEY_PREFIX}{path}.{matrix}.weight")
}

/// The same decoder module's path in the other Qwen2-VL checkpoint layout.
fn alternate_layout(path: &str) -> Option<String> {
    if let Some(rest) = path.strip_prefix("model.language_model.") {
        return Some(format!("model.{rest}"));
    }
    path.strip_prefix("model.layers.")
        .map(|rest| format!("model.language_model.layers.{rest}"))
}

/// Everything PEFT needs to load the adapter, with the options we do not use at their no-op values.
fn config_json(config: &LoraConfig, base_model: Option<&str>) -> serde_json::Value {
    let mut targets = config.target_modules.clone();
    targets.sort();
    serde_json::json!({
        "alpha_pattern": {},
        "base_model_name_or_path": base_model,
        "bias": "none",
        "fan_in_fan_out": false,
        "inference_mode": true,
        "init_lora_weights": true,
        "layers_pattern": null,
        "layers_to_transform": null,
        "lora_alpha": config.alpha,
        "lora_dropout": config.dropout,
        "modules_to_save": null,
        "peft_type": "LORA",
        "r": config.r,
        "rank_pattern": {},
        "revision": null,
        "target_modules": targets,
        "task_type": "CAUSAL_LM",
        "use_dora": false,
        "use_rslora": config.use_rslora,
    })
}

fn read_config(path: &Path) -> Result<LoraConfig, PeftError> {
    let text = std::fs::read_to_string(path).map_err(|source| PeftError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let file: ConfigFile = serde_json::from_str(&text).map_err(|err| PeftError::Config {
        path: path.to_path_buf(),
        reason: err.to_string(),
    })?;
    let unsupported = |what: String| PeftError::Unsupported {
        path: path.to_path_buf(),
        what,
    };
    if let Some(kind) = file.peft_type.as_deref().filter(|kind| *kind != "LORA") {
        return Err(unsupported(format!("peft_type `{kind}`")));
    }
    let refusals = [
        (file.use_dora, "DoRA (`use_dora`)"),
        (file.fan_in_fan_out, "transposed weights (`fan_in_fan_out`)"),
        (
            file.rank_pattern.as_ref().is_some_and(|m| !m.is_empty()),
            "per-module ranks (`rank_pattern`)",
        ),
        (
            file.alpha_pattern.as_ref().is_some_and(|m| !m.is_empty()),
            "per-module alphas (`alpha_pattern`)",
        ),
        (
            !file.layers_to_transform.is_null(),
            "a layer subset (`layers_to_transform`)",
        ),
        (
            !matches!(&file.modules_to_save, serde_json::Value::Null)
                && file
                    .modules_to_save
                    .as_array()
                    .is_none_or(|m| !m.is_empty()),
            "fully trained extra modules (`modules_to_save`)",
        ),
    ];
    if let Some((_, what)) = refusals.iter().find(|(refused, _)| *refused) {
        return Err(unsupported(what.to_string()));
    }
    if let Some(bias) = file.bias.as_deref().filter(|bias| *bias != "none") {
        return Err(unsupported(format!("trained biases (`bias` = `{bias}`)")));
    }
    let target_modules = match &file.target_modules {
        serde_json::Value::Array(items) => items
            .iter()
            .map(|item| item.as_str().map(str::to_string))
            .collect::<Option<Vec<String>>>()
            .ok_or_else(|| PeftError::Config {
                path: path.to_path_buf(),
                reason: "`target_modules` must be a list of module names".into(),
            })?,
        serde_json::Value::String(pattern) => {
            return Err(unsupported(format!(
                "a regular expression as `target_modules` (`{pattern}`)"
            )))
        }
        _ => {
            return Err(PeftError::Config {
                path: path.to_path_buf(),
                reason: "`target_modules` must be a list of module names".into(),
            })
        }
    };
    let config = LoraConfig {
        r: file.r,
        alpha: file.lora_alpha,
        dropout: file.lora_dropout,
        target_modules,
        use_rslora: file.use_rslora,
    };
    if let Some(problem) = config.problem() {
        return Err(PeftError::Config {
            path: path.to_path_buf(),
            reason: problem,
        });
    }
    Ok(config)
}
