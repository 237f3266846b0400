//! A model's tensors, served to candle's `VarBuilder` with errors that say which tensor and which file.
//!
//! candle's own safetensors backends answer a missing tensor with "cannot find tensor X" and a wrong shape with a
//! bare shape mismatch; with a sharded checkpoint the user then has to guess which of several files is wrong. This
//! backend keeps, for every tensor, the file it came from, and checks shapes itself.
//!
//! Tensors come either from a Hugging Face model directory (`model.safetensors`, or `model.safetensors.index.json`
//! and the shards it names, memory-mapped) or from memory (a GGUF checkpoint dequantised on load). Every tensor is
//! returned as a plain `Tensor`, never a `Var`: base weights are frozen, and only LoRA adapters train.

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

pub const SINGLE_FILE: &str = "model.safetensors";
pub const INDEX_FILE: &str = "model.safetensors.index.json";

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("{dir}: no weights found (expected {SINGLE_FILE} or {INDEX_FILE})")]
    NoWeights { dir: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid index: {reason}")]
    BadIndex { path: PathBuf, reason: String },
    #[error("{path}: not a readable safetensors file: {source}")]
    Safetensors {
        path: PathBuf,
        source: Box<candle_core::Error>,
    },
    #[error("{index}: tensor `{name}` is mapped to {file}, which does not contain it")]
    NotInShard {
        index: PathBuf,
        name: String,
        file: PathBuf,
    },
    #[error("tensor `{name}` is stored twice, in {first} and in {second}")]
    Duplicate {
        name: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("tensor `{name}` not found in {source_desc}")]
    MissingTensor { name: String, source_desc: String },
    #[error("tensor `{name}` in {file} has shape {found:?}, expected {expected:?}")]
    ShapeMismatch {
        name: String,
        file: PathBuf,
        expected: Shape,
        found: Shape,
    },
    #[error("tensor `{name}` in {file} cannot be loaded: {source}")]
    Load {
        name: String,
        file: PathBuf,
        source: Box<candle_core::Error>,
    },
}

impl From<WeightsError> for candle_core::Error {
    fn from(err: WeightsError) -> Self {
        candle_core::Error::wrap(err)
    }
}

/// The tensors of one checkpoint.
pub struct Weights {
    store: Store,
    /// What a missing tensor was looked for in: the single file, the index, or the GGUF file.
    source_desc: String,
}

enum Store {
    Mmapped {
        files: Vec<(PathBuf, MmapedSafetensors)>,
        /// Tensor name to its position in `files`.
        locate: HashMap<String, usize>,
    },
    Memory {
        file: PathBuf,
        tensors: HashMap<String, Tensor>,
    },
}

impl Weights {
    /// Opens a Hugging Face model directory: the sharded layout if `model.safetensors.index.json` exists, else
    /// `model.safetensors`.
    pub fn from_model_dir(dir: &Path) -> Result<Self, WeightsError> {
        let index = dir.join(INDEX_FILE);
        if index.is_file() {
            return Self::from_index(&index);
        }
        let single = dir.join(SINGLE_FILE);
        if single.is_file() {
            return Self::from_files(&[single]);
        }
        Err(WeightsError::NoWeights {
            dir: dir.to_path_buf(),
        })
    }

    /// Opens a sharded checkpoint through its index, checking that every tensor the index maps is in its shard.
    pub fn from_index(index: &Path) -> Result<Self, WeightsError> {
        let weight_map = read_weight_map(index)?;
        let dir = index.parent().unwrap_or(Path::new("."));
        let shard_names: Vec<&String> = {
            let mut names: Vec<&String> = weight_map.values().collect();
            names.sort();
            names.dedup();
            names
        };
        let shards: Vec<PathBuf> = shard_names.iter().map(|name| dir.join(name)).collect();
        let mut weights = Self::from_files(&shards)?;
        weights.source_desc = format!("{} ({} shards)", index.display(), shards.len());
        if let Store::Mmapped { files, locate } = &weights.store {
            for (name, shard) in &weight_map {
                let file = dir.join(shard);
                let found = locate.get(name).map(|&i| &files[i].0);
                if found != Some(&file) {
                    return Err(WeightsError::NotInShard {
                        index: index.to_path_buf(),
                        name: name.clone(),
                        file,
                    });
                }
            }
        }
        Ok(weights)
    }

    /// Memory-maps safetensors files and indexes their tensors; a name stored in two files is an error.
    pub fn from_files(paths: &[PathBuf]) -> Result<Self, WeightsError> {
        let mut files = Vec::with_capacity(paths.len());
        let mut locate = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            if !path.is_file() {
                return Err(WeightsError::Io {
                    path: path.clone(),
                    source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such file"),
                });
            }
            // SAFETY: the file is mapped read-only; like every mmap-based loader we rely on nobody truncating or
            // rewriting a checkpoint while a model built from it is alive.
            let mapped = unsafe { MmapedSafetensors::new(path) }.map_err(|source| {
                WeightsError::Safetensors {
                    path: path.clone(),
                    source: Box::new(source),
                }
            })?;
            for (name, _) in mapped.tensors() {
                if let Some(&first) = locate.get(&name) {
                    let first: &(PathBuf, MmapedSafetensors) = &files[first];
                    return Err(WeightsError::Duplicate {
                        name,
                        first: first.0.clone(),
                        second: path.clone(),
                    });
                }
                locate.insert(name, i);
            }
            files.push((path.clone(), mapped));
        }
        let source_desc = match paths {
            [single] => single.display().to_string(),
            _ => format!("{} files", paths.len()),
        };
        Ok(Self {
            store: Store::Mmapped { files, locate },
            source_desc,
        })
    }

    /// Tensors already in memory, e.g. dequantised from `file`, which errors name.
    pub fn from_tensors(file: &Path, tensors: HashMap<String, Tensor>) -> Self {
        Self {
            store: Store::Memory {
                file: file.to_path_buf(),
                tensors,
            },
            source_desc: file.display().to_string(),
        }
    }

    pub fn contains(&self, name: &str) -> bool {
        match &self.store {
            Store::Mmapped { locate, .. } => locate.contains_key(name),
            Store::Memory { tensors, .. } => tensors.contains_key(name),
        }
    }

    /// A `VarBuilder` that loads tensors in `dtype` onto `device` when the model asks for them.
    pub fn into_var_builder(self, dtype: DType, device: &Device) -> VarBuilder<'static> {
        VarBuilder::from_backend(Box::new(self), dtype, device.clone())
    }

    /// The file holding `name`, and the tensor as stored.
    fn load(&self, name: &str, device: &Device) -> Result<(&Path, Tensor), WeightsError> {
        let missing = || WeightsError::MissingTensor {
            name: name.to_string(),
            source_desc: self.source_desc.clone(),
        };
        match &self.store {
            Store::Mmapped { files, locate } => {
                let (file, mapped) = &files[*locate.get(name).ok_or_else(missing)?];
                let failed = |source| WeightsError::Load {
                    name: name.to_string(),
                    file: file.clone(),
                    source: Box::new(source),
                };
                let tensor = mapped.load(name, device).map_err(failed)?;
                release_pages(mapped.get(name).map_err(failed)?.data());
                Ok((file, tensor))
            }
            Store::Memory { file, tensors } => {
                let tensor = tensors.get(name).ok_or_else(missing)?;
                let tensor = tensor
                    .to_device(device)
                    .map_err(|source| WeightsError::Load {
                        name: name.to_string(),
                        file: file.clone(),
                        source: Box::new(source),
                    })?;
                Ok((file, tensor))
            }
        }
    }
}

impl SimpleBackend for Weights {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _init: Init,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let (file, tensor) = self.load(name, device)?;
        if tensor.shape() != &shape {
            return Err(WeightsError::ShapeMismatch {
                name: name.to_string(),
                file: file.to_path_buf(),
                expected: shape,
                found: tensor.shape().clone(),
            }
            .into());
        }
        tensor.to_dtype(dtype)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: DType,
        device: &Device,
    ) -> candle_core::Result<Tensor> {
        let (_, tensor) = self.load(name, device)?;
        tensor.to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.contains(name)
    }
}

/// Takes the pages of `bytes`, a tensor's bytes in a mapped checkpoint that loading has copied into a tensor of
/// its own, out of the process's resident memory. A mapped page that was read stays resident until it is
/// unmapped, and the files stay mapped until the model is built: without this a model's load held the checkpoint's
/// bytes beside its tensors, twice the weights at the peak (an eval of SmolLM2-135M peaked at 1.0 GiB for 0.5 GiB
/// of weights). The pages stay in the kernel's page cache, and a later read of the range maps them again.
fn release_pages(bytes: &[u8]) {
    #[cfg(unix)]
    {
        // SAFETY: sysconf only reads a system constant.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(0);
        if page == 0 || bytes.is_empty() {
            return;
        }
        let start = bytes.as_ptr() as usize;
        let first = start - start % page;
        // SAFETY: the range lies within a read-only file mapping (mappings start on a page boundary, so rounding
        // the start down stays inside it). MADV_DONTNEED on such a mapping only drops the pages from this
        // process: the next read of any byte in the range, of this tensor or a neighbour sharing a page, faults
        // the same file contents back in, so every slice into the mapping stays valid. It fails harmlessly (the
        // pages simply stay) where the kernel refuses.
        unsafe {
            libc::madvise(
                first as *mut libc::c_void,
                start + bytes.len() - first,
                libc::MADV_DONTNEED,
            );
        }
    }
}

/// The `weight_map` of a `model.safetensors.index.json`: tensor name to shard file name (relative to the index).
fn read_weight_map(index: &Path) -> Result<BTreeMap<String, String>, WeightsError> {
    let bad = |reason: String| WeightsError::BadIndex {
        path: index.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(index).map_err(|source| WeightsError::Io {
        path: index.to_path_buf(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|err| bad(format!("invalid JSON: {err}")))?;
    let map = value
        .get("weight_map")
        .and_then(|map| map.as_object())
        .ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut weight_map = BTreeMap::new();
    for (name, file) in map {
        let file = file
            .as_str()
            .ok_or_else(|| bad(format!("`weight_map.{name}` is not a file name")))?;
        if file.contains('/') || file.contains('\\') || file == ".." {
            return Err(bad(format!(
                "`weight_map.{name}` = `{file}` is not a file next to the index"
            )));
        }
        weight_map.insert(name.clone(), file.to_string());
    }
    if weight_map.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    Ok(weight_map)
}
