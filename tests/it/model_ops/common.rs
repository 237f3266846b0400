//! Helpers shared by the model-op tests: seeded inputs, scalar projections and closeness checks.

use candle_core::{DType, Device, Result, Shape, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use umrank::models::gradcheck::GradCheck;

/// Uniform values in [-2, 2) from a fixed seed.
pub fn uniform<S: Into<Shape>>(seed: u64, shape: S, dtype: DType) -> Tensor {
    let shape = shape.into();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let values: Vec<f64> = (0..shape.elem_count())
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu)
        .and_then(|t| t.to_dtype(dtype))
        .expect("building a test tensor")
}

/// `sum(out * r)` for fixed random `r`: a scalar whose gradient weighs every output element differently, so a
/// gradient check sees each of them.
pub fn project(out: &Tensor, seed: u64) -> Result<Tensor> {
    let weights = uniform(seed, out.shape().clone(), out.dtype());
    (out * weights)?.sum_all()
}

pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a.to_dtype(DType::F64).unwrap() - b.to_dtype(DType::F64).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f64>()
        .unwrap()
}

pub fn assert_close(a: &Tensor, b: &Tensor, tol: f64, what: &str) {
    let diff = max_abs_diff(a, b);
    assert!(diff <= tol, "{what}: max abs diff {diff:e} > {tol:e}");
}

/// Runs the default gradient check and requires a relative error below 1e-6 on every input.
pub fn assert_gradients<F>(what: &str, f: F, inputs: &[Tensor])
where
    F: Fn(&[Tensor]) -> Result<Tensor>,
{
    let report = GradCheck::default()
        .run(f, inputs)
        .expect("gradient check runs");
    assert!(
        report.inputs.iter().all(|input| input.reached),
        "{what}: backward did not reach every input\n{report}"
    );
    assert!(report.max_rel_error() < 1e-6, "{what}:\n{report}");
}
