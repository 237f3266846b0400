//! The text decoder of Qwen2, Qwen2-VL / Qwen2.5-VL, Qwen3 and Llama, trainable end to end.
//!
//! One pre-norm transformer serves all four: grouped-query attention with rotate-half RoPE, RMSNorm and a SiLU
//! gated MLP. They differ only in q/k/v biases (Qwen2), per-head q/k RMSNorm (Qwen3) and where rotary positions
//! come from (1-D positions, or Qwen2-VL's (temporal, height, width) M-RoPE). Every operation is one with a
//! backward pass (our norms, softmax, rotary and attention; candle matmuls), and there is no in-place KV cache, so
//! the same forward pass serves training and scoring.
//!
//! Inputs are either token ids or embeddings (the VL model splices image features into the embedded sequence),
//! laid out as a padded batch (per-row key padding plus causal mask), as sequences packed into one row
//! (`cu_seqlens`), or as groups of sequences packed with their shared prefix once ([`SharedPrefixAttention`]).
//! The result is the final-norm hidden state; scoring then needs only a few LM-head rows
//! ([`Decoder::token_logits`], e.g. "yes" and "no"), never the full-vocabulary matmul.

use crate::models::adapters::lora::{self, LoraConfig};
use crate::models::adapters::peft::{self, PeftAdapter, PeftError};
use crate::models::formats::hf_config::{ConfigError, DecoderConfig};
use crate::models::formats::weights::{Weights, WeightsError};
use crate::models::layers::activation::Activation;
use crate::models::layers::attention::{attention, AttentionKernel};
use crate::models::layers::layer_error::LayerError;
use crate::models::layers::linear::{matmul_transposed, Linear};
use crate::models::layers::mask::AttentionMask;
use crate::models::layers::norm::RmsNorm;
use crate::models::layers::packed::PackedAttention;
use crate::models::layers::recompute::RecomputeTape;
use crate::models::layers::rope::{apply_rotary_emb, MropeSection, RotaryEmbedding};
use crate::models::layers::shared_prefix::{PrefixGroup, SharedPrefixAttention};
use candle_core::{DType, Device, Module, Result, Tensor, Var, D};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};
use std::rc::Rc;

/// Where transformers versions that nest the VL language model keep the decoder's weights.
const NESTED_VL_PREFIX: &str = "model.language_model";
const FLAT_PREFIX: &str = "model";

/// How the tokens of a batch may attend to each other. Built once per batch and shared by all layers.
#[derive(Debug, Clone)]
pub enum AttentionLayout {
    /// A `(batch, seq)` batch: causal attention within each row, padding keys masked out.
    Padded(AttentionMask),
    /// Several sequences concatenated into one `(1, total)` row, each attending causally only to itself.
    Packed(PackedAttention),
    /// Groups of sequences with a shared prefix in one `(1, total)` row: each group's prefix once, then each
    /// sequence's suffix attending to that prefix and causally to itself.
    SharedPrefix(SharedPrefixAttention),
}

impl AttentionLayout {
    /// A padded batch; `attention_mask` is `(batch, seq)`, nonzero on real tokens (left or right padding).
    pub fn padded(attention_mask: &Tensor, dtype: DType) -> Result<Self> {
        let (_, seq) = attention_mask.dims2()?;
        Ok(Self::Padded(AttentionMask::causal_key_padding(
            attention_mask,
            seq,
            dtype,
        )?))
    }

    /// Unpadded rows of `seq` tokens.
    pub fn causal(seq: usize, dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self::Padded(AttentionMask::causal(
            seq, seq, dtype, device,
        )?))
    }

    /// Packed sequences: `cu_seqlens` is `[0, len_0, len_0 + len_1, ..., total]`.
    pub fn packed(cu_seqlens: &[usize], dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self::Packed(PackedAttention::new(
            cu_seqlens, true, dtype, device,
        )?))
    }

    /// Groups with shared prefixes, tiling one row (see [`SharedPrefixAttention::new`]).
    pub fn shared_prefix(groups: &[PrefixGroup], dtype: DType, device: &Device) -> Result<Self> {
        Ok(Self::SharedPrefix(SharedPrefixAttention::new(
            groups, dtype, device,
        )?))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("{dir}: cannot build the decoder: {source}")]
    Build {
        dir: PathBuf,
        source: Box<candle_core::Error>,
    },
}

#[derive(Debug)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
    num_heads: usize,
    num_kv_heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let hidden = cfg.hidden_size;
        let (heads, kv_heads, head_dim) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.head_dim,
        );
        let qk_norm = |name: &str| -> Result<Option<RmsNorm>> {
            cfg.qk_norm
                .then(|| RmsNorm::new(head_dim, cfg.rms_norm_eps, vb.pp(name)))
                .transpose()
        };
        Ok(Self {
            q_proj: Linear::load(hidden, heads * head_dim, cfg.qkv_bias, vb.pp("q_proj"))?,
            k_proj: Linear::load(hidden, kv_heads * head_dim, cfg.qkv_bias, vb.pp("k_proj"))?,
            v_proj: Linear::load(hidden, kv_heads * head_dim, cfg.qkv_bias, vb.pp("v_proj"))?,
            o_proj: Linear::load(heads * head_dim, hidden, cfg.o_bias, vb.pp("o_proj"))?,
            q_norm: qk_norm("q_norm")?,
            k_norm: qk_norm("k_norm")?,
            num_heads: heads,
            num_kv_heads: kv_heads,
            head_dim,
        })
    }

    /// `xs` is `(batch, seq, hidden)`; `cos`/`sin` are `(batch, seq, 1, head_dim / 2)`.
    fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        layout: &AttentionLayout,
        kernel: AttentionKernel,
        train: bool,
    ) -> Result<Tensor> {
        let (batch, seq, _) = xs.dims3()?;
        let project = |proj: &Linear, heads: usize, norm: &Option<RmsNorm>| -> Result<Tensor> {
            let out = proj
                .forward_t(xs, train)?
                .reshape((batch, seq, heads, self.head_dim))?;
            match norm {
                Some(norm) => norm.forward(&out),
                None => Ok(out),
            }
        };
        let q = apply_rotary_emb(
            &project(&self.q_proj, self.num_heads, &self.q_norm)?,
            cos,
            sin,
        )?;
        let k = apply_rotary_emb(
            &project(&self.k_proj, self.num_kv_heads, &self.k_norm)?,
            cos,
            sin,
        )?;
        let v = project(&self.v_proj, self.num_kv_heads, &None)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let out = match layout {
            AttentionLayout::Padded(mask) => {
                let heads_first = |t: &Tensor| t.transpose(1, 2);
                attention(
                    &heads_first(&q)?,
                    &heads_first(&k)?,
                    &heads_first(&v)?,
                    Some(mask),
                    scale,
                    kernel,
                )?
                .transpose(1, 2)?
            }
            AttentionLayout::Packed(packed) => {
                one_row(batch, packed.total_tokens(), &q, &k, &v, |q, k, v| {
                    packed.forward(q, k, v, scale, kernel)
                })?
            }
            AttentionLayout::SharedPrefix(shared) => {
                one_row(batch, shared.total_tokens(), &q, &k, &v, |q, k, v| {
                    shared.forward(q, k, v, scale, kernel)
                })?
            }
        };
        self.o_proj.forward_t(
            &out.reshape((batch, seq, self.num_heads * self.head_dim))?,
            train,
        )
    }
}

/// Where each of `linears`' adapters' dropout generators stands.
fn dropout_positions(linears: &[&Linear]) -> Result<Vec<Option<u128>>> {
    linears
        .iter()
        .map(|linear| {
            let position = linear.lora().map(|adapter| adapter.dropout_position());
            position.transpose().map(Option::flatten)
        })
        .collect()
}

/// Moves `linears`' adapters' dropout generators back to `positions`, so that a recomputed pass draws the masks
/// the first pass drew.
fn set_dropout_positions(linears: &[&Linear], positions: &[Option<u128>]) -> Result<()> {
    set_dropout_positions_at_row(linears, positions, 0)
}

/// [`set_dropout_positions`] for a run on the rows from `row` on: each generator where it stands once the rows
/// before `row` have drawn their masks.
fn set_dropout_positions_at_row(
    linears: &[&Linear],
    positions: &[Option<u128>],
    row: usize,
) -> Result<()> {
    for (linear, position) in linears.iter().zip(positions) {
        if let (Some(adapter), Some(position)) = (linear.lora(), position) {
            adapter.set_dropout_position_at_row(*position, row)?;
        }
    }
    Ok(())
}

/// Runs a one-row layout's attention over `(1, total, heads, head_dim)` tensors.
fn one_row(
    batch: usize,
    total: usize,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    attend: impl FnOnce(&Tensor, &Tensor, &Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    if batch != 1 {
        candle_core::bail!(
            "a packed layout takes one row of {total} tokens, got a batch of {batch} rows"
        );
    }
    attend(&q.squeeze(0)?, &k.squeeze(0)?, &v.squeeze(0)?)?.unsqueeze(0)
}

#[derive(Debug)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
    act: Activation,
}

impl Mlp {
    fn new(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let (hidden, inner) = (cfg.hidden_size, cfg.intermediate_size);
        Ok(Self {
            gate_proj: Linear::load(hidden, inner, false, vb.pp("gate_proj"))?,
            up_proj: Linear::load(hidden, inner, false, vb.pp("up_proj"))?,
            down_proj: Linear::load(inner, hidden, false, vb.pp("down_proj"))?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let gate = self.act.forward(&self.gate_proj.forward_t(xs, train)?)?;
        let up = self.up_proj.forward_t(xs, train)?;
        self.down_proj.forward_t(&(gate * up)?, train)
    }
}

#[derive(Debug)]
struct DecoderLayer {
    self_attn: Attention,
    mlp: Mlp,
    input_layernorm: RmsNorm,
    post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    fn new(cfg: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let norm = |name: &str| RmsNorm::new(cfg.hidden_size, cfg.rms_norm_eps, vb.pp(name));
        Ok(Self {
            self_attn: Attention::new(cfg, vb.pp("self_attn"))?,
            mlp: Mlp::new(cfg, vb.pp("mlp"))?,
            input_layernorm: norm("input_layernorm")?,
            post_attention_layernorm: norm("post_attention_layernorm")?,
        })
    }

    fn forward(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        layout: &AttentionLayout,
        kernel: AttentionKernel,
        train: bool,
    ) -> Result<Tensor> {
        let xs = self.attention_block(xs, cos, sin, layout, kernel, train)?;
        self.mlp_block(&xs, train)
    }

    /// The first half of the layer: `xs + attention(norm(xs))`.
    fn attention_block(
        &self,
        xs: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        layout: &AttentionLayout,
        kernel: AttentionKernel,
        train: bool,
    ) -> Result<Tensor> {
        let attn = self.self_attn.forward(
            &self.input_layernorm.forward(xs)?,
            cos,
            sin,
            layout,
            kernel,
            train,
        )?;
        xs + attn
    }

    /// The second half of the layer: `xs + mlp(norm(xs))`.
    fn mlp_block(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let mlp = self
            .mlp
            .forward(&self.post_attention_layernorm.forward(xs)?, train)?;
        xs + mlp
    }

    /// The projections of the attention half, q, k, v, o.
    fn attention_linears(&self) -> [&Linear; 4] {
        let a = &self.self_attn;
        [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj]
    }

    /// The projections of the MLP half, gate, up, down.
    fn mlp_linears(&self) -> [&Linear; 3] {
        let m = &self.mlp;
        [&m.gate_proj, &m.up_proj, &m.down_proj]
    }

    fn linears(&self) -> [&Linear; 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [
            &a.q_proj,
            &a.k_proj,
            &a.v_proj,
            &a.o_proj,
            &m.gate_proj,
            &m.up_proj,
            &m.down_proj,
        ]
    }

    fn linears_mut(&mut self) -> [&mut Linear; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [
            &mut a.q_proj,
            &mut a.k_proj,
            &mut a.v_proj,
            &mut a.o_proj,
            &mut m.gate_proj,
            &mut m.up_proj,
            &mut m.down_proj,
        ]
    }
}

#[derive(Debug)]
pub struct Decoder {
    config: DecoderConfig,
    /// `(vocab, hidden)`.
    embed_tokens: Tensor,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    /// `(vocab, hidden)`; `None` when tied to `embed_tokens`.
    lm_head: Option<Tensor>,
    rotary: RotaryEmbedding,
    mrope: Option<MropeSection>,
    lora: Option<LoraConfig>,
    attention_kernel: AttentionKernel,
    /// Tokens per slice of a recomputed MLP half (see [`Self::forward_embeds_on`]).
    recompute_rows: usize,
}

/// Tokens per slice of a recomputed MLP half by default: a slice's intermediates (about 600 KB a token for a
/// 3B model's MLP with LoRA in bf16) stay near a GB, and matmuls of 2048 rows run at full speed.
pub const RECOMPUTE_ROWS: usize = 2048;

impl Decoder {
    /// Builds the decoder from `vb` at the checkpoint's root. The decoder's weights are read under `model.` or,
    /// for VL checkpoints saved with a nested language model, under `model.language_model.`; the LM head from
    /// `lm_head.weight` unless the embeddings are tied.
    pub fn new(config: &DecoderConfig, vb: VarBuilder) -> Result<Self> {
        let nested = format!("{NESTED_VL_PREFIX}.embed_tokens.weight");
        let text = if vb.contains_tensor(&nested) {
            vb.pp(NESTED_VL_PREFIX)
        } else {
            vb.pp(FLAT_PREFIX)
        };
        let (vocab, hidden) = (config.vocab_size, config.hidden_size);
        let embed_tokens = text.pp("embed_tokens").get((vocab, hidden), "weight")?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| DecoderLayer::new(config, text.pp("layers").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        let norm = RmsNorm::new(hidden, config.rms_norm_eps, text.pp("norm"))?;
        let lm_head = if config.tie_word_embeddings {
            None
        } else {
            Some(vb.pp("lm_head").get((vocab, hidden), "weight")?)
        };
        let mrope = config
            .mrope_section
            .clone()
            .map(|section| MropeSection::new(section, config.head_dim))
            .transpose()?;
        Ok(Self {
            config: config.clone(),
            embed_tokens,
            layers,
            norm,
            lm_head,
            rotary: RotaryEmbedding::new(config.head_dim, config.rope_theta, vb.device())?,
            mrope,
            lora: None,
            attention_kernel: AttentionKernel::default(),
            recompute_rows: RECOMPUTE_ROWS,
        })
    }

    /// Loads a Hugging Face model directory: `config.json` and its safetensors, in `dtype` on `device`.
    pub fn from_model_dir(
        dir: &Path,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<Self, LoadError> {
        let config = DecoderConfig::from_file(&dir.join("config.json"))?;
        let vb = Weights::from_model_dir(dir)?.into_var_builder(dtype, device);
        Self::new(&config, vb).map_err(|source| LoadError::Build {
            dir: dir.to_path_buf(),
            source: Box::new(source),
        })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    pub fn dtype(&self) -> DType {
        self.embed_tokens.dtype()
    }

    /// Which kernel the layers' attention runs on; [`AttentionKernel::Blocked`] unless set.
    pub fn attention_kernel(&self) -> AttentionKernel {
        self.attention_kernel
    }

    pub fn set_attention_kernel(&mut self, kernel: AttentionKernel) {
        self.attention_kernel = kernel;
    }

    /// Tokens per slice of a recomputed MLP half; [`RECOMPUTE_ROWS`] unless set (tests set a few, to cross slice
    /// borders on small inputs).
    pub fn set_recompute_rows(&mut self, rows: usize) {
        self.recompute_rows = rows.max(1);
    }

    pub fn device(&self) -> &Device {
        self.embed_tokens.device()
    }

    /// Token embeddings `(batch, seq, hidden)` for integer ids `(batch, seq)`.
    pub fn embed(&self, input_ids: &Tensor) -> Result<Tensor> {
        let (batch, seq) = input_ids.dims2()?;
        self.embed_tokens
            .index_select(&input_ids.flatten_all()?, 0)?
            .reshape((batch, seq, self.config.hidden_size))
    }

    /// [`Self::forward_embeds`] on the embeddings of `input_ids`.
    pub fn forward(
        &self,
        input_ids: &Tensor,
        position_ids: &Tensor,
        layout: &AttentionLayout,
        train: bool,
    ) -> Result<Tensor> {
        self.forward_embeds(&self.embed(input_ids)?, position_ids, layout, train)
    }

    /// The final-norm hidden states `(batch, seq, hidden)` for input embeddings `(batch, seq, hidden)`.
    ///
    /// `position_ids` are integers of shape `(batch, seq)` (1-D RoPE; rows of a packed batch restart at 0 per
    /// sequence) or `(3, batch, seq)` (M-RoPE, for a configuration with an `mrope_section`). `train` enables LoRA
    /// dropout.
    pub fn forward_embeds(
        &self,
        embeds: &Tensor,
        position_ids: &Tensor,
        layout: &AttentionLayout,
        train: bool,
    ) -> Result<Tensor> {
        self.forward_embeds_on(embeds, position_ids, layout, train, None)
    }

    /// [`Self::forward_embeds`], with each layer two segments of `tape` when one is given (its attention half
    /// and its MLP half, so that the backward pass holds the intermediates of half a layer at a time): the layers'
    /// activations are then recomputed in the tape's backward pass instead of kept (see [`RecomputeTape`]). The
    /// MLP half treats each token on its own and runs on slices of the tokens, so its intermediates, the largest
    /// of a layer's (an MLP several times the width, with adapters), are held for one slice at a time.
    pub fn forward_embeds_on<'a>(
        &'a self,
        embeds: &Tensor,
        position_ids: &Tensor,
        layout: &AttentionLayout,
        train: bool,
        tape: Option<&RecomputeTape<'a>>,
    ) -> Result<Tensor> {
        let (cos, sin) = self.rotary_angles(embeds, position_ids)?;
        let kernel = self.attention_kernel;
        let mut xs = embeds.clone();
        match tape {
            None => {
                for layer in &self.layers {
                    xs = layer.forward(&xs, &cos, &sin, layout, kernel, train)?;
                }
            }
            Some(tape) => {
                let layout = Rc::new(layout.clone());
                for layer in &self.layers {
                    let positions = dropout_positions(&layer.attention_linears())?;
                    let (cos, sin, layout) = (cos.clone(), sin.clone(), Rc::clone(&layout));
                    xs = tape.run(&xs, move |xs| {
                        set_dropout_positions(&layer.attention_linears(), &positions)?;
                        layer.attention_block(xs, &cos, &sin, &layout, kernel, train)
                    })?;
                    let positions = dropout_positions(&layer.mlp_linears())?;
                    xs = tape.run_rows(&xs, self.recompute_rows, move |xs, row| {
                        set_dropout_positions_at_row(&layer.mlp_linears(), &positions, row)?;
                        layer.mlp_block(xs, train)
                    })?;
                }
            }
        }
        self.norm.forward(&xs)
    }

    /// The rotary `cos` and `sin`, `(batch, seq, 1, head_dim / 2)`, of `position_ids` for `embeds`.
    fn rotary_angles(&self, embeds: &Tensor, position_ids: &Tensor) -> Result<(Tensor, Tensor)> {
        let (batch, seq, _) = embeds.dims3()?;
        let dtype = embeds.dtype();
        let (cos, sin) = match (position_ids.dims(), &self.mrope) {
            (&[b, s], _) if (b, s) == (batch, seq) => self.rotary.cos_sin(position_ids, dtype)?,
            (&[3, b, s], Some(section)) if (b, s) == (batch, seq) => {
                self.rotary.mrope_cos_sin(position_ids, section, dtype)?
            }
            _ => {
                return Err(LayerError::PositionShape {
                    what: "decoder",
                    expected: if self.mrope.is_some() {
                        "(batch, seq) or (3, batch, seq) matching the embeddings"
                    } else {
                        "(batch, seq) matching the embeddings"
                    },
                    got: position_ids.shape().clone(),
                }
                .into())
            }
        };
        Ok((cos.unsqueeze(2)?, sin.unsqueeze(2)?))
    }

    /// The LM head `(vocab, hidden)`: its own weight, or the embedding matrix when tied.
    pub fn lm_head(&self) -> &Tensor {
        self.lm_head.as_ref().unwrap_or(&self.embed_tokens)
    }

    /// Full-vocabulary logits `(..., vocab)` for hidden states `(..., hidden)`: for generation.
    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        matmul_transposed(hidden, self.lm_head())
    }

    /// Logits of the given tokens only, `(..., tokens.len())` for hidden states `(..., hidden)`: the rows of the
    /// LM head that scoring needs, without the full-vocabulary matmul. Differentiable in `hidden`.
    pub fn token_logits(&self, hidden: &Tensor, tokens: &[u32]) -> Result<Tensor> {
        let vocab = self.config.vocab_size;
        if let Some(&bad) = tokens.iter().find(|&&t| t as usize >= vocab) {
            candle_core::bail!("token id {bad} is outside the vocabulary of {vocab}");
        }
        let ids = Tensor::new(tokens, self.embed_tokens.device())?;
        matmul_transposed(hidden, &self.lm_head().index_select(&ids, 0)?)
    }

    /// Greedy decoding of up to `max_new_tokens` after `prompt`, stopping after any token in `stop`. Recomputes
    /// the whole sequence per step (there is no KV cache): meant for tests and short answers.
    pub fn greedy_generate(
        &self,
        prompt: &[u32],
        max_new_tokens: usize,
        stop: &[u32],
    ) -> Result<Vec<u32>> {
        if prompt.is_empty() {
            candle_core::bail!("greedy generation needs a non-empty prompt");
        }
        let device = self.device();
        let mut tokens = prompt.to_vec();
        let mut generated = Vec::new();
        while generated.len() < max_new_tokens {
            let len = tokens.len();
            let ids = Tensor::new(tokens.as_slice(), device)?.unsqueeze(0)?;
            let positions = Tensor::arange(0u32, len as u32, device)?.unsqueeze(0)?;
            let layout = AttentionLayout::causal(len, self.dtype(), device)?;
            let hidden = self.forward(&ids, &positions, &layout, false)?;
            let last = hidden.narrow(1, len - 1, 1)?;
            let next = self
                .logits(&last)?
                .flatten_all()?
                .argmax(D::Minus1)?
                .to_scalar::<u32>()?;
            tokens.push(next);
            generated.push(next);
            if stop.contains(&next) {
                break;
            }
        }
        Ok(generated)
    }

    /// Every projection, layer by layer in the order q, k, v, o, gate, up, down.
    pub fn linears(&self) -> Vec<&Linear> {
        self.layers.iter().flat_map(|l| l.linears()).collect()
    }

    pub fn linears_mut(&mut self) -> Vec<&mut Linear> {
        self.layers
            .iter_mut()
            .flat_map(|l| l.linears_mut())
            .collect()
    }

    /// Attaches fresh PEFT-initialised adapters to the projections `config` targets; returns how many.
    pub fn add_lora(&mut self, config: &LoraConfig, seed: u64) -> Result<usize> {
        let attached = lora::attach(&mut self.linears_mut(), config, seed)?;
        self.lora = Some(config.clone());
        Ok(attached)
    }

    /// Loads a PEFT adapter directory; every tensor in it must find its projection. `seed` drives dropout when
    /// training further.
    pub fn load_lora(
        &mut self,
        dir: &Path,
        seed: u64,
    ) -> std::result::Result<&LoraConfig, PeftError> {
        let mut adapter = PeftAdapter::read(dir, self.device())?;
        adapter.apply(&mut self.linears_mut(), seed)?;
        let config = adapter.config().clone();
        adapter.finish()?;
        Ok(self.lora.insert(config))
    }

    /// Saves the attached adapters in PEFT's format; `base_model` goes into `base_model_name_or_path`.
    pub fn save_lora(
        &self,
        dir: &Path,
        base_model: Option<&str>,
    ) -> std::result::Result<(), PeftError> {
        let config = self.lora.as_ref().ok_or_else(|| PeftError::NothingToSave {
            dir: dir.to_path_buf(),
        })?;
        peft::save(dir, config, &self.linears(), base_model)
    }

    /// Makes the attached adapters inference-only, for a model that only scores (see [`lora::LoraAdapter::freeze`]).
    pub fn freeze_lora(&mut self) {
        for linear in self.linears_mut() {
            linear.freeze_lora();
        }
    }

    /// Folds the adapters into the base weights and removes them.
    pub fn merge_lora(&mut self) -> Result<()> {
        lora::merge(&mut self.linears_mut())?;
        self.lora = None;
        Ok(())
    }

    pub fn lora_config(&self) -> Option<&LoraConfig> {
        self.lora.as_ref()
    }

    /// The adapters' variables: exactly what an optimizer should update.
    pub fn lora_vars(&self) -> Vec<Var> {
        lora::trainable_vars(&self.linears())
    }
}

/// Gathers hidden states `(batch, seq, hidden)` at `(row, position)` pairs into `(n, hidden)`, e.g. the last real
/// token of each row for scoring. Differentiable.
pub fn select_positions(hidden: &Tensor, positions: &[(usize, usize)]) -> Result<Tensor> {
    let (batch, seq, width) = hidden.dims3()?;
    let mut flat = Vec::with_capacity(positions.len());
    for &(row, pos) in positions {
        if row >= batch || pos >= seq {
            candle_core::bail!(
                "position ({row}, {pos}) is outside hidden states of shape {:?}",
                hidden.shape()
            );
        }
        flat.push((row * seq + pos) as u32);
    }
    let index = Tensor::new(flat.as_slice(), hidden.device())?;
    hidden
        .reshape((batch * seq, width))?
        .index_select(&index, 0)
}
