//! The decoder's projections: a frozen base weight with an optional LoRA adapter.
//!
//! The base weight and bias are plain tensors, never `Var`s, so no optimizer can reach them and backward does not
//! allocate gradients for them; only an attached [`LoraAdapter`] trains. Each projection remembers its full
//! checkpoint path (e.g. `model.layers.0.self_attn.q_proj`), which is what PEFT keys its adapter weights by.

use crate::models::adapters::lora::LoraAdapter;
use crate::models::layers::layer_error::LayerError;
use candle_core::{Result, Tensor, D};
use candle_nn::VarBuilder;

#[derive(Debug)]
pub struct Linear {
    path: String,
    /// `(out, in)`, as stored by transformers.
    weight: Tensor,
    bias: Option<Tensor>,
    lora: Option<LoraAdapter>,
}

impl Linear {
    /// Loads `weight` (and `bias` when `bias` is set) under `vb`'s prefix, which becomes the projection's path.
    pub fn load(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get((out_dim, in_dim), "weight")?;
        let bias = if bias {
            Some(vb.get(out_dim, "bias")?)
        } else {
            None
        };
        Ok(Self::from_weights(vb.prefix(), weight, bias))
    }

    pub fn from_weights(path: String, weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            path,
            weight,
            bias,
            lora: None,
        }
    }

    /// `xs W^T + b`, plus the adapter's contribution. `train` switches the adapter's dropout on.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let out = matmul_transposed(xs, &self.weight)?;
        let out = match &self.bias {
            Some(bias) => out.broadcast_add(bias)?,
            None => out,
        };
        match &self.lora {
            Some(adapter) => out + adapter.forward_t(xs, train)?,
            None => Ok(out),
        }
    }

    /// The checkpoint path, e.g. `model.layers.0.self_attn.q_proj`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The last component of the path (`q_proj`), which LoRA's `target_modules` match.
    pub fn module_name(&self) -> &str {
        self.path.rsplit('.').next().unwrap_or(&self.path)
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn in_dim(&self) -> usize {
        self.weight.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.weight.dims()[0]
    }

    pub fn lora(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref()
    }

    /// Attaches (or, with `None`, removes) an adapter, which must fit the weight's shape.
    pub fn set_lora(&mut self, adapter: Option<LoraAdapter>) -> Result<()> {
        if let Some(adapter) = &adapter {
            if adapter.in_dim() != self.in_dim() || adapter.out_dim() != self.out_dim() {
                candle_core::bail!(
                    "{}: a LoRA adapter for {} -> {} features does not fit the weight of shape {:?}",
                    self.path,
                    adapter.in_dim(),
                    adapter.out_dim(),
                    self.weight.shape()
                );
            }
        }
        self.lora = adapter;
        Ok(())
    }

    /// Makes the adapter, if any, inference-only (see [`LoraAdapter::freeze`]).
    pub fn freeze_lora(&mut self) {
        if let Some(adapter) = &mut self.lora {
            adapter.freeze();
        }
    }

    /// Folds the adapter into the base weight, `W + scaling B A`, and drops it. Without an adapter this does
    /// nothing.
    pub fn merge_lora(&mut self) -> Result<()> {
        if let Some(adapter) = self.lora.take() {
            let delta = adapter.delta_weight()?.to_dtype(self.weight.dtype())?;
            self.weight = (&self.weight + delta)?;
        }
        Ok(())
    }
}

/// `xs W^T` over the last dimension of `xs` (any number of leading dimensions), for `W` of shape `(out, in)`.
pub(crate) fn matmul_transposed(xs: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let (out_dim, in_dim) = weight.dims2()?;
    let input = xs.dim(D::Minus1)?;
    if input != in_dim {
        return Err(LayerError::WeightSize {
            layer: "linear",
            weight: weight.shape().clone(),
            input,
        }
        .into());
    }
    let mut out_shape = xs.dims().to_vec();
    let rows = xs.elem_count() / in_dim;
    if let Some(last) = out_shape.last_mut() {
        *last = out_dim;
    }
    xs.reshape((rows, in_dim))?
        .matmul(&weight.t()?)?
        .reshape(out_shape)
}
