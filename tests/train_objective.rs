//! The training objectives against hand-derived closed forms.
//!
//! With `d = z_y - z_n`, `sigma` the logistic function, `q = softmax(z_y / T)` over a group, G groups, column 0
//! the positive and the loss summed over a group's documents and averaged over groups:
//!
//! - SFT, `L = (1/G) sum_g [softplus(-d_g0) + sum_i softplus(d_gi)]`:
//!   `dL/dz_y[g,0] = -sigma(-d_g0) / G`, `dL/dz_y[g,i] = sigma(d_gi) / G`, and `dL/dz_n = -dL/dz_y`.
//! - CL, `L = (1/G) sum_g [logsumexp(z_y[g] / T) - z_y[g,0] / T]`:
//!   `dL/dz_y[g,j] = (q_gj - [j = 0]) / (T G)`, `dL/dz_n = 0`.
//! - Unified, `L = (1/G) sum_g [-W+_g f(g,0) + sum_i W-_gi f(g,i)]` with constant weights:
//!   direction SFT (`f = d`): `dL/dz_y[g,0] = -W+_g / G`, `dL/dz_y[g,i] = W-_gi / G`, `dL/dz_n = -dL/dz_y`;
//!   direction CL (`f = z_y / T`): `dL/dz_y[g,0] = -W+_g / (T G)`, `dL/dz_y[g,i] = W-_gi / (T G)`, `dL/dz_n = 0`;
//!   weights SFT: `W+ = sigma(-d_0)`, `W-_i = sigma(d_i)`; CL: `W+ = sum_i q_i`, `W-_i = q_i`; const: 1; a tau-mask
//!   zeroes `W+` when `p_0 > 1 - tau` and `W-_i` when `p_i < tau`, `p` being `sigma(d)` (SFT, const) or `q` (CL).
//!
//! Then: the unified view reproduces SFT's and CL's gradients, on logits and through a tiny LoRA decoder; the
//! tau-mask zeroes exactly the learned examples of crafted groups; bad input gives errors that say what is wrong.

#[path = "common/reference.rs"]
mod reference;

use candle_core::{DType, Device, Tensor, Var};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use umrank::models::decoder::AttentionLayout;
use umrank::train::objective::{
    group_loss, DirectionSource, LossReport, Objective, ObjectiveConfig, WeightSource,
};
use umrank::train::TrainError;

/// Logits of `groups` groups of `columns` documents, row-major.
#[derive(Debug, Clone)]
struct Logits {
    groups: usize,
    columns: usize,
    yes: Vec<f64>,
    no: Vec<f64>,
}

impl Logits {
    fn random(groups: usize, columns: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut draw = |n| (0..n).map(|_| rng.random_range(-4.0..4.0)).collect();
        Self {
            groups,
            columns,
            yes: draw(groups * columns),
            no: draw(groups * columns),
        }
    }

    fn from_rows(yes: &[&[f64]], no: &[&[f64]]) -> Self {
        Self {
            groups: yes.len(),
            columns: yes[0].len(),
            yes: yes.concat(),
            no: no.concat(),
        }
    }

    fn row(values: &[f64], g: usize, columns: usize) -> &[f64] {
        &values[g * columns..(g + 1) * columns]
    }

    fn margins(&self, g: usize) -> Vec<f64> {
        let (y, n) = (
            Self::row(&self.yes, g, self.columns),
            Self::row(&self.no, g, self.columns),
        );
        y.iter().zip(n).map(|(y, n)| y - n).collect()
    }

    fn softmax(&self, g: usize, temperature: f64) -> Vec<f64> {
        let exp: Vec<f64> = Self::row(&self.yes, g, self.columns)
            .iter()
            .map(|y| (y / temperature).exp())
            .collect();
        let total: f64 = exp.iter().sum();
        exp.iter().map(|e| e / total).collect()
    }
}

fn sigma(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// The closed-form gradients `(dL/dz_y, dL/dz_n)` and loss value of `cfg` on `logits`, from the formulas at the
/// top of this file.
fn closed_form(cfg: &ObjectiveConfig, logits: &Logits) -> (Vec<f64>, Vec<f64>, f64) {
    let (groups, t) = (logits.groups as f64, cfg.temperature);
    let mut grad_yes = Vec::new();
    let mut grad_no = Vec::new();
    let mut loss = 0.0;
    for g in 0..logits.groups {
        let d = logits.margins(g);
        let q = logits.softmax(g, t);
        let y = Logits::row(&logits.yes, g, logits.columns);
        match cfg.objective {
            Objective::Sft => {
                for (j, &dj) in d.iter().enumerate() {
                    let gy = if j == 0 { -sigma(-dj) } else { sigma(dj) } / groups;
                    grad_yes.push(gy);
                    grad_no.push(-gy);
                    loss += if j == 0 {
                        -sigma(dj).ln()
                    } else {
                        -sigma(-dj).ln()
                    } / groups;
                }
            }
            Objective::Cl => {
                for (j, &qj) in q.iter().enumerate() {
                    grad_yes.push((qj - if j == 0 { 1.0 } else { 0.0 }) / (t * groups));
                    grad_no.push(0.0);
                }
                loss -= q[0].ln() / groups;
            }
            Objective::Unified {
                weight,
                direction,
                tau,
            } => {
                let (w, _) = weights(&d, &q, weight, tau);
                for j in 0..logits.columns {
                    let sign = if j == 0 { -1.0 } else { 1.0 };
                    let (gy, gn, f) = match direction {
                        DirectionSource::Sft => (sign * w[j], -sign * w[j], d[j]),
                        DirectionSource::Cl => (sign * w[j] / t, 0.0, y[j] / t),
                    };
                    grad_yes.push(gy / groups);
                    grad_no.push(gn / groups);
                    loss += sign * w[j] * f / groups;
                }
            }
        }
    }
    (grad_yes, grad_no, loss)
}

/// The unified weights of one group after the tau-mask, and which columns the mask zeroed.
fn weights(d: &[f64], q: &[f64], source: WeightSource, tau: Option<f64>) -> (Vec<f64>, Vec<bool>) {
    let n = d.len();
    let (mut w, p): (Vec<f64>, Vec<f64>) = match source {
        WeightSource::Sft => (
            (0..n)
                .map(|j| if j == 0 { sigma(-d[0]) } else { sigma(d[j]) })
                .collect(),
            d.iter().map(|&x| sigma(x)).collect(),
        ),
        WeightSource::Cl => (
            (0..n)
                .map(|j| if j == 0 { 1.0 - q[0] } else { q[j] })
                .collect(),
            q.to_vec(),
        ),
        WeightSource::Const => (vec![1.0; n], d.iter().map(|&x| sigma(x)).collect()),
    };
    let masked: Vec<bool> = (0..n)
        .map(|j| match tau {
            Some(tau) if j == 0 => p[0] > 1.0 - tau,
            Some(tau) => p[j] < tau,
            None => false,
        })
        .collect();
    for (wj, &m) in w.iter_mut().zip(&masked) {
        if m {
            *wj = 0.0;
        }
    }
    (w, masked)
}

/// The library's loss report and the gradients of its loss w.r.t. `(z_yes, z_no)`, for logits in `dtype`.
fn library(
    cfg: &ObjectiveConfig,
    logits: &Logits,
    dtype: DType,
) -> (LossReport, Vec<f64>, Vec<f64>) {
    let var = |values: &[f64]| {
        let t = Tensor::from_vec(
            values.to_vec(),
            (logits.groups, logits.columns),
            &Device::Cpu,
        )
        .unwrap()
        .to_dtype(dtype)
        .unwrap();
        Var::from_tensor(&t).unwrap()
    };
    let (yes, no) = (var(&logits.yes), var(&logits.no));
    let report = group_loss(cfg, yes.as_tensor(), no.as_tensor()).unwrap();
    let grads = report.loss.backward().unwrap();
    let grad = |v: &Var| match grads.get(v.as_tensor()) {
        Some(g) => reference::to_f64(g),
        None => vec![0.0; logits.groups * logits.columns],
    };
    let (gy, gn) = (grad(&yes), grad(&no));
    (report, gy, gn)
}

fn max_abs_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0.0, |m, (x, y)| m.max((x - y).abs()))
}

fn unified(
    weight: WeightSource,
    direction: DirectionSource,
    tau: Option<f64>,
    t: f64,
) -> ObjectiveConfig {
    ObjectiveConfig {
        objective: Objective::Unified {
            weight,
            direction,
            tau,
        },
        temperature: t,
    }
}

fn every_objective(temperature: f64) -> Vec<ObjectiveConfig> {
    let mut all = vec![
        ObjectiveConfig {
            objective: Objective::Sft,
            temperature,
        },
        ObjectiveConfig {
            objective: Objective::Cl,
            temperature,
        },
    ];
    for weight in [WeightSource::Sft, WeightSource::Cl, WeightSource::Const] {
        for direction in [DirectionSource::Sft, DirectionSource::Cl] {
            for tau in [None, Some(0.2)] {
                all.push(unified(weight, direction, tau, temperature));
            }
        }
    }
    all
}

#[test]
fn gradients_and_values_equal_the_closed_forms() {
    for (seed, temperature) in [(1, 1.0), (2, 0.7), (3, 2.5)] {
        let logits = Logits::random(3, 5, seed);
        for cfg in every_objective(temperature) {
            let (report, gy, gn) = library(&cfg, &logits, DType::F64);
            let (want_y, want_n, want_loss) = closed_form(&cfg, &logits);
            let err = max_abs_diff(&gy, &want_y).max(max_abs_diff(&gn, &want_n));
            assert!(
                err < 1e-12,
                "{} T={temperature}: gradient error {err:e}",
                cfg.objective
            );
            let loss = report.loss.to_scalar::<f64>().unwrap();
            assert!(
                (loss - want_loss).abs() < 1e-12,
                "{}: loss {loss} vs {want_loss}",
                cfg.objective
            );
            assert!(
                gy.iter().any(|g| g.abs() > 1e-3),
                "{}: no gradient",
                cfg.objective
            );

            let sft = closed_form(&every_objective(temperature)[0], &logits).2;
            let cl = closed_form(&every_objective(temperature)[1], &logits).2;
            assert!((report.sft - sft).abs() < 1e-12 && (report.cl - cl).abs() < 1e-12);
        }
    }
}

#[test]
fn f32_and_bf16_logits_train_in_f32() {
    let logits = Logits::random(2, 4, 7);
    for cfg in every_objective(0.8) {
        let (want_y, want_n, _) = closed_form(&cfg, &logits);
        let (report, gy, gn) = library(&cfg, &logits, DType::F32);
        assert_eq!(report.loss.dtype(), DType::F32);
        let err = max_abs_diff(&gy, &want_y).max(max_abs_diff(&gn, &want_n));
        assert!(err < 1e-6, "{} f32: gradient error {err:e}", cfg.objective);

        // bf16 logits: the gradients are those of the bf16-rounded logits, computed in f32.
        let rounded = |v: &[f64]| {
            reference::to_f64(
                &Tensor::new(v, &Device::Cpu)
                    .unwrap()
                    .to_dtype(DType::BF16)
                    .unwrap(),
            )
        };
        let as_bf16 = Logits {
            yes: rounded(&logits.yes),
            no: rounded(&logits.no),
            ..logits.clone()
        };
        let (want_y, want_n, _) = closed_form(&cfg, &as_bf16);
        let (report, gy, gn) = library(&cfg, &logits, DType::BF16);
        assert_eq!(report.loss.dtype(), DType::F32);
        // The gradients come back in bf16: compare at its precision.
        let scale = want_y
            .iter()
            .chain(&want_n)
            .fold(0.0f64, |m, g| m.max(g.abs()));
        let err = max_abs_diff(&gy, &want_y).max(max_abs_diff(&gn, &want_n));
        assert!(
            err <= scale / 128.0,
            "{} bf16: gradient error {err:e}",
            cfg.objective
        );
    }
}

#[test]
fn unified_reproduces_sft_and_cl_gradients_on_logits() {
    let logits = Logits::random(4, 6, 11);
    let temperature = 0.5;
    let pairs = [
        (
            Objective::Sft,
            unified(WeightSource::Sft, DirectionSource::Sft, None, temperature),
        ),
        (
            Objective::Cl,
            unified(WeightSource::Cl, DirectionSource::Cl, None, temperature),
        ),
    ];
    for (plain, unified) in pairs {
        let plain = ObjectiveConfig {
            objective: plain,
            temperature,
        };
        for dtype in [DType::F64, DType::F32] {
            let (a, ay, an) = library(&plain, &logits, dtype);
            let (b, by, bn) = library(&unified, &logits, dtype);
            let err = max_abs_diff(&ay, &by).max(max_abs_diff(&an, &bn));
            assert!(err < 1e-7, "{plain:?} vs unified {dtype:?}: {err:e}");
            // The reports agree too: same true losses, same weights.
            assert_eq!((a.sft, a.cl), (b.sft, b.cl));
            assert_eq!((a.w_pos_mean, a.w_neg_mean), (b.w_pos_mean, b.w_neg_mean));
        }
    }
}

/// A tiny Qwen2 decoder with a PEFT adapter (non-zero A and B, so every LoRA variable has a gradient) scores
/// groups of token sequences; returns the LoRA variables' gradients of the objective.
fn lora_gradients(
    decoder: &umrank::models::decoder::Decoder,
    cfg: &ObjectiveConfig,
) -> Vec<Vec<f64>> {
    let (groups, columns, seq) = (2, 4, 7);
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let ids: Vec<u32> = (0..groups * columns * seq)
        .map(|_| rng.random_range(0..256))
        .collect();
    let device = Device::Cpu;
    let rows = groups * columns;
    let input_ids = Tensor::from_vec(ids, (rows, seq), &device).unwrap();
    let positions = Tensor::arange(0u32, seq as u32, &device)
        .unwrap()
        .unsqueeze(0)
        .unwrap()
        .repeat((rows, 1))
        .unwrap();
    let layout = AttentionLayout::causal(seq, DType::F32, &device).unwrap();
    let hidden = decoder
        .forward(&input_ids, &positions, &layout, false)
        .unwrap();
    let last = hidden.narrow(1, seq - 1, 1).unwrap().squeeze(1).unwrap();
    let (yes_id, no_id) = (9, 17);
    let logits = decoder.token_logits(&last, &[yes_id, no_id]).unwrap();
    let column = |c| {
        logits
            .narrow(1, c, 1)
            .unwrap()
            .reshape((groups, columns))
            .unwrap()
    };
    let report = group_loss(cfg, &column(0), &column(1)).unwrap();
    let grads = report.loss.backward().unwrap();
    decoder
        .lora_vars()
        .iter()
        .map(|var| {
            reference::to_f64(
                grads
                    .get(var.as_tensor())
                    .expect("every LoRA var has a gradient"),
            )
        })
        .collect()
}

#[test]
fn unified_reproduces_sft_and_cl_gradients_through_a_lora_decoder() {
    let mut decoder = reference::load("qwen2");
    decoder
        .load_lora(&reference::fixture("qwen2_lora"), 0)
        .unwrap();
    assert_eq!(decoder.lora_vars().len(), 12);
    let temperature = 0.6;
    let cases = [
        (
            Objective::Sft,
            unified(WeightSource::Sft, DirectionSource::Sft, None, temperature),
        ),
        (
            Objective::Cl,
            unified(WeightSource::Cl, DirectionSource::Cl, None, temperature),
        ),
    ];
    for (plain, unified) in cases {
        let plain = ObjectiveConfig {
            objective: plain,
            temperature,
        };
        let want = lora_gradients(&decoder, &plain);
        let got = lora_gradients(&decoder, &unified);
        for (i, (w, g)) in want.iter().zip(&got).enumerate() {
            let scale = w.iter().fold(0.0f64, |m, x| m.max(x.abs()));
            assert!(
                scale > 0.0,
                "{}: LoRA var {i} has a zero gradient",
                plain.objective
            );
            let err = reference::rel_error(g, w);
            assert!(
                err < 1e-5,
                "{} LoRA var {i}: rel error {err:e}",
                plain.objective
            );
        }
    }
    // A different objective moves the adapters differently: the comparison can fail.
    let sft = lora_gradients(
        &decoder,
        &ObjectiveConfig {
            objective: Objective::Sft,
            temperature,
        },
    );
    let constant = lora_gradients(
        &decoder,
        &unified(WeightSource::Const, DirectionSource::Sft, None, temperature),
    );
    assert!(reference::rel_error(&constant[0], &sft[0]) > 1e-2);
}

/// Which entries of a `[groups, columns]` gradient are exactly zero.
fn zero_entries(grad: &[f64]) -> Vec<bool> {
    grad.iter().map(|g| *g == 0.0).collect()
}

#[test]
fn tau_mask_zeroes_exactly_the_learned_examples() {
    let tau = 0.1;
    // sigma(d) by column: group 0 [0.9933, 0.0067, 0.5, 0.9526]: the positive is learned (> 0.9), negative 1 is
    // learned (< 0.1); group 1 [0.7311, 0.2689, 0.0474, 0.9241]: only negative 2 is learned.
    let sft_logits = Logits::from_rows(
        &[&[3.0, -2.0, 0.5, 1.0], &[0.0, -1.5, -2.0, 1.5]],
        &[&[-2.0, 3.0, 0.5, -2.0], &[-1.0, -0.5, 1.0, -1.0]],
    );
    let sft_masked = vec![true, true, false, false, false, false, true, false];
    for (weight, direction) in [
        (WeightSource::Sft, DirectionSource::Sft),
        (WeightSource::Sft, DirectionSource::Cl),
        (WeightSource::Const, DirectionSource::Sft),
    ] {
        let cfg = unified(weight, direction, Some(tau), 1.0);
        let (report, gy, _) = library(&cfg, &sft_logits, DType::F64);
        assert_eq!(report.masked, 3, "{}", cfg.objective);
        assert_eq!(zero_entries(&gy), sft_masked, "{}", cfg.objective);
        // Without the mask nothing is zero.
        let (report, gy, _) = library(
            &unified(weight, direction, None, 1.0),
            &sft_logits,
            DType::F64,
        );
        assert_eq!(report.masked, 0);
        assert!(zero_entries(&gy).iter().all(|z| !z));
    }
    // Constant weights: the unmasked ones are exactly 1, so the means count the surviving examples.
    let (report, _, _) = library(
        &unified(WeightSource::Const, DirectionSource::Sft, Some(tau), 1.0),
        &sft_logits,
        DType::F64,
    );
    assert_eq!((report.w_pos_mean, report.w_neg_mean), (0.5, 4.0 / 6.0));

    // CL weights use the in-group softmax q of z_y: group 0 q = [0.558, 0.338, 0.028, 0.076]: negatives 2 and 3
    // are learned; group 1 q = [0.953, 0.016, 0.016, 0.016] (positive > 0.9): all four are learned.
    let cl_logits = Logits::from_rows(
        &[&[2.0, 1.5, -1.0, 0.0], &[5.0, 0.9, 0.9, 0.9]],
        &[&[0.0; 4], &[0.0; 4]],
    );
    let cfg = unified(WeightSource::Cl, DirectionSource::Cl, Some(tau), 1.0);
    let (report, gy, _) = library(&cfg, &cl_logits, DType::F64);
    assert_eq!(report.masked, 6);
    assert_eq!(
        zero_entries(&gy),
        vec![false, false, true, true, true, true, true, true]
    );
    // The same logits under SFT weights (p_yes = sigma(z_y) = [0.88, 0.82, 0.27, 0.5], [0.993, 0.71, 0.71, 0.71]):
    // only group 1's positive is learned, so the CL mask is not the SFT mask.
    let (report, _, _) = library(
        &unified(WeightSource::Sft, DirectionSource::Cl, Some(tau), 1.0),
        &cl_logits,
        DType::F64,
    );
    assert_eq!(report.masked, 1);
}

#[test]
fn reported_weights_follow_the_objective() {
    let logits = Logits::random(3, 5, 21);
    let temperature = 1.3;
    for (objective, source) in [
        (Objective::Sft, WeightSource::Sft),
        (Objective::Cl, WeightSource::Cl),
    ] {
        let cfg = ObjectiveConfig {
            objective,
            temperature,
        };
        let (report, _, _) = library(&cfg, &logits, DType::F64);
        let (mut pos, mut neg) = (0.0, 0.0);
        for g in 0..logits.groups {
            let (w, _) = weights(
                &logits.margins(g),
                &logits.softmax(g, temperature),
                source,
                None,
            );
            pos += w[0] / 3.0;
            neg += w[1..].iter().sum::<f64>() / 12.0;
        }
        assert!((report.w_pos_mean - pos).abs() < 1e-12 && (report.w_neg_mean - neg).abs() < 1e-12);
        assert_eq!(report.masked, 0);
    }
}

#[test]
fn bad_logits_and_configs_are_errors() {
    let cfg = ObjectiveConfig::default();
    let t =
        |rows: usize, cols: usize| Tensor::zeros((rows, cols), DType::F32, &Device::Cpu).unwrap();
    for (yes, no) in [(t(2, 3), t(2, 4)), (t(2, 1), t(2, 1)), (t(0, 3), t(0, 3))] {
        let err = group_loss(&cfg, &yes, &no).unwrap_err();
        assert!(matches!(err, TrainError::LogitShape { .. }), "{err}");
    }
    let err = group_loss(&cfg, &t(2, 3), &t(2, 3).to_dtype(DType::BF16).unwrap()).unwrap_err();
    assert!(matches!(err, TrainError::LogitShape { .. }), "{err}");
    let vector = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
    assert!(matches!(
        group_loss(&cfg, &vector, &vector),
        Err(TrainError::LogitShape { .. })
    ));

    let mut values = vec![0.0f32; 6];
    values[4] = f32::NAN;
    let with_nan = Tensor::from_vec(values, (2, 3), &Device::Cpu).unwrap();
    let err = group_loss(&cfg, &t(2, 3), &with_nan).unwrap_err();
    assert!(
        matches!(
            err,
            TrainError::NonFiniteLogit {
                which: "no",
                group: 1,
                column: 1,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("group 1, column 1"), "{err}");

    for temperature in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        let cfg = ObjectiveConfig {
            objective: Objective::Cl,
            temperature,
        };
        let err = group_loss(&cfg, &t(1, 2), &t(1, 2)).unwrap_err();
        assert!(err.to_string().contains("temperature"), "{err}");
    }
    for tau in [-0.1, 1.0, f64::NAN] {
        let cfg = unified(WeightSource::Const, DirectionSource::Sft, Some(tau), 1.0);
        let err = group_loss(&cfg, &t(1, 2), &t(1, 2)).unwrap_err();
        assert!(err.to_string().contains("tau"), "{err}");
    }
}

#[test]
fn configs_read_from_toml_and_json() {
    let parse = |text: &str| toml::from_str::<ObjectiveConfig>(text).unwrap();
    assert_eq!(parse("objective = \"sft\""), ObjectiveConfig::default());
    assert_eq!(
        parse("objective = \"cl\"\ntemperature = 0.05"),
        ObjectiveConfig {
            objective: Objective::Cl,
            temperature: 0.05
        }
    );
    let cfg = parse("objective = \"unified\"\nweight = \"const\"\ndirection = \"sft\"\ntau = 0.1");
    assert_eq!(
        cfg,
        unified(WeightSource::Const, DirectionSource::Sft, Some(0.1), 1.0)
    );
    assert_eq!(
        cfg.objective.to_string(),
        "unified(weight=const, direction=sft, tau=0.1)"
    );
    let cfg = parse("objective = \"unified\"\nweight = \"sft\"\ndirection = \"cl\"");
    assert_eq!(
        cfg,
        unified(WeightSource::Sft, DirectionSource::Cl, None, 1.0)
    );

    let json = serde_json::to_string(&cfg).unwrap();
    assert_eq!(
        json,
        r#"{"objective":"unified","weight":"sft","direction":"cl","temperature":1.0}"#
    );
    assert_eq!(serde_json::from_str::<ObjectiveConfig>(&json).unwrap(), cfg);

    for bad in [
        "objective = \"dpo\"",
        "objective = \"unified\"\nweight = \"sft\"",
        "objective = \"unified\"\nweight = \"x\"\ndirection = \"sft\"",
    ] {
        assert!(toml::from_str::<ObjectiveConfig>(bad).is_err(), "{bad}");
    }
}
