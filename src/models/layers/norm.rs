//! RMSNorm and LayerNorm with a backward pass.
//!
//! candle-nn's `RmsNorm` and `LayerNorm` dispatch to fused kernels without a backward whenever the input is
//! contiguous, which it almost always is; these compose differentiable ops instead. Both follow transformers'
//! precision rule: half-precision inputs are normalised in f32 and cast back, because the mean of squares over
//! thousands of channels is not representable in bf16.

use crate::models::formats::precision::compute_dtype;
use crate::models::layers::layer_error::LayerError;
use candle_core::{Module, Result, Tensor, D};
use candle_nn::VarBuilder;

/// Root-mean-square normalisation over the last dimension (Llama, Qwen2, Qwen2.5-VL's vision tower, Qwen3's
/// q/k norms).
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f64,
}

impl RmsNorm {
    /// Loads `weight` of length `size`.
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self::from_weight(vb.get(size, "weight")?, eps))
    }

    pub fn from_weight(weight: Tensor, eps: f64) -> Self {
        Self { weight, eps }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }
}

impl Module for RmsNorm {
    /// `weight * (x / sqrt(mean(x^2) + eps))`, the normalised value cast back to the input dtype before the weight
    /// multiplies it, in that order, as transformers' `LlamaRMSNorm` does.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        check_weight("rms_norm", &self.weight, xs)?;
        let dtype = xs.dtype();
        let xs = xs.to_dtype(compute_dtype(dtype))?;
        let mean_square = xs.sqr()?.mean_keepdim(D::Minus1)?;
        let inv_rms = (mean_square + self.eps)?.sqrt()?.recip()?;
        let normed = xs.broadcast_mul(&inv_rms)?.to_dtype(dtype)?;
        normed.broadcast_mul(&self.weight.to_dtype(dtype)?)
    }
}

/// Mean/variance normalisation over the last dimension with an affine weight and bias (Qwen2-VL's vision tower
/// and patch merger, CLIP, SigLIP, BERT).
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f64,
}

impl LayerNorm {
    /// Loads `weight` and `bias` of length `size`.
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self::from_weights(
            vb.get(size, "weight")?,
            vb.get(size, "bias")?,
            eps,
        ))
    }

    pub fn from_weights(weight: Tensor, bias: Tensor, eps: f64) -> Self {
        Self { weight, bias, eps }
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> &Tensor {
        &self.bias
    }
}

impl Module for LayerNorm {
    /// The affine part is applied in the compute dtype too, before the cast back, as torch's fused layer_norm
    /// kernel does for half-precision inputs. The variance is the biased one (divided by n), as in torch.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        check_weight("layer_norm", &self.weight, xs)?;
        check_weight("layer_norm", &self.bias, xs)?;
        let dtype = xs.dtype();
        let internal = compute_dtype(dtype);
        let xs = xs.to_dtype(internal)?;
        let centered = xs.broadcast_sub(&xs.mean_keepdim(D::Minus1)?)?;
        let variance = centered.sqr()?.mean_keepdim(D::Minus1)?;
        let inv_std = (variance + self.eps)?.sqrt()?.recip()?;
        centered
            .broadcast_mul(&inv_std)?
            .broadcast_mul(&self.weight.to_dtype(internal)?)?
            .broadcast_add(&self.bias.to_dtype(internal)?)?
            .to_dtype(dtype)
    }
}

fn check_weight(layer: &'static str, weight: &Tensor, xs: &Tensor) -> Result<()> {
    let input = xs.dim(D::Minus1)?;
    if weight.dims() != [input] {
        return Err(LayerError::WeightSize {
            layer,
            weight: weight.shape().clone(),
            input,
        }
        .into());
    }
    Ok(())
}
