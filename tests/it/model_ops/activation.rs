use crate::model_ops::common::{assert_close, assert_gradients, project, uniform};
use candle_core::DType;
use umrank::models::layers::activation::{gelu_erf, gelu_tanh, quick_gelu, swiglu, Activation};

#[test]
fn forwards_match_candle() {
    let xs = (uniform(40, (4, 50), DType::F32) * 3.0).unwrap();
    assert_close(
        &gelu_erf(&xs).unwrap(),
        &xs.gelu_erf().unwrap(),
        1e-6,
        "gelu erf",
    );
    assert_close(
        &gelu_tanh(&xs).unwrap(),
        &xs.gelu().unwrap(),
        1e-6,
        "gelu tanh",
    );
    let direct = (&xs / ((xs.affine(-1.702, 0.).unwrap().exp().unwrap() + 1.0).unwrap())).unwrap();
    assert_close(&quick_gelu(&xs).unwrap(), &direct, 1e-6, "quick gelu");
    let candle_swiglu = candle_nn::ops::swiglu(&xs).unwrap();
    let halves = xs.chunk(2, 1).unwrap();
    assert_close(
        &swiglu(&halves[0], &halves[1]).unwrap(),
        &candle_swiglu,
        1e-6,
        "swiglu",
    );
}

#[test]
fn inference_gelu_erf_gives_the_bits_of_the_differentiable_one() {
    for dtype in [DType::F32, DType::F64] {
        let xs = (uniform(46, (5, 64), dtype) * 6.0).unwrap();
        let tracked = candle_core::Var::from_tensor(&xs).unwrap();
        let differentiable = gelu_erf(tracked.as_tensor()).unwrap();
        assert!(differentiable.track_op());
        let inference = gelu_erf(&xs).unwrap();
        assert!(!inference.track_op());
        let bits = |t: &candle_core::Tensor| {
            t.to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f64>()
                .unwrap()
                .into_iter()
                .map(f64::to_bits)
                .collect::<Vec<_>>()
        };
        assert_eq!(bits(&inference), bits(&differentiable), "{dtype:?}");
    }
}

#[test]
fn gradients_match_finite_differences() {
    let xs = (uniform(41, (3, 7), DType::F64) * 2.0).unwrap();
    for act in [
        Activation::Silu,
        Activation::Gelu,
        Activation::GeluPytorchTanh,
        Activation::QuickGelu,
    ] {
        assert_gradients(
            &format!("{act:?}"),
            |t| project(&act.forward(&t[0])?, 42),
            std::slice::from_ref(&xs),
        );
    }
}

#[test]
fn swiglu_gradient_matches_finite_differences() {
    let gate = uniform(43, (3, 5), DType::F64);
    let up = uniform(44, (3, 5), DType::F64);
    assert_gradients(
        "swiglu",
        |t| project(&swiglu(&t[0], &t[1])?, 45),
        &[gate, up],
    );
}

#[test]
fn config_names_parse_like_transformers() {
    let parse = |name: &str| serde_json::from_str::<Activation>(&format!("\"{name}\""));
    assert_eq!(parse("silu").unwrap(), Activation::Silu);
    assert_eq!(parse("swish").unwrap(), Activation::Silu);
    assert_eq!(parse("gelu").unwrap(), Activation::Gelu);
    assert_eq!(
        parse("gelu_pytorch_tanh").unwrap(),
        Activation::GeluPytorchTanh
    );
    assert_eq!(parse("gelu_new").unwrap(), Activation::GeluPytorchTanh);
    assert_eq!(parse("quick_gelu").unwrap(), Activation::QuickGelu);
    assert!(parse("gelu_fast").is_err());
}
