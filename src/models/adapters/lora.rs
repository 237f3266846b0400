//! LoRA adapters as PEFT defines them: `y = x W^T + scaling * dropout(x) A^T B^T`, with `A` of shape `(r, in)`
//! and `B` of shape `(out, r)` the only trainable tensors.
//!
//! Fresh adapters are initialised as PEFT does (`A` Kaiming-uniform with `a = sqrt(5)`, i.e. uniform in
//! `[-1/sqrt(in), 1/sqrt(in)]`; `B` zero, so an untrained adapter leaves the model unchanged). Adapter weights of a
//! half-precision model are kept in f32, as PEFT's `autocast_adapter_dtype` does, because bf16 optimizer updates
//! of a small low-rank delta round away; f32 and f64 models keep adapters in their own dtype.
//!
//! Randomness (the initialisation and the training-time dropout masks) comes from ChaCha streams derived from one
//! seed and the adapter's position, so a run is reproducible bit for bit. Dropout masks are drawn on the host for
//! that reason, since candle cannot seed its CPU generator; for long sequences on a GPU this host-side draw is a
//! cost to revisit.

use crate::models::formats::precision::compute_dtype;
use crate::models::layers::linear::{matmul_transposed, Linear};
use candle_core::{DType, Device, Result, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::sync::Mutex;

/// The seven projections of a Llama-family decoder layer, the targets GMR and Qwen3-VL-Reranker adapt.
pub const DECODER_TARGETS: [&str; 7] = [
    "q_proj",
    "k_proj",
    "v_proj",
    "o_proj",
    "gate_proj",
    "up_proj",
    "down_proj",
];

/// The hyper-parameters PEFT's `LoraConfig` stores for a plain LoRA adapter.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraConfig {
    pub r: usize,
    pub alpha: f64,
    /// Dropout on the adapter's input during training, as a probability in `[0, 1)`.
    pub dropout: f64,
    /// Module names (last path component) that get an adapter.
    pub target_modules: Vec<String>,
    /// Scale by `alpha / sqrt(r)` instead of `alpha / r` (rank-stabilised LoRA).
    pub use_rslora: bool,
}

impl Default for LoraConfig {
    /// Rank 16 on all seven projections as in the GMR recipe, alpha 2r, dropout 0.05.
    fn default() -> Self {
        Self {
            r: 16,
            alpha: 32.0,
            dropout: 0.05,
            target_modules: DECODER_TARGETS.iter().map(|s| s.to_string()).collect(),
            use_rslora: false,
        }
    }
}

impl LoraConfig {
    pub fn scaling(&self) -> f64 {
        if self.use_rslora {
            self.alpha / (self.r as f64).sqrt()
        } else {
            self.alpha / self.r as f64
        }
    }

    pub fn targets(&self, module_name: &str) -> bool {
        self.target_modules.iter().any(|t| t == module_name)
    }

    /// Why the configuration is unusable, if it is.
    pub fn problem(&self) -> Option<String> {
        if self.r == 0 {
            return Some("r must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Some(format!("dropout {} is not in [0, 1)", self.dropout));
        }
        if !self.alpha.is_finite() {
            return Some(format!("alpha {} is not finite", self.alpha));
        }
        if self.target_modules.is_empty() {
            return Some("target_modules is empty".into());
        }
        None
    }
}

/// One adapter: the trainable pair `(A, B)` and its scaling.
#[derive(Debug)]
pub struct LoraAdapter {
    a: Var,
    b: Var,
    scaling: f64,
    dropout: Option<Dropout>,
    /// Set by [`Self::freeze`]: the forward pass reads `A` and `B` detached from their variables.
    frozen: bool,
}

impl LoraAdapter {
    /// PEFT's initialisation for a base weight of `base_dtype`, drawn from stream `2 * index` of `seed`; dropout
    /// uses stream `2 * index + 1`.
    pub fn init(
        in_dim: usize,
        out_dim: usize,
        config: &LoraConfig,
        (seed, index): (u64, u64),
        base_dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let mut rng = stream(seed, 2 * index);
        let bound = 1.0 / (in_dim as f64).sqrt();
        let values: Vec<f32> = (0..config.r * in_dim)
            .map(|_| rng.random_range(-bound..bound) as f32)
            .collect();
        let a = Tensor::from_vec(values, (config.r, in_dim), device)?;
        let b = Tensor::zeros((out_dim, config.r), DType::F32, device)?;
        Self::from_weights(a, b, config, (seed, index), base_dtype)
    }

    /// An adapter with given `A` `(r, in)` and `B` `(out, r)`, as trainable variables in the adapter dtype for a
    /// base weight of `base_dtype`.
    pub fn from_weights(
        a: Tensor,
        b: Tensor,
        config: &LoraConfig,
        (seed, index): (u64, u64),
        base_dtype: DType,
    ) -> Result<Self> {
        let (r, _) = a.dims2()?;
        let (_, b_r) = b.dims2()?;
        if r != b_r {
            candle_core::bail!(
                "lora: A has rank {r} but B has rank {b_r} (A {:?}, B {:?})",
                a.shape(),
                b.shape()
            );
        }
        let dropout = (config.dropout > 0.0).then(|| Dropout {
            p: config.dropout,
            rng: Mutex::new(stream(seed, 2 * index + 1)),
        });
        let dtype = compute_dtype(base_dtype);
        Ok(Self {
            a: Var::from_tensor(&a.to_dtype(dtype)?)?,
            b: Var::from_tensor(&b.to_dtype(dtype)?)?,
            scaling: config.scaling(),
            dropout,
            frozen: false,
        })
    }

    /// `scaling * dropout(x) A^T B^T` in `x`'s dtype, computed in the adapter's.
    pub fn forward_t(&self, xs: &Tensor, train: bool) -> Result<Tensor> {
        let dtype = xs.dtype();
        let x = xs.to_dtype(self.a.dtype())?;
        let x = match (&self.dropout, train) {
            (Some(dropout), true) => dropout.apply(&x)?,
            _ => x,
        };
        let weight = |var: &Var| {
            if self.frozen {
                var.as_tensor().detach()
            } else {
                var.as_tensor().clone()
            }
        };
        let low_rank = matmul_transposed(&x, &weight(&self.a))?;
        (matmul_transposed(&low_rank, &weight(&self.b))? * self.scaling)?.to_dtype(dtype)
    }

    /// Makes the adapter inference-only: the forward pass then multiplies by `A` and `B` as plain tensors (the
    /// same storage), so it records no graph and no gradient reaches the variables. An op on a variable keeps its
    /// inputs for a backward pass, and so does every op after it: a scoring pass through a model with trainable
    /// adapters would hold every layer's activations until its scores are dropped (SmolLM2-135M scoring 8
    /// prompts of 128 tokens peaked 3.9 GiB above its 0.5 GiB of weights) instead of one layer's at a time.
    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    /// `scaling * B A`, of the base weight's shape `(out, in)`, in the adapter's dtype.
    pub fn delta_weight(&self) -> Result<Tensor> {
        self.b.as_tensor().matmul(self.a.as_tensor())? * self.scaling
    }

    pub fn a(&self) -> &Var {
        &self.a
    }

    pub fn b(&self) -> &Var {
        &self.b
    }

    pub fn rank(&self) -> usize {
        self.a.dims()[0]
    }

    pub fn in_dim(&self) -> usize {
        self.a.dims()[1]
    }

    pub fn out_dim(&self) -> usize {
        self.b.dims()[0]
    }

    pub fn scaling(&self) -> f64 {
        self.scaling
    }

    /// How far the dropout generator has advanced (`None` without dropout): a training checkpoint stores it so
    /// that a resumed run draws the same masks as an uninterrupted one.
    pub fn dropout_position(&self) -> Result<Option<u128>> {
        self.dropout.as_ref().map(Dropout::position).transpose()
    }

    /// Moves the dropout generator to a position [`Self::dropout_position`] returned; without dropout, nothing.
    pub fn set_dropout_position(&self, position: u128) -> Result<()> {
        match &self.dropout {
            Some(dropout) => dropout.set_position(position),
            None => Ok(()),
        }
    }

    /// Moves the dropout generator to where it stands once the masks of the first `rows` rows of an input have
    /// been drawn from `start` (a position [`Self::dropout_position`] returned), so that a layer run on slices of
    /// an input's rows draws each slice the mask a whole-input run gives those rows.
    pub fn set_dropout_position_at_row(&self, start: u128, rows: usize) -> Result<()> {
        let drawn = (rows * self.in_dim()) as u128;
        self.set_dropout_position(start + drawn * Dropout::WORDS_PER_DRAW)
    }
}

/// Inverted dropout (`x * mask / (1 - p)`) with a private generator.
#[derive(Debug)]
struct Dropout {
    p: f64,
    rng: Mutex<ChaCha8Rng>,
}

impl Dropout {
    /// The generator's 32-bit words one element's draw takes: an `f64` is made from one `u64`, two words.
    const WORDS_PER_DRAW: u128 = 2;

    fn generator(&self) -> Result<std::sync::MutexGuard<'_, ChaCha8Rng>> {
        self.rng
            .lock()
            .map_err(|_| candle_core::Error::Msg("lora dropout generator poisoned".into()))
    }

    fn position(&self) -> Result<u128> {
        Ok(self.generator()?.get_word_pos())
    }

    fn set_position(&self, position: u128) -> Result<()> {
        self.generator()?.set_word_pos(position);
        Ok(())
    }

    fn apply(&self, xs: &Tensor) -> Result<Tensor> {
        let keep = (1.0 / (1.0 - self.p)) as f32;
        let mask: Vec<f32> = {
            let mut rng = self.generator()?;
            (0..xs.elem_count())
                .map(|_| {
                    if rng.random::<f64>() < self.p {
                        0.0
                    } else {
                        keep
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(mask, xs.shape(), xs.device())?.to_dtype(xs.dtype())?;
        xs * mask
    }
}

fn stream(seed: u64, index: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(index);
    rng
}

/// Attaches a fresh adapter to every linear `config` targets (replacing any adapter it had), numbering them in
/// the given order for the random streams. Returns how many were attached.
pub fn attach(linears: &mut [&mut Linear], config: &LoraConfig, seed: u64) -> Result<usize> {
    if let Some(problem) = config.problem() {
        candle_core::bail!("lora: {problem}");
    }
    let mut attached = 0;
    for (index, linear) in linears.iter_mut().enumerate() {
        if config.targets(linear.module_name()) {
            let weight = linear.weight();
            let adapter = LoraAdapter::init(
                linear.in_dim(),
                linear.out_dim(),
                config,
                (seed, index as u64),
                weight.dtype(),
                &weight.device().clone(),
            )?;
            linear.set_lora(Some(adapter))?;
            attached += 1;
        }
    }
    Ok(attached)
}

/// The adapters' `A` and `B` variables, in the linears' order: exactly what an optimizer should update.
pub fn trainable_vars(linears: &[&Linear]) -> Vec<Var> {
    linears
        .iter()
        .filter_map(|linear| linear.lora())
        .flat_map(|adapter| [adapter.a().clone(), adapter.b().clone()])
        .collect()
}

/// Folds every adapter into its base weight.
pub fn merge(linears: &mut [&mut Linear]) -> Result<()> {
    linears
        .iter_mut()
        .try_for_each(|linear| linear.merge_lora())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An adapter with dropout on, run on a 5-row input whole and in slices of 2 rows with the generator moved to
    /// each slice's first row: the same output, and the generator ends where the whole run leaves it.
    #[test]
    fn slices_of_rows_draw_the_dropout_masks_of_a_whole_input() {
        let device = Device::Cpu;
        let config = LoraConfig {
            dropout: 0.5,
            ..LoraConfig::default()
        };
        let adapter = LoraAdapter::init(6, 3, &config, (3, 1), DType::F32, &device).unwrap();
        let b = Tensor::ones((3, config.r), DType::F32, &device).unwrap();
        let adapter = LoraAdapter::from_weights(
            adapter.a().as_tensor().clone(),
            b,
            &config,
            (3, 1),
            DType::F32,
        )
        .unwrap();
        let xs = Tensor::arange(1f32, 31.0, &device)
            .unwrap()
            .reshape((1, 5, 6))
            .unwrap();
        let start = adapter.dropout_position().unwrap().unwrap();
        let whole = adapter.forward_t(&xs, true).unwrap();
        let end = adapter.dropout_position().unwrap();
        let mut parts = Vec::new();
        for first in [4, 0, 2] {
            adapter.set_dropout_position_at_row(start, first).unwrap();
            let slice = xs.narrow(1, first, 2.min(5 - first)).unwrap();
            parts.push((first, adapter.forward_t(&slice, true).unwrap()));
        }
        assert_eq!(adapter.dropout_position().unwrap(), Some(start + 4 * 6 * 2));
        parts.sort_by_key(|(first, _)| *first);
        let sliced =
            Tensor::cat(&parts.into_iter().map(|(_, t)| t).collect::<Vec<_>>(), 1).unwrap();
        let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(flat(&whole), flat(&sliced));
        assert_ne!(
            flat(&whole),
            flat(&adapter.forward_t(&xs, false).unwrap()),
            "dropout is on"
        );
        adapter.set_dropout_position_at_row(start, 5).unwrap();
        assert_eq!(adapter.dropout_position().unwrap(), end);
    }
}
