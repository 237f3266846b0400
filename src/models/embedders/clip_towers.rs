//! CLIP's text and vision transformers built from the model layer's differentiable ops.
//!
//! candle-transformers' CLIP towers use candle-nn's fused layer norm, which has no backward pass, so a CLIP built
//! on them cannot be trained; the demo trains its embedder from scratch. These towers load the same weight names as
//! transformers' `CLIPTextTransformer` / `CLIPVisionTransformer`, honour the config's activation and epsilon, and
//! take seeded initial values through the builder's hints (ones and zeros for the norms, transformers' scales for
//! the embeddings) when built from a seeded `VarMap`.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::init::Init;
use candle_nn::{Embedding, Linear, VarBuilder};

use crate::models::layers::activation::Activation;
use crate::models::layers::attention::{attention, AttentionKernel};
use crate::models::layers::mask::AttentionMask;
use crate::models::layers::norm::LayerNorm;

/// What both towers' encoder layers need to know.
#[derive(Debug, Clone, Copy)]
pub struct EncoderShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub layers: usize,
    pub eps: f64,
    pub activation: Activation,
}

fn layer_norm(size: usize, eps: f64, vb: VarBuilder) -> Result<LayerNorm> {
    let weight = vb.get_with_hints(size, "weight", Init::Const(1.0))?;
    let bias = vb.get_with_hints(size, "bias", Init::Const(0.0))?;
    Ok(LayerNorm::from_weights(weight, bias, eps))
}

#[derive(Debug, Clone)]
struct SelfAttention {
    q: Linear,
    k: Linear,
    v: Linear,
    out: Linear,
    heads: usize,
}

impl SelfAttention {
    fn new(shape: &EncoderShape, vb: VarBuilder) -> Result<Self> {
        let h = shape.hidden;
        Ok(Self {
            q: candle_nn::linear(h, h, vb.pp("q_proj"))?,
            k: candle_nn::linear(h, h, vb.pp("k_proj"))?,
            v: candle_nn::linear(h, h, vb.pp("v_proj"))?,
            out: candle_nn::linear(h, h, vb.pp("out_proj"))?,
            heads: shape.heads,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&AttentionMask>,
        kernel: AttentionKernel,
    ) -> Result<Tensor> {
        let (batch, len, hidden) = xs.dims3()?;
        let head_dim = hidden / self.heads;
        let split = |t: Tensor| -> Result<Tensor> {
            t.reshape((batch, len, self.heads, head_dim))?
                .transpose(1, 2)?
                .contiguous()
        };
        let q = split(self.q.forward(xs)?)?;
        let k = split(self.k.forward(xs)?)?;
        let v = split(self.v.forward(xs)?)?;
        let scale = (head_dim as f64).powf(-0.5);
        let attended = attention(&q, &k, &v, mask, scale, kernel)?
            .transpose(1, 2)?
            .reshape((batch, len, hidden))?;
        self.out.forward(&attended)
    }
}

#[derive(Debug, Clone)]
struct EncoderLayer {
    attention: SelfAttention,
    norm1: LayerNorm,
    fc1: Linear,
    fc2: Linear,
    norm2: LayerNorm,
    activation: Activation,
}

impl EncoderLayer {
    fn new(shape: &EncoderShape, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            attention: SelfAttention::new(shape, vb.pp("self_attn"))?,
            norm1: layer_norm(shape.hidden, shape.eps, vb.pp("layer_norm1"))?,
            fc1: candle_nn::linear(shape.hidden, shape.intermediate, vb.pp("mlp").pp("fc1"))?,
            fc2: candle_nn::linear(shape.intermediate, shape.hidden, vb.pp("mlp").pp("fc2"))?,
            norm2: layer_norm(shape.hidden, shape.eps, vb.pp("layer_norm2"))?,
            activation: shape.activation,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        mask: Option<&AttentionMask>,
        kernel: AttentionKernel,
    ) -> Result<Tensor> {
        let attended = self
            .attention
            .forward(&self.norm1.forward(xs)?, mask, kernel)?;
        let xs = (xs + attended)?;
        let hidden = self
            .activation
            .forward(&self.fc1.forward(&self.norm2.forward(&xs)?)?)?;
        xs + self.fc2.forward(&hidden)?
    }
}

#[derive(Debug, Clone)]
struct Encoder {
    layers: Vec<EncoderLayer>,
    kernel: AttentionKernel,
}

impl Encoder {
    fn new(shape: &EncoderShape, vb: VarBuilder) -> Result<Self> {
        let layers = (0..shape.layers)
            .map(|i| EncoderLayer::new(shape, vb.pp("layers").pp(i)))
            .collect::<Result<_>>()?;
        Ok(Self {
            layers,
            kernel: AttentionKernel::default(),
        })
    }

    fn forward(&self, xs: &Tensor, mask: Option<&AttentionMask>) -> Result<Tensor> {
        self.layers.iter().try_fold(xs.clone(), |xs, layer| {
            layer.forward(&xs, mask, self.kernel)
        })
    }
}

/// transformers' `CLIPTextTransformer`: causal self-attention over token + position embeddings, then the final
/// layer norm; the caller pools at the end-of-text position.
#[derive(Debug, Clone)]
pub struct TextTower {
    token_embedding: Embedding,
    position_embedding: Embedding,
    encoder: Encoder,
    final_norm: LayerNorm,
    max_positions: usize,
}

impl TextTower {
    pub fn new(
        shape: &EncoderShape,
        vocab: usize,
        max_positions: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let embeddings = vb.pp("embeddings");
        let embedding = |rows: usize, name: &str| -> Result<Embedding> {
            let init = Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            };
            let weight =
                embeddings
                    .pp(name)
                    .get_with_hints((rows, shape.hidden), "weight", init)?;
            Ok(Embedding::new(weight, shape.hidden))
        };
        Ok(Self {
            token_embedding: embedding(vocab, "token_embedding")?,
            position_embedding: embedding(max_positions, "position_embedding")?,
            encoder: Encoder::new(shape, vb.pp("encoder"))?,
            final_norm: layer_norm(shape.hidden, shape.eps, vb.pp("final_layer_norm"))?,
            max_positions,
        })
    }

    /// Which kernel the layers' attention runs on; [`AttentionKernel::Blocked`] unless set.
    pub fn set_attention_kernel(&mut self, kernel: AttentionKernel) {
        self.encoder.kernel = kernel;
    }

    /// Final hidden states `(batch, len, hidden)` of `(batch, len)` token ids.
    pub fn forward(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (_, len) = input_ids.dims2()?;
        if len > self.max_positions {
            candle_core::bail!(
                "{len} tokens exceed the text tower's {} positions",
                self.max_positions
            )
        }
        let positions = Tensor::arange(0u32, len as u32, input_ids.device())?;
        let embedded = self
            .token_embedding
            .forward(input_ids)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let mask =
            AttentionMask::causal(len, len, mask_dtype(embedded.dtype()), input_ids.device())?;
        let hidden = self.encoder.forward(&embedded, Some(&mask))?;
        self.final_norm.forward(&hidden)
    }
}

/// transformers' `CLIPVisionTransformer`: patch embedding (a strided convolution, computed as a matrix product
/// over flattened patches), a class token, position embeddings, the pre-norm, the encoder, and the post-norm of
/// the class token as the pooled output.
#[derive(Debug, Clone)]
pub struct VisionTower {
    class_embedding: Tensor,
    patch_weight: Tensor,
    position_embedding: Embedding,
    pre_norm: LayerNorm,
    encoder: Encoder,
    post_norm: LayerNorm,
    patch: usize,
    image_size: usize,
}

impl VisionTower {
    pub fn new(
        shape: &EncoderShape,
        image_size: usize,
        patch: usize,
        vb: VarBuilder,
    ) -> Result<Self> {
        let embeddings = vb.pp("embeddings");
        let hidden = shape.hidden;
        let scale = (hidden as f64).powf(-0.5);
        let class_embedding = embeddings.get_with_hints(
            hidden,
            "class_embedding",
            Init::Randn {
                mean: 0.0,
                stdev: scale,
            },
        )?;
        let patch_weight = embeddings.pp("patch_embedding").get_with_hints(
            (hidden, 3, patch, patch),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        let positions = (image_size / patch).pow(2) + 1;
        let position_weight = embeddings.pp("position_embedding").get_with_hints(
            (positions, hidden),
            "weight",
            Init::Randn {
                mean: 0.0,
                stdev: 0.02,
            },
        )?;
        Ok(Self {
            class_embedding,
            patch_weight,
            position_embedding: Embedding::new(position_weight, hidden),
            pre_norm: layer_norm(hidden, shape.eps, vb.pp("pre_layrnorm"))?,
            encoder: Encoder::new(shape, vb.pp("encoder"))?,
            post_norm: layer_norm(hidden, shape.eps, vb.pp("post_layernorm"))?,
            patch,
            image_size,
        })
    }

    /// Which kernel the layers' attention runs on; [`AttentionKernel::Blocked`] unless set.
    pub fn set_attention_kernel(&mut self, kernel: AttentionKernel) {
        self.encoder.kernel = kernel;
    }

    /// Pooled output `(batch, hidden)` of `(batch, 3, image_size, image_size)` pixel values.
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Tensor> {
        let (batch, channels, height, width) = pixel_values.dims4()?;
        if channels != 3 || height != self.image_size || width != self.image_size {
            candle_core::bail!(
                "pixel values of shape {:?}, expected (batch, 3, {s}, {s})",
                pixel_values.dims(),
                s = self.image_size
            )
        }
        let p = self.patch;
        let grid = height / p;
        let hidden = self.class_embedding.dim(0)?;
        let patches = pixel_values
            .reshape((batch, 3, grid, p, grid, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .reshape((batch, grid * grid, 3 * p * p))?;
        let kernel = self.patch_weight.reshape((hidden, 3 * p * p))?.t()?;
        let embedded = patches.broadcast_matmul(&kernel)?;
        let class = self
            .class_embedding
            .reshape((1, 1, hidden))?
            .broadcast_as((batch, 1, hidden))?
            .to_dtype(embedded.dtype())?;
        let positions = Tensor::arange(0u32, (grid * grid + 1) as u32, pixel_values.device())?;
        let tokens = Tensor::cat(&[&class, &embedded], 1)?
            .broadcast_add(&self.position_embedding.forward(&positions)?)?;
        let hidden_states = self
            .encoder
            .forward(&self.pre_norm.forward(&tokens)?, None)?;
        self.post_norm
            .forward(&hidden_states.narrow(1, 0, 1)?.squeeze(1)?)
    }
}

/// Masks add to scores in the softmax's dtype, which is f32 for half-precision activations.
fn mask_dtype(dtype: DType) -> DType {
    crate::models::formats::precision::compute_dtype(dtype)
}

/// Index of each row's pooled token, as a flat index into `(batch * len)` rows.
pub fn flat_positions(positions: &[usize], len: usize) -> Vec<u32> {
    positions
        .iter()
        .enumerate()
        .map(|(row, p)| (row * len + p) as u32)
        .collect()
}

/// `(batch, dim)` rows scaled to unit length, differentiably (the training loss needs gradients through it).
pub fn l2_normalise(xs: &Tensor) -> Result<Tensor> {
    let norm = xs.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    xs.broadcast_div(&(norm + 1e-12)?)
}
