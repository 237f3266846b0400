//! The checker itself: it must pass exact gradients and catch wrong or missing ones.

use crate::model_ops::common::{project, uniform};
use candle_core::DType;
use umrank::models::gradcheck::GradCheck;
use umrank::models::layers::activation::gelu_tanh;

#[test]
fn exact_gradients_pass_at_f64_precision() {
    let xs = uniform(50, (4, 3), DType::F64);
    let report = GradCheck::default()
        .run(|t| (t[0].powf(3.0)? * t[0].sin()?)?.sum_all(), &[xs])
        .unwrap();
    assert!(report.max_rel_error() < 1e-8, "{report}");
}

/// candle-nn's fused softmax has no backward: gradients stop at it without any error, and the checker reports it.
#[test]
fn a_missing_backward_is_caught() {
    let xs = uniform(51, (2, 5), DType::F64);
    let report = GradCheck::default()
        .run(
            |t| project(&candle_nn::ops::softmax_last_dim(&t[0])?, 52),
            &[xs],
        )
        .unwrap();
    assert!(!report.inputs[0].reached, "{report}");
    assert!(report.max_rel_error() > 0.5, "{report}");
}

/// candle's own tanh-GELU backward is written with six-digit constants; the checker resolves that error, which is
/// why the activations module rebuilds GELU from `tanh`.
#[test]
fn an_approximate_backward_is_caught() {
    let xs = (uniform(53, (3, 8), DType::F64) * 2.0).unwrap();
    let check = GradCheck::default();
    let candle_gelu = check
        .run(|t| project(&t[0].gelu()?, 54), std::slice::from_ref(&xs))
        .unwrap();
    let ours = check
        .run(|t| project(&gelu_tanh(&t[0])?, 54), &[xs])
        .unwrap();
    assert!(candle_gelu.max_rel_error() > 1e-6, "{candle_gelu}");
    assert!(ours.max_rel_error() < 1e-8, "{ours}");
}

#[test]
fn a_non_scalar_function_is_an_error() {
    let xs = uniform(55, (2, 2), DType::F64);
    let err = GradCheck::default().run(|t| t[0].exp(), &[xs]).unwrap_err();
    assert!(err.to_string().contains("single element"), "{err}");
}
