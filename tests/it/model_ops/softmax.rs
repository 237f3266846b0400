use crate::model_ops::common::{assert_close, assert_gradients, project, uniform};
use candle_core::{DType, Device, Tensor, D};
use umrank::models::layers::softmax::{log_softmax, softmax};

/// Rows with a repeated maximum, a large spread, and entries masked with a large negative value.
fn awkward_rows(masked: f64) -> Tensor {
    Tensor::new(
        &[
            [0.3, 1.7, 1.7, -0.4, 0.0],
            [30.0, -25.0, 4.0, 29.5, 1.0],
            [masked, 0.2, masked, -1.1, 0.9],
        ],
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn softmax_matches_candle_fused_kernel() {
    let xs = (uniform(1, (4, 6, 33), DType::F32) * 4.0).unwrap();
    let fused = candle_nn::ops::softmax_last_dim(&xs).unwrap();
    assert_close(&softmax(&xs).unwrap(), &fused, 1e-6, "softmax");
}

#[test]
fn log_softmax_matches_candle() {
    let xs = (uniform(2, (5, 17), DType::F32) * 4.0).unwrap();
    let reference = candle_nn::ops::log_softmax(&xs, D::Minus1).unwrap();
    assert_close(&log_softmax(&xs).unwrap(), &reference, 1e-5, "log_softmax");
}

#[test]
fn softmax_of_masked_entries_is_zero_and_fully_masked_rows_are_uniform() {
    let blocked = f64::from(f32::MIN);
    let xs = Tensor::new(
        &[[blocked, 2.0, blocked], [blocked, blocked, blocked]],
        &Device::Cpu,
    )
    .unwrap()
    .to_dtype(DType::F32)
    .unwrap();
    let probs = softmax(&xs).unwrap().to_vec2::<f32>().unwrap();
    assert_eq!(probs[0], [0.0, 1.0, 0.0]);
    for p in &probs[1] {
        assert!((p - 1.0 / 3.0).abs() < 1e-7, "{probs:?}");
    }
}

#[test]
fn softmax_gradient_matches_finite_differences() {
    let xs = Tensor::cat(&[awkward_rows(f64::MIN), uniform(3, (2, 5), DType::F64)], 0).unwrap();
    assert_gradients("softmax", |t| project(&softmax(&t[0])?, 10), &[xs]);
}

#[test]
fn log_softmax_gradient_matches_finite_differences() {
    // log_softmax of a masked entry is itself huge, so a loss reading it needs a mask value that leaves headroom.
    let xs = Tensor::cat(&[awkward_rows(-1e3), uniform(4, (2, 5), DType::F64)], 0).unwrap();
    assert_gradients("log_softmax", |t| project(&log_softmax(&t[0])?, 11), &[xs]);
}
