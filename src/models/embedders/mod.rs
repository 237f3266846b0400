//! Embedders for hard-negative mining: models that map texts and images to L2-normalised vectors whose dot
//! products rank candidates (docs/mining.md#exact-top-k, docs/models.md#embedders).
//!
//! Three families, each loaded from the directory layout its reference implementation writes:
//! - [`bert`]: BERT-family sentence encoders (all-MiniLM-L6-v2 and the like) in sentence-transformers layout;
//!   text only.
//! - [`clip`]: CLIP dual encoders in transformers layout; also constructible from a config with seeded random
//!   weights, for training from scratch.
//! - [`siglip`]: SigLIP dual encoders in transformers layout.
//!
//! BERT and SigLIP run candle-transformers' inference models; CLIP runs this crate's differentiable towers so that
//! it can also be trained. All are checked against transformers by the parity fixtures in
//! tests/fixtures/models/embedders; what candle's models lack (SigLIP's full-length padding, tokenizer and pooling
//! settings from the sentence-transformers files) is here.

pub mod bert;
mod checkpoint;
pub mod clip;
pub mod clip_towers;
pub mod dual;
mod error;
pub mod siglip;
mod text;

use std::fmt;
use std::path::Path;

use candle_core::{DType, Device, Tensor, D};
use candle_nn::{Linear, Module};
use image::RgbImage;
use serde::Deserialize;

pub use error::EmbedderError;

use checkpoint::ModelDir;

/// What an embedder embeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modality {
    Text,
    Image,
}

impl fmt::Display for Modality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Text => "texts",
            Self::Image => "images",
        })
    }
}

/// Where and how an embedder runs.
#[derive(Debug, Clone)]
pub struct EmbedderOptions {
    pub device: Device,
    /// The dtype weights and activations are held in; embeddings always come out as f32.
    pub dtype: DType,
    /// How many inputs go through the model at once: bounds memory, does not change results beyond float
    /// rounding.
    pub batch_size: usize,
}

impl Default for EmbedderOptions {
    fn default() -> Self {
        Self {
            device: Device::Cpu,
            dtype: DType::F32,
            batch_size: 32,
        }
    }
}

/// A model that embeds texts and/or images into one space, for scoring by dot product.
pub trait Embedder: Send + Sync {
    /// The family name: "bert", "clip" or "siglip".
    fn family(&self) -> &'static str;
    /// Length of every embedding.
    fn dim(&self) -> usize;
    /// sha256 (hex) over the weights, config, tokenizer and preprocessing config files, and the settings the
    /// embedder derived from them (maximum length, pooling, dtype): caches keyed on it go stale exactly when an
    /// embedding could change.
    fn fingerprint(&self) -> &str;
    fn supports(&self, modality: Modality) -> bool;
    /// One L2-normalised embedding per text, in order.
    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedderError>;
    /// One L2-normalised embedding per image, in order.
    fn embed_images(&self, images: &[RgbImage]) -> Result<Vec<Vec<f32>>, EmbedderError>;
}

/// Loads the embedder in `dir`, choosing the family from config.json's `model_type`.
pub fn load(dir: &Path, options: &EmbedderOptions) -> Result<Box<dyn Embedder>, EmbedderError> {
    #[derive(Deserialize)]
    struct ModelType {
        model_type: Option<String>,
    }
    let mut probe = ModelDir::new(dir);
    let model_type = probe
        .json::<ModelType>(CONFIG_FILE)?
        .model_type
        .unwrap_or_default();
    match model_type.as_str() {
        "bert" => Ok(Box::new(bert::BertEmbedder::load(dir, options)?)),
        "clip" => Ok(Box::new(clip::ClipEmbedder::load(dir, options)?)),
        "siglip" => Ok(Box::new(siglip::SiglipEmbedder::load(dir, options)?)),
        other => Err(probe.config_error(
            CONFIG_FILE,
            "model_type",
            format!("`{other}` is not an embedder family (bert, clip, siglip)"),
        )),
    }
}

const CONFIG_FILE: &str = "config.json";

/// Runs `embed` over consecutive chunks of at most `batch_size` inputs, passing each chunk's offset.
fn in_batches<T>(
    inputs: &[T],
    batch_size: usize,
    mut embed: impl FnMut(&[T], usize) -> Result<Vec<Vec<f32>>, EmbedderError>,
) -> Result<Vec<Vec<f32>>, EmbedderError> {
    if batch_size == 0 {
        return Err(EmbedderError::BatchSize);
    }
    let mut out = Vec::with_capacity(inputs.len());
    for (k, chunk) in inputs.chunks(batch_size).enumerate() {
        out.extend(embed(chunk, k * batch_size)?);
    }
    Ok(out)
}

/// Rows of a `(batch, dim)` tensor divided by their L2 norm (floored at 1e-12, as torch's `F.normalize`), as
/// f32 vectors.
fn l2_normalised_rows(xs: &Tensor) -> candle_core::Result<Vec<Vec<f32>>> {
    let xs = xs.to_dtype(DType::F32)?;
    let norm = xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?.maximum(1e-12)?;
    xs.broadcast_div(&norm)?.to_vec2()
}

/// `linear` applied to each row of a `(batch, in)` tensor alone. One matmul over the batch lets the batch size
/// choose the CPU kernel (a dot-product kernel while rows x outputs <= 256, a blocked one above), and the kernels
/// round differently; one row at a time, a row's bits do not depend on its batch mates
/// (docs/mining.md#batch-invariance). candle folds a broadcast batched matmul back into one, so the rows really
/// are separate products.
fn project_rows(linear: &Linear, xs: &Tensor) -> candle_core::Result<Tensor> {
    row_by_row(xs, |row| linear.forward(row))
}

/// `forward` over each row of `xs` alone (as a batch of one), the results concatenated: for models that mix a
/// batch's rows into one matmul, the way to make a row's bits independent of its batch mates.
fn row_by_row(
    xs: &Tensor,
    forward: impl Fn(&Tensor) -> candle_core::Result<Tensor>,
) -> candle_core::Result<Tensor> {
    let rows = (0..xs.dim(0)?)
        .map(|row| forward(&xs.narrow(0, row, 1)?))
        .collect::<candle_core::Result<Vec<_>>>()?;
    Tensor::cat(&rows, 0)
}
