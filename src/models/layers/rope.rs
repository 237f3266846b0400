//! Rotary position embeddings in transformers' rotate-half convention (Llama, Qwen2, Qwen3), Qwen2-VL's
//! multimodal 3-D variant (M-RoPE), and the 2-D rotary of the Qwen2-VL vision tower, all differentiable.
//!
//! candle-nn's `rope` kernels have no backward. Here the rotation is composed of `narrow`, multiplications and a
//! `cat`. cos/sin are carried at half width, `(.., head_dim / 2)`: transformers duplicates them to full width
//! (`cat(freqs, freqs)`), and the half-width form is the same rotation with half the memory.
//!
//! Angles are computed in f32 exactly as transformers does (`inv_freq` in f32, `position * inv_freq` in f32),
//! because at thousands of positions the angle's rounding is visible in the result; only cos/sin are then cast.

use crate::models::formats::precision::compute_dtype;
use crate::models::layers::layer_error::LayerError;
use candle_core::{DType, Device, Result, Tensor, D};

/// Rotates `xs` (`(.., head_dim)`) by the angles whose cos and sin are given at half width: `cos` and `sin` must
/// broadcast to `xs`'s shape with the last dimension halved. For `xs` of shape `(batch, heads, seq, head_dim)` and
/// cos/sin of shape `(batch, seq, head_dim / 2)`, pass `cos.unsqueeze(1)`.
///
/// With `x = [x1, x2]` this is `[x1 cos - x2 sin, x2 cos + x1 sin]`, i.e. transformers' `x * cos +
/// rotate_half(x) * sin`, not the interleaved pairing of GPT-J. It computes in cos's dtype and returns `xs`'s,
/// which reproduces both the decoder (cos cast to the activations' dtype) and the vision tower (activations
/// upcast to f32 for the rotation).
pub fn apply_rotary_emb(xs: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if cos.shape() != sin.shape() {
        return Err(LayerError::RotaryCosSin {
            cos: cos.shape().clone(),
            sin: sin.shape().clone(),
        }
        .into());
    }
    let input = xs.dim(D::Minus1)?;
    let half = cos.dim(D::Minus1)?;
    if input != 2 * half {
        return Err(LayerError::RotaryWidth { input, half }.into());
    }
    let dtype = xs.dtype();
    let xs = xs.to_dtype(cos.dtype())?;
    let x1 = xs.narrow(D::Minus1, 0, half)?;
    let x2 = xs.narrow(D::Minus1, half, half)?;
    let first = (x1.broadcast_mul(cos)? - x2.broadcast_mul(sin)?)?;
    let second = (x2.broadcast_mul(cos)? + x1.broadcast_mul(sin)?)?;
    Tensor::cat(&[first, second], D::Minus1)?.to_dtype(dtype)
}

/// The decoder's rotary embedding: `inv_freq[i] = theta^(-2i / head_dim)`, angles `position * inv_freq`.
#[derive(Debug, Clone)]
pub struct RotaryEmbedding {
    /// `(head_dim / 2)`, f32.
    inv_freq: Tensor,
}

impl RotaryEmbedding {
    pub fn new(head_dim: usize, theta: f64, device: &Device) -> Result<Self> {
        if head_dim == 0 || head_dim % 2 != 0 {
            return Err(LayerError::RotaryHeadDim {
                head_dim,
                multiple: 2,
            }
            .into());
        }
        Ok(Self {
            inv_freq: inverse_frequencies(head_dim, theta, device)?,
        })
    }

    /// The `(head_dim / 2)` f32 inverse frequencies.
    pub fn inv_freq(&self) -> &Tensor {
        &self.inv_freq
    }

    /// Half the head dimension: the width of the cos/sin this returns.
    pub fn half_dim(&self) -> usize {
        self.inv_freq.elem_count()
    }

    /// cos and sin for integer `position_ids` of any shape (usually `(batch, seq)`: per-row positions cover left
    /// padding and packed sequences that restart at 0), each of shape `position_ids.shape + (head_dim / 2)` in
    /// `dtype`.
    pub fn cos_sin(&self, position_ids: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        cos_sin(&angles(position_ids, &self.inv_freq)?, dtype)
    }

    /// Qwen2-VL's M-RoPE: `position_ids` has shape `(3, batch, seq)`, the temporal, height and width position of
    /// each token (all three equal for text). Frequency band `j` takes its position from row `r(j)`, where the
    /// bands are split into consecutive runs of `section` lengths and run `i` uses row `i % 3`. Returns cos and
    /// sin of shape `(batch, seq, head_dim / 2)` in `dtype`.
    pub fn mrope_cos_sin(
        &self,
        position_ids: &Tensor,
        section: &MropeSection,
        dtype: DType,
    ) -> Result<(Tensor, Tensor)> {
        match position_ids.dims() {
            [3, _, _] => {}
            _ => {
                return Err(LayerError::PositionShape {
                    what: "M-RoPE",
                    expected: "(3, batch, seq)",
                    got: position_ids.shape().clone(),
                }
                .into())
            }
        }
        section.check_half_dim(self.half_dim())?;
        let angles = angles(position_ids, &self.inv_freq)?;
        let mut start = 0;
        let mut bands = Vec::with_capacity(section.lengths.len());
        for (run, &len) in section.lengths.iter().enumerate() {
            bands.push(angles.get(run % 3)?.narrow(D::Minus1, start, len)?);
            start += len;
        }
        cos_sin(&Tensor::cat(&bands, D::Minus1)?, dtype)
    }
}

/// The `mrope_section` of a Qwen2-VL / Qwen2.5-VL config, e.g. `[16, 24, 24]` for head_dim 128: how many
/// frequency bands (at half width) take the temporal, height and width positions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MropeSection {
    lengths: Vec<usize>,
}

impl MropeSection {
    /// Checks that the runs cover exactly `head_dim / 2` bands.
    pub fn new(lengths: Vec<usize>, head_dim: usize) -> Result<Self> {
        let section = Self { lengths };
        section.check_half_dim(head_dim / 2)?;
        Ok(section)
    }

    fn check_half_dim(&self, half: usize) -> Result<()> {
        let sum = self.lengths.iter().sum();
        if sum != half {
            return Err(LayerError::MropeSection {
                section: self.lengths.clone(),
                sum,
                half,
            }
            .into());
        }
        Ok(())
    }
}

/// The vision tower's 2-D rotary: a quarter of the head dimension's bands turn with the patch row, a quarter with
/// the patch column, each pair repeated as in [`apply_rotary_emb`]. `inv_freq` is that of a 1-D rotary of width
/// `head_dim / 2`.
#[derive(Debug, Clone)]
pub struct VisionRotaryEmbedding {
    /// `(head_dim / 4)`, f32.
    inv_freq: Tensor,
}

impl VisionRotaryEmbedding {
    /// `theta` is 10000 in Qwen2-VL and Qwen2.5-VL.
    pub fn new(head_dim: usize, theta: f64, device: &Device) -> Result<Self> {
        if head_dim == 0 || head_dim % 4 != 0 {
            return Err(LayerError::RotaryHeadDim {
                head_dim,
                multiple: 4,
            }
            .into());
        }
        Ok(Self {
            inv_freq: inverse_frequencies(head_dim / 2, theta, device)?,
        })
    }

    /// cos and sin for patch coordinates `hw_positions` of shape `(patches, 2)` (row, column), each of shape
    /// `(patches, head_dim / 2)`: the row bands, then the column bands. Returned in [`compute_dtype`] of `dtype`,
    /// since transformers applies the vision rotary in f32 for half-precision models; for `q` of shape
    /// `(patches, heads, head_dim)` pass `cos.unsqueeze(1)` to [`apply_rotary_emb`].
    pub fn cos_sin(&self, hw_positions: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
        let patches = match hw_positions.dims() {
            &[patches, 2] => patches,
            _ => {
                return Err(LayerError::PositionShape {
                    what: "vision rotary",
                    expected: "(patches, 2)",
                    got: hw_positions.shape().clone(),
                }
                .into())
            }
        };
        let angles = angles(hw_positions, &self.inv_freq)?
            .reshape((patches, 2 * self.inv_freq.elem_count()))?;
        cos_sin(&angles, compute_dtype(dtype))
    }
}

/// `1 / theta^(2i / dim)` for `i < dim / 2`, in f32 arithmetic as transformers computes it.
fn inverse_frequencies(dim: usize, theta: f64, device: &Device) -> Result<Tensor> {
    let base = theta as f32;
    let inv_freq: Vec<f32> = (0..dim)
        .step_by(2)
        .map(|i| 1.0 / base.powf(i as f32 / dim as f32))
        .collect();
    let len = inv_freq.len();
    Tensor::from_vec(inv_freq, len, device)
}

/// `positions.shape + (bands)` f32 angles.
fn angles(positions: &Tensor, inv_freq: &Tensor) -> Result<Tensor> {
    positions
        .to_dtype(DType::F32)?
        .unsqueeze(D::Minus1)?
        .broadcast_mul(inv_freq)
}

fn cos_sin(angles: &Tensor, dtype: DType) -> Result<(Tensor, Tensor)> {
    Ok((
        angles.cos()?.to_dtype(dtype)?,
        angles.sin()?.to_dtype(dtype)?,
    ))
}
