//! The Qwen2-VL / Qwen2.5-VL vision tower: patch embedding, transformer blocks with a 2-D rotary, and the patch
//! merger that turns each 2 x 2 block of patches into one language-model token.
//!
//! Built only from the differentiable layers of [`crate::models`], so the tower trains when it is unfrozen. All
//! images of a call are packed into one row of patches; attention stays within an image's frame (or, in
//! Qwen2.5-VL's windowed blocks, within a window) through [`PackedAttention`], whose layout is computed once per
//! call and shared by every block.

use super::config::{VisionConfig, VisionVariant};
use super::grid::{
    check_grids, frame_cu_seqlens, patch_positions, GridError, ImageGrid, WindowPartition,
};
use crate::models::layers::activation::{gelu_erf, Activation};
use crate::models::layers::attention::AttentionKernel;
use crate::models::layers::norm::{LayerNorm, RmsNorm};
use crate::models::layers::packed::PackedAttention;
use crate::models::layers::recompute::RecomputeTape;
use crate::models::layers::rope::{apply_rotary_emb, VisionRotaryEmbedding};
use candle_core::{DType, Device, Module, Result, Shape, Tensor};
use candle_nn::{linear, Linear, VarBuilder};
use std::rc::Rc;

/// Both variants' norms use this epsilon (hard-coded in transformers, not in the config).
const NORM_EPS: f64 = 1e-6;

/// Inputs that do not describe the images they claim to.
#[derive(Debug, thiserror::Error)]
pub enum VisionInputError {
    #[error("vision tower: {0}")]
    Grid(#[from] GridError),
    #[error(
        "vision tower: pixel patches have shape {got:?}, but the grids describe ({rows}, {cols})"
    )]
    PixelShape {
        got: Shape,
        rows: usize,
        cols: usize,
    },
}

impl From<VisionInputError> for candle_core::Error {
    fn from(err: VisionInputError) -> Self {
        candle_core::Error::wrap(err)
    }
}

/// The whole tower.
#[derive(Debug, Clone)]
pub struct VisionTransformer {
    config: VisionConfig,
    patch_embed: Linear,
    rotary: VisionRotaryEmbedding,
    blocks: Vec<VisionBlock>,
    merger: PatchMerger,
    dtype: DType,
    device: Device,
    attention_kernel: AttentionKernel,
}

impl VisionTransformer {
    /// `vb` points at the tower's prefix (`visual`, or `model.visual` in transformers-5 state dicts).
    pub fn new(config: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let blocks = (0..config.depth)
            .map(|i| VisionBlock::new(config, vb.pp(format!("blocks.{i}"))))
            .collect::<Result<_>>()?;
        Ok(Self {
            config: config.clone(),
            patch_embed: patch_embedding(config, vb.pp("patch_embed.proj"))?,
            rotary: VisionRotaryEmbedding::new(config.head_dim(), config.rope_theta, vb.device())?,
            blocks,
            merger: PatchMerger::new(config, vb.pp("merger"))?,
            dtype: vb.dtype(),
            device: vb.device().clone(),
            attention_kernel: AttentionKernel::default(),
        })
    }

    pub fn config(&self) -> &VisionConfig {
        &self.config
    }

    /// Which kernel the blocks' attention runs on; [`AttentionKernel::Blocked`] unless set.
    pub fn attention_kernel(&self) -> AttentionKernel {
        self.attention_kernel
    }

    pub fn set_attention_kernel(&mut self, kernel: AttentionKernel) {
        self.attention_kernel = kernel;
    }

    /// Embeds the images whose patches are the rows of `pixels`, `(sum of patches, patch_dim)` as the image
    /// processor emits them (image after image, merge-block order), with `grids` their patch grids in the same
    /// order. Returns the merged tokens `(sum of merged_tokens, out_hidden_size)`, image after image, each image's
    /// tokens in the order its placeholders take in the prompt.
    pub fn forward(&self, pixels: &Tensor, grids: &[ImageGrid]) -> Result<Tensor> {
        self.forward_on(pixels, grids, None)
    }

    /// [`Self::forward`], with each block a segment of `tape` when one is given: the blocks' activations are then
    /// recomputed in the tape's backward pass instead of kept (see [`RecomputeTape`]).
    pub fn forward_on<'a>(
        &'a self,
        pixels: &Tensor,
        grids: &[ImageGrid],
        tape: Option<&RecomputeTape<'a>>,
    ) -> Result<Tensor> {
        let layout = Rc::new(VisionLayout::new(
            &self.config,
            grids,
            self.dtype,
            &self.device,
        )?);
        check_pixels(pixels, grids, self.config.patch_dim())?;
        let mut xs = self.patch_embed.forward(&pixels.to_dtype(self.dtype)?)?;
        if let Some(window) = &layout.window {
            xs = xs.index_select(&window.patch_order, 0)?;
        }
        let (cos, sin) = self.rotary.cos_sin(&layout.positions, self.dtype)?;
        let kernel = self.attention_kernel;
        for (index, block) in self.blocks.iter().enumerate() {
            let windowed = self.config.is_windowed_block(index);
            xs = match tape {
                None => block.forward(&xs, &cos, &sin, layout.attention(windowed), kernel)?,
                Some(tape) => {
                    let (cos, sin, layout) = (cos.clone(), sin.clone(), Rc::clone(&layout));
                    tape.run(&xs, move |xs| {
                        block.forward(xs, &cos, &sin, layout.attention(windowed), kernel)
                    })?
                }
            };
        }
        let merged = self.merger.forward(&xs)?;
        match &layout.window {
            Some(window) => merged.index_select(&window.restore_merged, 0),
            None => Ok(merged),
        }
    }
}

/// The Conv3d whose kernel equals its stride is one matmul over the flattened patch rows: its weight
/// `(hidden, C, T, P, P)` flattens in the same order as the processor flattens a patch.
fn patch_embedding(config: &VisionConfig, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get(
        (
            config.hidden_size,
            config.in_channels,
            config.temporal_patch_size,
            config.patch_size,
            config.patch_size,
        ),
        "weight",
    )?;
    Ok(Linear::new(
        weight.reshape((config.hidden_size, config.patch_dim()))?,
        None,
    ))
}

fn check_pixels(pixels: &Tensor, grids: &[ImageGrid], patch_dim: usize) -> Result<()> {
    let rows = grids.iter().map(ImageGrid::patches).sum();
    if pixels.dims() != [rows, patch_dim] {
        return Err(VisionInputError::PixelShape {
            got: pixels.shape().clone(),
            rows,
            cols: patch_dim,
        }
        .into());
    }
    Ok(())
}

/// Everything about a call's images that the blocks share: patch coordinates and attention layouts, in the order
/// the blocks see the patches (windowed order for Qwen2.5-VL).
struct VisionLayout {
    /// `(patches, 2)` u32 row/column of each patch.
    positions: Tensor,
    full: PackedAttention,
    window: Option<WindowLayout>,
}

struct WindowLayout {
    attention: PackedAttention,
    /// `(patches)` input patch at each position of the windowed order.
    patch_order: Tensor,
    /// `(merged tokens)` position in the windowed order of each merged token, in image order.
    restore_merged: Tensor,
}

impl VisionLayout {
    fn new(
        config: &VisionConfig,
        grids: &[ImageGrid],
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let merge = config.spatial_merge_size;
        check_grids(grids, merge).map_err(VisionInputError::from)?;
        let mut positions = patch_positions(grids, merge);
        let full = PackedAttention::new(&frame_cu_seqlens(grids), false, dtype, device)?;
        let window = match config.window_merged_tokens() {
            Some(side) => {
                let partition = WindowPartition::new(grids, merge, side);
                let patch_order = partition.patch_order(config.merge_unit());
                positions = patch_order.iter().map(|&patch| positions[patch]).collect();
                Some(WindowLayout {
                    attention: PackedAttention::new(&partition.cu_seqlens, false, dtype, device)?,
                    patch_order: index_tensor(&patch_order, device)?,
                    restore_merged: index_tensor(&partition.inverse_order(), device)?,
                })
            }
            None => None,
        };
        let patches = positions.len();
        let flat: Vec<u32> = positions.into_iter().flatten().collect();
        Ok(Self {
            positions: Tensor::from_vec(flat, (patches, 2), device)?,
            full,
            window,
        })
    }

    fn attention(&self, windowed: bool) -> &PackedAttention {
        match (&self.window, windowed) {
            (Some(window), true) => &window.attention,
            _ => &self.full,
        }
    }
}

fn index_tensor(indices: &[usize], device: &Device) -> Result<Tensor> {
    let indices: Vec<u32> = indices.iter().map(|&i| i as u32).collect();
    let len = indices.len();
    Tensor::from_vec(indices, len, device)
}

/// A pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))`.
#[derive(Debug, Clone)]
pub struct VisionBlock {
    norm1: VisionNorm,
    norm2: VisionNorm,
    attn: VisionAttention,
    mlp: VisionMlp,
}

impl VisionBlock {
    /// `vb` points at `blocks.N`.
    pub fn new(config: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: VisionNorm::new(config, vb.pp("norm1"))?,
            norm2: VisionNorm::new(config, vb.pp("norm2"))?,
            attn: VisionAttention::new(config, vb.pp("attn"))?,
            mlp: VisionMlp::new(config, vb.pp("mlp"))?,
        })
    }

    /// `xs` is `(patches, hidden)`; `cos`, `sin` are the patches' rotary angles from
    /// [`VisionRotaryEmbedding::cos_sin`], `(patches, head_dim / 2)`; `attention` says which patches see which,
    /// `kernel` what computes it.
    pub fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        attention: &PackedAttention,
        kernel: AttentionKernel,
    ) -> Result<Tensor> {
        let attended = self
            .attn
            .forward(&self.norm1.forward(xs)?, cos, sin, attention, kernel)?;
        let xs = (xs + attended)?;
        let mlp = self.mlp.forward(&self.norm2.forward(&xs)?)?;
        xs + mlp
    }
}

#[derive(Debug, Clone)]
enum VisionNorm {
    Layer(LayerNorm),
    Rms(RmsNorm),
}

impl VisionNorm {
    fn new(config: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        Ok(match config.variant {
            VisionVariant::Qwen2Vl => {
                Self::Layer(LayerNorm::new(config.hidden_size, NORM_EPS, vb)?)
            }
            VisionVariant::Qwen25Vl => Self::Rms(RmsNorm::new(config.hidden_size, NORM_EPS, vb)?),
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Layer(norm) => norm.forward(xs),
            Self::Rms(norm) => norm.forward(xs),
        }
    }
}

/// Multi-head self-attention with a fused `qkv` projection and the 2-D rotary on queries and keys.
#[derive(Debug, Clone)]
struct VisionAttention {
    qkv: Linear,
    proj: Linear,
    num_heads: usize,
    head_dim: usize,
}

impl VisionAttention {
    fn new(config: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = config.hidden_size;
        Ok(Self {
            qkv: linear(hidden, 3 * hidden, vb.pp("qkv"))?,
            proj: linear(hidden, hidden, vb.pp("proj"))?,
            num_heads: config.num_heads,
            head_dim: config.head_dim(),
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        attention: &PackedAttention,
        kernel: AttentionKernel,
    ) -> Result<Tensor> {
        let patches = xs.dim(0)?;
        let qkv = self
            .qkv
            .forward(xs)?
            .reshape((patches, 3, self.num_heads, self.head_dim))?;
        let part = |i| qkv.narrow(1, i, 1)?.squeeze(1);
        let (cos, sin) = (cos.unsqueeze(1)?, sin.unsqueeze(1)?);
        let q = apply_rotary_emb(&part(0)?, &cos, &sin)?;
        let k = apply_rotary_emb(&part(1)?, &cos, &sin)?;
        let v = part(2)?.contiguous()?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = attention.forward(&q, &k, &v, scale, kernel)?;
        self.proj
            .forward(&out.reshape((patches, self.num_heads * self.head_dim))?)
    }
}

#[derive(Debug, Clone)]
enum VisionMlp {
    /// Qwen2-VL: `fc2(act(fc1(x)))`.
    Plain {
        fc1: Linear,
        fc2: Linear,
        act: Activation,
    },
    /// Qwen2.5-VL: `down(act(gate(x)) * up(x))`, all with biases.
    Gated {
        gate: Linear,
        up: Linear,
        down: Linear,
        act: Activation,
    },
}

impl VisionMlp {
    fn new(config: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let (hidden, inner, act) = (
            config.hidden_size,
            config.intermediate_size,
            config.hidden_act,
        );
        Ok(match config.variant {
            VisionVariant::Qwen2Vl => Self::Plain {
                fc1: linear(hidden, inner, vb.pp("fc1"))?,
                fc2: linear(inner, hidden, vb.pp("fc2"))?,
                act,
            },
            VisionVariant::Qwen25Vl => Self::Gated {
                gate: linear(hidden, inner, vb.pp("gate_proj"))?,
                up: linear(hidden, inner, vb.pp("up_proj"))?,
                down: linear(inner, hidden, vb.pp("down_proj"))?,
                act,
            },
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Plain { fc1, fc2, act } => fc2.forward(&act.forward(&fc1.forward(xs)?)?),
            Self::Gated {
                gate,
                up,
                down,
                act,
            } => {
                let gated = (act.forward(&gate.forward(xs)?)? * up.forward(xs)?)?;
                down.forward(&gated)
            }
        }
    }
}

/// Normalises each patch, concatenates the `merge^2` consecutive patches of each merge block and projects them
/// to the text model's width through a GELU MLP (`mlp.0`, `mlp.2`).
#[derive(Debug, Clone)]
struct PatchMerger {
    ln_q: VisionNorm,
    fc1: Linear,
    fc2: Linear,
    merged_width: usize,
}

impl PatchMerger {
    fn new(config: &VisionConfig, vb: VarBuilder) -> Result<Self> {
        let merged_width = config.hidden_size * config.merge_unit();
        Ok(Self {
            ln_q: VisionNorm::new(config, vb.pp("ln_q"))?,
            fc1: linear(merged_width, merged_width, vb.pp("mlp.0"))?,
            fc2: linear(merged_width, config.out_hidden_size, vb.pp("mlp.2"))?,
            merged_width,
        })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let normed = self.ln_q.forward(xs)?;
        let tokens = normed.elem_count() / self.merged_width;
        let hidden = self
            .fc1
            .forward(&normed.reshape((tokens, self.merged_width))?)?;
        self.fc2.forward(&gelu_erf(&hidden)?)
    }
}
