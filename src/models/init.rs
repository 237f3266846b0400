//! Seeded random initialisation for models built through a [`VarBuilder`].
//!
//! candle's `VarMap` draws initial values from the thread's unseeded RNG, so two runs of the same training job
//! would start from different weights. [`seeded_var_builder`] fills the same `VarMap` (trainable `Var`s, saved
//! with `VarMap::save` under the names the model asked for) but draws each variable from a ChaCha stream keyed by
//! the seed and the variable's name: the values depend on neither thread nor creation order.

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use candle_nn::init::{Init, NormalOrUniform};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

/// A builder that creates every variable it is asked for in `varmap`, initialised from `seed`, and returns the
/// existing one when asked again.
pub fn seeded_var_builder(
    varmap: &VarMap,
    seed: u64,
    dtype: DType,
    device: &Device,
) -> VarBuilder<'static> {
    let backend = SeededVarMap {
        varmap: varmap.clone(),
        seed,
    };
    VarBuilder::from_backend(Box::new(backend), dtype, device.clone())
}

struct SeededVarMap {
    varmap: VarMap,
    seed: u64,
}

impl SeededVarMap {
    fn rng(&self, name: &str) -> ChaCha8Rng {
        let mut hasher = Sha256::new();
        hasher.update(self.seed.to_le_bytes());
        hasher.update(name.as_bytes());
        ChaCha8Rng::from_seed(hasher.finalize().into())
    }
}

impl SimpleBackend for SeededVarMap {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        init: Init,
        dtype: DType,
        device: &Device,
    ) -> Result<Tensor> {
        let mut vars = self
            .varmap
            .data()
            .lock()
            .map_err(|_| candle_core::Error::Msg("the VarMap's lock is poisoned".into()))?;
        if let Some(var) = vars.get(name) {
            if var.shape() != &shape {
                candle_core::bail!(
                    "variable {name} exists with shape {:?}, requested {shape:?}",
                    var.shape()
                )
            }
            return Ok(var.as_tensor().clone());
        }
        let values = sample(init, &shape, &mut self.rng(name));
        let tensor = Tensor::from_vec(values, shape, device)?.to_dtype(dtype)?;
        let var = Var::from_tensor(&tensor)?;
        vars.insert(name.to_string(), var.clone());
        Ok(var.as_tensor().clone())
    }

    fn get_unchecked(&self, name: &str, _dtype: DType, _device: &Device) -> Result<Tensor> {
        candle_core::bail!("variable {name}: a seeded VarMap needs the shape to create it")
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.varmap
            .data()
            .lock()
            .map(|vars| vars.contains_key(name))
            .unwrap_or(false)
    }
}

/// Draws `shape.elem_count()` values as `init` prescribes, with candle's meaning of each `Init` (Kaiming's fan
/// and gain included).
fn sample(init: Init, shape: &Shape, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let n = shape.elem_count();
    match init {
        Init::Const(value) => vec![value as f32; n],
        Init::Uniform { lo, up } => uniform(n, lo, up, rng),
        Init::Randn { mean, stdev } => normal(n, mean, stdev, rng),
        Init::Kaiming {
            dist,
            fan,
            non_linearity,
        } => {
            let std = non_linearity.gain() / (fan.for_shape(shape) as f64).sqrt();
            match dist {
                NormalOrUniform::Uniform => {
                    let bound = 3f64.sqrt() * std;
                    uniform(n, -bound, bound, rng)
                }
                NormalOrUniform::Normal => normal(n, 0., std, rng),
            }
        }
    }
}

fn uniform(n: usize, lo: f64, up: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    (0..n)
        .map(|_| (lo + (up - lo) * rng.random::<f64>()) as f32)
        .collect()
}

/// Box-Muller: each pair of uniforms gives two independent standard normals.
fn normal(n: usize, mean: f64, stdev: f64, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(n + 1);
    while out.len() < n {
        // 1 - u lies in (0, 1], so the logarithm is finite.
        let radius = (-2. * (1. - rng.random::<f64>()).ln()).sqrt();
        let angle = std::f64::consts::TAU * rng.random::<f64>();
        out.push((mean + stdev * radius * angle.cos()) as f32);
        out.push((mean + stdev * radius * angle.sin()) as f32);
    }
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draw(seed: u64, name: &str, init: Init) -> Vec<f32> {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, seed, DType::F32, &Device::Cpu);
        vb.get_with_hints((64, 32), name, init)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    }

    #[test]
    fn values_depend_on_seed_and_name_only() {
        let init = candle_nn::init::DEFAULT_KAIMING_UNIFORM;
        assert_eq!(draw(7, "a.weight", init), draw(7, "a.weight", init));
        assert_ne!(draw(7, "a.weight", init), draw(8, "a.weight", init));
        assert_ne!(draw(7, "a.weight", init), draw(7, "b.weight", init));
    }

    #[test]
    fn distributions_have_the_requested_moments() {
        let moments = |v: &[f32]| {
            let n = v.len() as f64;
            let mean = v.iter().map(|x| f64::from(*x)).sum::<f64>() / n;
            let var = v
                .iter()
                .map(|x| (f64::from(*x) - mean).powi(2))
                .sum::<f64>()
                / n;
            (mean, var.sqrt())
        };
        let (mean, std) = moments(&draw(
            1,
            "w",
            Init::Randn {
                mean: 2.,
                stdev: 0.5,
            },
        ));
        assert!(
            (mean - 2.).abs() < 0.05 && (std - 0.5).abs() < 0.05,
            "{mean} {std}"
        );
        // Kaiming uniform with ReLU gain over fan-in 32: bound sqrt(3) * sqrt(2) / sqrt(32).
        let bound = (3f64).sqrt() * 2f64.sqrt() / 32f64.sqrt();
        let kaiming = draw(1, "w", candle_nn::init::DEFAULT_KAIMING_UNIFORM);
        assert!(kaiming.iter().all(|x| f64::from(x.abs()) <= bound));
        let (_, std) = moments(&kaiming);
        assert!((std - bound / 3f64.sqrt()).abs() < 0.02, "{std}");
        assert!(draw(1, "w", Init::Const(0.25)).iter().all(|x| *x == 0.25));
    }

    #[test]
    fn a_variable_is_created_once_and_lands_in_the_varmap() {
        let varmap = VarMap::new();
        let vb = seeded_var_builder(&varmap, 3, DType::F32, &Device::Cpu);
        assert!(!vb.contains_tensor("x"));
        let first = vb.get_with_hints(4, "x", Init::Const(1.)).unwrap();
        let again = vb.get_with_hints(4, "x", Init::Const(5.)).unwrap();
        assert_eq!(
            first.to_vec1::<f32>().unwrap(),
            again.to_vec1::<f32>().unwrap()
        );
        assert!(vb.contains_tensor("x"));
        assert_eq!(varmap.all_vars().len(), 1);
        assert!(vb.get_with_hints(5, "x", Init::Const(1.)).is_err());
    }
}
