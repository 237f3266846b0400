//! Forward passes against `tests/fixtures/model_ops/reference.safetensors`, written by `gen_reference.py` next to
//! it from numpy ports of the transformers functions.

use crate::model_ops::common::assert_close;
use candle_core::{DType, Device, Module, Tensor};
use std::collections::HashMap;
use umrank::models::layers::activation::Activation;
use umrank::models::layers::attention::scaled_dot_product_attention;
use umrank::models::layers::mask::AttentionMask;
use umrank::models::layers::norm::{LayerNorm, RmsNorm};
use umrank::models::layers::rope::{
    apply_rotary_emb, MropeSection, RotaryEmbedding, VisionRotaryEmbedding,
};

fn fixture() -> HashMap<String, Tensor> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/model_ops/reference.safetensors"
    );
    candle_core::safetensors::load(path, &Device::Cpu).expect("loading the reference fixture")
}

fn get<'a>(tensors: &'a HashMap<String, Tensor>, name: &str) -> &'a Tensor {
    tensors
        .get(name)
        .unwrap_or_else(|| panic!("fixture has no {name}"))
}

/// Large positions (up to 4094) with theta 1e6: the inverse frequencies are bit-identical to transformers' f32
/// ones and the rotated queries agree to f32 rounding.
#[test]
fn rope_matches_transformers() {
    let t = fixture();
    let rotary = RotaryEmbedding::new(16, 1000000.0, &Device::Cpu).unwrap();
    assert_close(rotary.inv_freq(), get(&t, "rope.inv_freq"), 0.0, "inv_freq");
    let (cos, sin) = rotary
        .cos_sin(get(&t, "rope.positions"), DType::F32)
        .unwrap();
    assert_close(
        &cos,
        &get(&t, "rope.cos").narrow(2, 0, 8).unwrap(),
        1e-6,
        "cos",
    );
    assert_close(
        &sin,
        &get(&t, "rope.sin").narrow(2, 0, 8).unwrap(),
        1e-6,
        "sin",
    );
    let q_embed = apply_rotary_emb(
        get(&t, "rope.q"),
        &cos.unsqueeze(1).unwrap(),
        &sin.unsqueeze(1).unwrap(),
    )
    .unwrap();
    assert_close(&q_embed, get(&t, "rope.q_embed"), 1e-5, "q_embed");
}

#[test]
fn mrope_matches_transformers() {
    let t = fixture();
    let section: Vec<usize> = get(&t, "mrope.section")
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|s| s as usize)
        .collect();
    let section = MropeSection::new(section, 16).unwrap();
    let rotary = RotaryEmbedding::new(16, 10000.0, &Device::Cpu).unwrap();
    let (cos, sin) = rotary
        .mrope_cos_sin(get(&t, "mrope.positions"), &section, DType::F32)
        .unwrap();
    let q_embed = apply_rotary_emb(
        get(&t, "mrope.q"),
        &cos.unsqueeze(1).unwrap(),
        &sin.unsqueeze(1).unwrap(),
    )
    .unwrap();
    assert_close(&q_embed, get(&t, "mrope.q_embed"), 1e-5, "mrope q_embed");
}

#[test]
fn vision_rotary_matches_transformers() {
    let t = fixture();
    let rotary = VisionRotaryEmbedding::new(16, 10000.0, &Device::Cpu).unwrap();
    let (cos, sin) = rotary
        .cos_sin(get(&t, "vision.positions"), DType::F32)
        .unwrap();
    let q_embed = apply_rotary_emb(
        get(&t, "vision.q"),
        &cos.unsqueeze(1).unwrap(),
        &sin.unsqueeze(1).unwrap(),
    )
    .unwrap();
    assert_close(&q_embed, get(&t, "vision.q_embed"), 1e-5, "vision q_embed");
}

/// transformers' eager attention with GQA, a causal mask and left/right padding, on the real query positions.
#[test]
fn attention_matches_transformers_eager() {
    let t = fixture();
    let valid = get(&t, "attention.mask");
    let mask = AttentionMask::causal_key_padding(valid, 6, DType::F64).unwrap();
    let out = scaled_dot_product_attention(
        get(&t, "attention.q"),
        get(&t, "attention.k"),
        get(&t, "attention.v"),
        Some(&mask),
        8f64.powf(-0.5),
    )
    .unwrap();
    let expected = get(&t, "attention.out");
    let rows = valid.to_vec2::<i64>().unwrap();
    for (b, row) in rows.iter().enumerate() {
        for (i, _) in row.iter().enumerate().filter(|(_, &v)| v != 0) {
            let pick = |x: &Tensor| x.narrow(0, b, 1).unwrap().narrow(2, i, 1).unwrap();
            assert_close(
                &pick(&out),
                &pick(expected),
                1e-12,
                &format!("row {b} query {i}"),
            );
        }
    }
}

#[test]
fn activations_match_transformers() {
    let t = fixture();
    let xs = get(&t, "act.x");
    for (act, name) in [
        (Activation::Silu, "act.silu"),
        (Activation::Gelu, "act.gelu"),
        (Activation::GeluPytorchTanh, "act.gelu_pytorch_tanh"),
        (Activation::QuickGelu, "act.quick_gelu"),
    ] {
        assert_close(&act.forward(xs).unwrap(), get(&t, name), 1e-12, name);
        let xs32 = xs.to_dtype(DType::F32).unwrap();
        assert_close(&act.forward(&xs32).unwrap(), get(&t, name), 1e-5, name);
    }
}

#[test]
fn norms_match_transformers() {
    let t = fixture();
    let (xs, weight, bias) = (
        get(&t, "norm.x"),
        get(&t, "norm.weight"),
        get(&t, "norm.bias"),
    );
    let rms = RmsNorm::from_weight(weight.clone(), 1e-6);
    assert_close(
        &rms.forward(xs).unwrap(),
        get(&t, "norm.rms"),
        1e-12,
        "rms_norm",
    );
    let ln = LayerNorm::from_weights(weight.clone(), bias.clone(), 1e-5);
    assert_close(
        &ln.forward(xs).unwrap(),
        get(&t, "norm.layer"),
        1e-12,
        "layer_norm",
    );
}
