use crate::model_ops::common::{assert_close, assert_gradients, project, uniform};
use candle_core::{DType, Device, Module, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;
use umrank::models::layers::norm::{LayerNorm, RmsNorm};

#[test]
fn rms_norm_matches_candle_fused_kernel() {
    let xs = (uniform(20, (3, 5, 64), DType::F32) * 3.0).unwrap();
    let weight = uniform(21, 64, DType::F32);
    let ours = RmsNorm::from_weight(weight.clone(), 1e-6)
        .forward(&xs)
        .unwrap();
    let fused = candle_nn::ops::rms_norm(&xs, &weight, 1e-6).unwrap();
    assert_close(&ours, &fused, 1e-5, "rms_norm");
}

#[test]
fn layer_norm_matches_candle_fused_kernel() {
    let xs = ((uniform(22, (3, 5, 64), DType::F32) * 3.0).unwrap() + 1.5).unwrap();
    let weight = uniform(23, 64, DType::F32);
    let bias = uniform(24, 64, DType::F32);
    let ours = LayerNorm::from_weights(weight.clone(), bias.clone(), 1e-5)
        .forward(&xs)
        .unwrap();
    let fused = candle_nn::ops::layer_norm(&xs, &weight, &bias, 1e-5).unwrap();
    assert_close(&ours, &fused, 1e-5, "layer_norm");
}

/// A bf16 input is normalised in f32 and only rounded at the end, so the result is within bf16 rounding of the
/// f32 computation on the same (bf16-representable) values, even over 4096 channels of large magnitude.
#[test]
fn half_precision_inputs_are_normalised_in_f32() {
    let xs = ((uniform(25, (2, 4096), DType::F32) * 60.0).unwrap() + 20.0)
        .unwrap()
        .to_dtype(DType::BF16)
        .unwrap();
    let weight = uniform(26, 4096, DType::BF16);
    let bias = uniform(27, 4096, DType::BF16);
    let xs32 = xs.to_dtype(DType::F32).unwrap();

    let rms = RmsNorm::from_weight(weight.clone(), 1e-6);
    let rms_half = rms.forward(&xs).unwrap();
    assert_eq!(rms_half.dtype(), DType::BF16);
    let normed32 =
        RmsNorm::from_weight(Tensor::ones(4096, DType::F32, &Device::Cpu).unwrap(), 1e-6)
            .forward(&xs32)
            .unwrap();
    // transformers rounds the normalised value to bf16, then multiplies by the bf16 weight.
    let expected = normed32
        .to_dtype(DType::BF16)
        .unwrap()
        .broadcast_mul(&weight)
        .unwrap();
    assert_close(&rms_half, &expected, 0.0, "bf16 rms_norm");

    let ln = LayerNorm::from_weights(weight.clone(), bias.clone(), 1e-5);
    let ln_half = ln.forward(&xs).unwrap();
    assert_eq!(ln_half.dtype(), DType::BF16);
    let ln32 = LayerNorm::from_weights(
        weight.to_dtype(DType::F32).unwrap(),
        bias.to_dtype(DType::F32).unwrap(),
        1e-5,
    )
    .forward(&xs32)
    .unwrap();
    assert_close(
        &ln_half,
        &ln32.to_dtype(DType::BF16).unwrap(),
        0.0,
        "bf16 layer_norm",
    );
}

#[test]
fn rms_norm_gradient_matches_finite_differences() {
    let xs = uniform(28, (3, 2, 6), DType::F64);
    let weight = uniform(29, 6, DType::F64);
    assert_gradients(
        "rms_norm",
        |t| {
            project(
                &RmsNorm::from_weight(t[1].clone(), 1e-6).forward(&t[0])?,
                30,
            )
        },
        &[xs, weight],
    );
}

#[test]
fn layer_norm_gradient_matches_finite_differences() {
    let xs = uniform(31, (3, 2, 6), DType::F64);
    let weight = uniform(32, 6, DType::F64);
    let bias = uniform(33, 6, DType::F64);
    assert_gradients(
        "layer_norm",
        |t| {
            let norm = LayerNorm::from_weights(t[1].clone(), t[2].clone(), 1e-5);
            project(&norm.forward(&t[0])?, 34)
        },
        &[xs, weight, bias],
    );
}

#[test]
fn norms_load_their_weights_from_a_var_builder() {
    let weight = uniform(35, 6, DType::F32);
    let bias = uniform(36, 6, DType::F32);
    let tensors = HashMap::from([
        ("rms.weight".to_string(), weight.clone()),
        ("ln.weight".to_string(), weight.clone()),
        ("ln.bias".to_string(), bias.clone()),
    ]);
    let vb = VarBuilder::from_tensors(tensors, DType::F32, &Device::Cpu);
    let rms = RmsNorm::new(6, 1e-6, vb.pp("rms")).unwrap();
    assert_close(rms.weight(), &weight, 0.0, "rms weight");
    let ln = LayerNorm::new(6, 1e-5, vb.pp("ln")).unwrap();
    assert_close(ln.bias(), &bias, 0.0, "ln bias");
    assert!(RmsNorm::new(7, 1e-6, vb.pp("rms")).is_err());
}

#[test]
fn a_weight_of_the_wrong_size_is_a_clear_error() {
    let xs = uniform(37, (2, 6), DType::F32);
    let err = RmsNorm::from_weight(uniform(38, 5, DType::F32), 1e-6)
        .forward(&xs)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("rms_norm") && err.contains("last dimension is 6"),
        "{err}"
    );
}
