//! The activations the supported architectures use, each with an exact backward pass.
//!
//! What candle ships, and why each is or is not used here:
//! - `Tensor::silu`: backward is exact; used as is (Qwen2/Qwen3/Llama MLPs, Qwen2.5-VL's vision MLP).
//! - `Tensor::gelu` (tanh approximation) and `Tensor::gelu_erf`: both have a backward, but written with
//!   constants rounded to six digits (0.797885, 0.0356774, 0.398942), so their gradients are off by ~1e-6
//!   relative, which a gradient check cannot tell from a bug. Rebuilt here from `tanh` and `erf`, whose backward
//!   passes are exact.
//! - `candle_nn::ops::sigmoid`: a custom op whose backward is exact; QuickGELU (Qwen2-VL's vision MLP, CLIP) is
//!   built on it.

use candle_core::{DType, Result, Tensor};
use std::f64::consts::{FRAC_1_SQRT_2, FRAC_2_PI};

/// An activation as named by a transformers config's `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    #[serde(alias = "swish")]
    Silu,
    /// The exact GELU, `x * Phi(x)` (transformers' "gelu", torch's `nn.GELU()`).
    Gelu,
    /// The tanh approximation of GELU; transformers' "gelu_new" is the same function.
    #[serde(alias = "gelu_new")]
    GeluPytorchTanh,
    QuickGelu,
}

impl Activation {
    pub fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Silu => xs.silu(),
            Self::Gelu => gelu_erf(xs),
            Self::GeluPytorchTanh => gelu_tanh(xs),
            Self::QuickGelu => quick_gelu(xs),
        }
    }
}

impl candle_core::Module for Activation {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Activation::forward(self, xs)
    }
}

/// `silu(gate) * up`, the gated MLP of Llama-family decoders.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    gate.silu()? * up
}

/// `0.5 x (1 + erf(x / sqrt(2)))`. Where no gradient is wanted (inference), in f32 or f64, it is candle's single
/// pass, which computes `(erf(x / sqrt(2)) + 1) * 0.5 * x`: the same roundings as the four passes below (halving
/// is exact), so the bits are the same, at a quarter of the memory traffic.
pub fn gelu_erf(xs: &Tensor) -> Result<Tensor> {
    if !xs.track_op() && matches!(xs.dtype(), DType::F32 | DType::F64) {
        return xs.gelu_erf();
    }
    let cdf = xs.affine(FRAC_1_SQRT_2, 0.)?.erf()?.affine(0.5, 0.5)?;
    xs * cdf
}

/// `0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))`.
pub fn gelu_tanh(xs: &Tensor) -> Result<Tensor> {
    let inner = (xs.sqr()?.affine(0.044715, 1.)? * xs)?.affine(FRAC_2_PI.sqrt(), 0.)?;
    let half_gate = inner.tanh()?.affine(0.5, 0.5)?;
    xs * half_gate
}

/// `x * sigmoid(1.702 x)`.
pub fn quick_gelu(xs: &Tensor) -> Result<Tensor> {
    xs * candle_nn::ops::sigmoid(&xs.affine(1.702, 0.)?)?
}
