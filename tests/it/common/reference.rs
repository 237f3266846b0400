//! The tiny decoder checkpoints and transformers reference outputs written by
//! `tests/fixtures/models/gen_decoders.py`, and the comparisons the tests make against them.
//!
//! Include with `#[path = "common/reference.rs"] mod reference;`. Several test binaries share this file and each
//! uses only some of its functions.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;
use umrank::models::decoder::{AttentionLayout, Decoder};

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/models"
    ))
    .join(name)
}

/// `reference.safetensors`, loaded once per test binary.
pub fn reference() -> &'static HashMap<String, Tensor> {
    static REFERENCE: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        candle_core::safetensors::load(fixture("reference.safetensors"), &Device::Cpu)
            .expect("loading tests/fixtures/models/reference.safetensors")
    })
}

pub fn get(name: &str) -> Tensor {
    reference()
        .get(name)
        .unwrap_or_else(|| panic!("reference.safetensors has no {name}"))
        .clone()
}

/// A padded batch of a reference case: input ids, attention mask and position ids (as stored, i64).
pub struct Batch {
    pub input_ids: Tensor,
    pub attention_mask: Tensor,
    pub position_ids: Tensor,
}

impl Batch {
    pub fn of(case: &str) -> Self {
        Self {
            input_ids: get(&format!("{case}.input_ids")),
            attention_mask: get(&format!("{case}.attention_mask")),
            position_ids: get(&format!("{case}.position_ids")),
        }
    }

    pub fn layout(&self, dtype: DType) -> AttentionLayout {
        AttentionLayout::padded(&self.attention_mask, dtype).unwrap()
    }

    /// The decoder's last hidden states for this batch (f32 attention; dropout when `train`).
    pub fn hidden(&self, decoder: &Decoder, train: bool) -> Tensor {
        decoder
            .forward(
                &self.input_ids,
                &self.position_ids,
                &self.layout(DType::F32),
                train,
            )
            .unwrap()
    }

    /// `(row, position)` of every real token.
    pub fn valid_positions(&self) -> Vec<(usize, usize)> {
        let mask = self.attention_mask.to_vec2::<i64>().unwrap();
        let mut positions = Vec::new();
        for (row, values) in mask.iter().enumerate() {
            for (pos, &valid) in values.iter().enumerate() {
                if valid != 0 {
                    positions.push((row, pos));
                }
            }
        }
        positions
    }

    /// The last real token of each row.
    pub fn last_positions(&self) -> Vec<(usize, usize)> {
        let mut last: Vec<(usize, usize)> = Vec::new();
        for (row, pos) in self.valid_positions() {
            match last.last_mut() {
                Some(entry) if entry.0 == row => entry.1 = pos,
                _ => last.push((row, pos)),
            }
        }
        last
    }
}

pub fn load(name: &str) -> Decoder {
    Decoder::from_model_dir(&fixture(name), DType::F32, &Device::Cpu)
        .unwrap_or_else(|err| panic!("loading fixture {name}: {err}"))
}

/// `max |got - want| / max |want|` over the given `(row, position)` entries of `(batch, seq, ...)` tensors: padding
/// positions carry no meaning and are left out.
pub fn rel_error_at(got: &Tensor, want: &Tensor, positions: &[(usize, usize)]) -> f64 {
    assert_eq!(got.dims(), want.dims(), "shapes differ");
    let pick = |t: &Tensor| -> Vec<f64> {
        positions
            .iter()
            .flat_map(|&(row, pos)| {
                t.get(row)
                    .and_then(|t| t.get(pos))
                    .and_then(|t| t.flatten_all())
                    .and_then(|t| t.to_dtype(DType::F64))
                    .and_then(|t| t.to_vec1::<f64>())
                    .unwrap()
            })
            .collect()
    };
    rel_error(&pick(got), &pick(want))
}

pub fn rel_error(got: &[f64], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len());
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs()));
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()));
    diff / scale
}

/// Every value of a tensor of any dtype and shape, in f32.
pub fn to_f32(t: &Tensor) -> Vec<f32> {
    t.flatten_all()
        .and_then(|t| t.to_dtype(DType::F32))
        .and_then(|t| t.to_vec1::<f32>())
        .unwrap()
}

pub fn to_f64(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .and_then(|t| t.to_dtype(DType::F64))
        .and_then(|t| t.to_vec1::<f64>())
        .unwrap()
}
