//! Merged weights: the base checkpoint with each adapted decoder projection replaced by `W + scaling B A`, under
//! the base's own tensor names, dtypes and shard layout, so that transformers loads the directory without peft.
//!
//! The merge streams one base file at a time. Each adapted weight is read in f32, merged by the same code the
//! models use ([`Linear::merge_lora`], with the adapter matched to its projection by [`PeftAdapter::apply`]), and
//! rounded once to the stored dtype; every other tensor is copied byte for byte. Every tensor of the adapter must
//! find its projection, so a merge can never silently drop part of the adapter.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use candle_core::safetensors::MmapedSafetensors;
use candle_core::{DType, Device, Tensor};
use safetensors::tensor::TensorView;
use safetensors::{Dtype, View};

use super::files::weight_files;
use super::ReleaseError;
use crate::models::adapters::peft::PeftAdapter;
use crate::models::formats::weights::INDEX_FILE;
use crate::models::layers::linear::Linear;
use crate::progress;

/// Where a Llama-family checkpoint keeps its decoder layers (flat, and nested inside a VL model).
const DECODER_LAYER_PREFIXES: [&str; 2] = ["model.layers.", "model.language_model.layers."];

/// What a merge did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeSummary {
    pub tensors: usize,
    pub merged: usize,
    /// Whether a merged weight was rounded to a 16-bit dtype (rather than stored in f32 or f64).
    pub rounded: bool,
}

/// Writes the weight files of `base` with `adapter` merged in to `out`, under the same file names (and a copy of
/// the shard index when the base is sharded).
pub fn write_merged(base: &Path, adapter: &Path, out: &Path) -> Result<MergeSummary, ReleaseError> {
    fs::create_dir_all(out).map_err(ReleaseError::io(out))?;
    let mut peft = PeftAdapter::read(adapter, &Device::Cpu)?;
    let files: Vec<String> = weight_files(base)?
        .into_iter()
        .filter(|name| name != INDEX_FILE)
        .collect();
    if base.join(INDEX_FILE).is_file() {
        let to = out.join(INDEX_FILE);
        fs::copy(base.join(INDEX_FILE), &to).map_err(ReleaseError::io(&to))?;
    }
    let bar = progress::bar(files.len() as u64, "merging");
    let mut summary = MergeSummary {
        tensors: 0,
        merged: 0,
        rounded: false,
    };
    for name in &files {
        let file = merge_file(&base.join(name), &out.join(name), &mut peft)?;
        summary.tensors += file.tensors;
        summary.merged += file.merged;
        summary.rounded |= file.rounded;
        bar.inc(1);
    }
    bar.finish_and_clear();
    peft.finish()?;
    Ok(summary)
}

/// One tensor of an output file: copied from the base, or merged.
enum Entry<'a> {
    Copied(TensorView<'a>),
    Merged {
        dtype: Dtype,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    },
}

impl View for Entry<'_> {
    fn dtype(&self) -> Dtype {
        match self {
            Entry::Copied(view) => view.dtype(),
            Entry::Merged { dtype, .. } => *dtype,
        }
    }

    fn shape(&self) -> &[usize] {
        match self {
            Entry::Copied(view) => view.shape(),
            Entry::Merged { shape, .. } => shape,
        }
    }

    fn data(&self) -> Cow<'_, [u8]> {
        match self {
            Entry::Copied(view) => Cow::Borrowed(view.data()),
            Entry::Merged { bytes, .. } => Cow::Borrowed(bytes),
        }
    }

    fn data_len(&self) -> usize {
        match self {
            Entry::Copied(view) => view.data().len(),
            Entry::Merged { bytes, .. } => bytes.len(),
        }
    }
}

fn merge_file(
    from: &Path,
    to: &Path,
    peft: &mut PeftAdapter,
) -> Result<MergeSummary, ReleaseError> {
    let unreadable = |e: candle_core::Error| ReleaseError::invalid(from, e.to_string());
    // SAFETY: the file is mapped read-only for the duration of this call; like every mmap-based loader we rely on
    // nobody truncating a checkpoint while it is read.
    let mapped = unsafe { MmapedSafetensors::new(from) }.map_err(unreadable)?;
    let mut tensors = mapped.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut merged, mut rounded) = (0, false);
    let mut entries = Vec::with_capacity(tensors.len());
    for (name, view) in tensors {
        let entry = match adapted_path(&name, &view, peft) {
            Some(path) => {
                merged += 1;
                rounded |= !matches!(view.dtype(), Dtype::F32 | Dtype::F64);
                merged_entry(from, &name, path, &mapped, peft)?
            }
            None => Entry::Copied(view),
        };
        entries.push((name, entry));
    }
    let count = entries.len();
    let metadata = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize_to_file(entries, Some(metadata), to).map_err(|e| {
        ReleaseError::Write {
            path: to.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    Ok(MergeSummary {
        tensors: count,
        merged,
        rounded,
    })
}

/// The projection path of `name` when it is a 2-D decoder projection weight the adapter targets.
fn adapted_path<'n>(name: &'n str, view: &TensorView, peft: &PeftAdapter) -> Option<&'n str> {
    let path = name.strip_suffix(".weight")?;
    let in_decoder = DECODER_LAYER_PREFIXES.iter().any(|p| path.starts_with(p));
    let module = path.rsplit('.').next()?;
    (in_decoder && view.shape().len() == 2 && peft.config().targets(module)).then_some(path)
}

fn merged_entry<'a>(
    file: &Path,
    name: &str,
    path: &str,
    mapped: &MmapedSafetensors,
    peft: &mut PeftAdapter,
) -> Result<Entry<'a>, ReleaseError> {
    let failed = |e: candle_core::Error| ReleaseError::Write {
        path: PathBuf::from(file),
        reason: format!("`{name}`: {e}"),
    };
    let stored = mapped.load(name, &Device::Cpu).map_err(failed)?;
    let dtype = stored.dtype();
    let mut linear = Linear::from_weights(
        path.to_string(),
        stored.to_dtype(DType::F32).map_err(failed)?,
        None,
    );
    peft.apply(&mut [&mut linear], 0)?;
    linear.merge_lora().map_err(failed)?;
    let weight = linear.weight().to_dtype(dtype).map_err(failed)?;
    Ok(Entry::Merged {
        dtype: dtype.into(),
        shape: weight.dims().to_vec(),
        bytes: tensor_bytes(&weight).map_err(failed)?,
    })
}

/// A float tensor's values as little-endian bytes, the safetensors layout.
fn tensor_bytes(tensor: &Tensor) -> candle_core::Result<Vec<u8>> {
    let flat = tensor.flatten_all()?;
    Ok(match tensor.dtype() {
        DType::F32 => flat
            .to_vec1::<f32>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F64 => flat
            .to_vec1::<f64>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::F16 => flat
            .to_vec1::<half::f16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        DType::BF16 => flat
            .to_vec1::<half::bf16>()?
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect(),
        other => candle_core::bail!("cannot merge an adapter into a {other:?} weight"),
    })
}
