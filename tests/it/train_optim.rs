//! AdamW, gradient accumulation and the learning-rate schedule.
//!
//! `tests/fixtures/train/reference.json` (written by `gen_train.py` next to it) holds torch.optim.AdamW runs with
//! torch.nn.utils.clip_grad_norm_ on fixed gradients, including steps in which a parameter has no gradient, and
//! transformers' schedules stepped through a LambdaLR. The tests replay them here and check closed forms, bf16
//! master weights, exact resumption from a saved state, and accumulation against a single large batch.

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Tensor, Var};
use serde_json::Value;
use std::sync::OnceLock;
use umrank::optim::{AdamW, AdamWConfig, GradAccumulator, OptimError};

use crate::common::reference::to_f32;
use umrank::optim::{Decay, Schedule};

fn reference() -> &'static Value {
    static REFERENCE: OnceLock<Value> = OnceLock::new();
    REFERENCE.get_or_init(|| {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/train/reference.json"
        );
        serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
    })
}

fn case(name: &str) -> &'static Value {
    reference()["adamw"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no adamw case {name}"))
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

fn shapes(case: &Value) -> Vec<Vec<usize>> {
    case["shapes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect()
        })
        .collect()
}

fn tensor(values: Vec<f32>, shape: &[usize]) -> Tensor {
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

/// The case's initial parameters as variables of `dtype`.
fn initial_vars(case: &Value, dtype: DType) -> Vec<Var> {
    shapes(case)
        .iter()
        .zip(case["initial"].as_array().unwrap())
        .map(|(shape, init)| {
            Var::from_tensor(&tensor(floats(init), shape).to_dtype(dtype).unwrap()).unwrap()
        })
        .collect()
}

fn config(case: &Value) -> AdamWConfig {
    AdamWConfig {
        weight_decay: case["weight_decay"].as_f64().unwrap(),
        max_grad_norm: case["max_grad_norm"].as_f64(),
        ..AdamWConfig::default()
    }
}

/// Step `step`'s gradients of the case for `vars` (absent where the reference has none), in the vars' dtype.
fn grads(case: &Value, step: usize, vars: &[Var]) -> GradStore {
    let mut store = GradStore::default();
    let step = &case["steps"][step];
    for (var, grad) in vars.iter().zip(step["grads"].as_array().unwrap()) {
        if !grad.is_null() {
            let g = tensor(floats(grad), var.dims())
                .to_dtype(var.dtype())
                .unwrap();
            store.insert(var.as_tensor(), g);
        }
    }
    store
}

fn lr(case: &Value, step: usize) -> f64 {
    case["steps"][step]["lr"].as_f64().unwrap()
}

fn max_rel_diff(got: &[f32], want: &[f32]) -> f64 {
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs() as f64));
    let diff = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (g, w)| m.max((*g as f64 - *w as f64).abs()));
    diff / scale
}

#[test]
fn adamw_steps_equal_torch() {
    for name in ["plain", "decay_clip_skip", "clip_not_reached"] {
        let case = case(name);
        let vars = initial_vars(case, DType::F32);
        let cfg = config(case);
        let mut opt = AdamW::new(vars.clone(), cfg).unwrap();
        let steps = case["steps"].as_array().unwrap();
        for (step, want) in steps.iter().enumerate() {
            let report = opt.step(&grads(case, step, &vars), lr(case, step)).unwrap();
            let torch_norm = want["grad_norm"].as_f64().unwrap();
            assert!(
                (report.grad_norm - torch_norm).abs() < 1e-6 * torch_norm,
                "{name} step {step}: norm {} vs torch {torch_norm}",
                report.grad_norm
            );
            let clips = cfg
                .max_grad_norm
                .is_some_and(|m| m / (torch_norm + 1e-6) < 1.0);
            assert_eq!(report.clipped, clips, "{name} step {step}");
            let present = want["grads"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|g| !g.is_null())
                .count();
            assert_eq!(report.updated, present);
            for (i, (var, after)) in vars
                .iter()
                .zip(want["params_after"].as_array().unwrap())
                .enumerate()
            {
                let err = max_rel_diff(&to_f32(var.as_tensor()), &floats(after));
                assert!(
                    err < 1e-6,
                    "{name} step {step} param {i}: rel error {err:e}"
                );
            }
        }
        assert_eq!(opt.step_count(), steps.len() as u64);
    }
    // The fixture exercises what it claims to: some steps clip, the last case never does.
    let clipped = case("decay_clip_skip")["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["grad_norm"].as_f64().unwrap() > 0.5)
        .count();
    assert!(clipped > 3);
}

#[test]
fn clipping_scales_the_update_like_clip_grad_norm() {
    // Adam is invariant to a constant gradient scale except through eps, so compare the first step's moments
    // instead: m_1 = (1 - beta1) * clip_coef * g.
    let case = case("decay_clip_skip");
    let vars = initial_vars(case, DType::F32);
    let mut opt = AdamW::new(vars.clone(), config(case)).unwrap();
    let report = opt.step(&grads(case, 0, &vars), 0.0).unwrap();
    let coef = 0.5 / (report.grad_norm + 1e-6);
    let state = opt.state().unwrap();
    let exp_avg = &state
        .iter()
        .find(|(n, _)| n == "param.0.exp_avg")
        .unwrap()
        .1;
    let raw = floats(&case["steps"][0]["grads"][0]);
    let want: Vec<f32> = raw
        .iter()
        .map(|g| (0.1 * coef * *g as f64) as f32)
        .collect();
    assert!(max_rel_diff(&to_f32(exp_avg), &want) < 1e-6);
    // At lr 0 and with decay, nothing moves.
    assert_eq!(to_f32(vars[0].as_tensor()), floats(&case["initial"][0]));
}

/// Rounds `values` to bf16 and back.
fn bf16_round(values: &[f32], shape: &[usize]) -> Vec<f32> {
    to_f32(
        &tensor(values.to_vec(), shape)
            .to_dtype(DType::BF16)
            .unwrap(),
    )
}

#[test]
fn bf16_vars_train_through_an_f32_master() {
    // 64 values in [1, 2), where a bf16 ulp is 2^-7; lr 1e-4 with a gradient of constant sign moves each value by
    // about 1e-4 per step, under half an ulp, so a plain bf16 update would never change them.
    let shape = [64usize];
    let init: Vec<f32> = bf16_round(
        &(0..64).map(|i| 1.0 + i as f32 / 64.0).collect::<Vec<_>>(),
        &shape,
    );
    let grad: Vec<f32> = bf16_round(
        &(0..64)
            .map(|i| 0.5 + (i % 7) as f32 / 10.0)
            .collect::<Vec<_>>(),
        &shape,
    );
    let half =
        Var::from_tensor(&tensor(init.clone(), &shape).to_dtype(DType::BF16).unwrap()).unwrap();
    let full = Var::from_tensor(&tensor(init.clone(), &shape)).unwrap();
    let cfg = AdamWConfig {
        weight_decay: 0.01,
        ..AdamWConfig::default()
    };
    let mut half_opt = AdamW::new(vec![half.clone()], cfg).unwrap();
    let mut full_opt = AdamW::new(vec![full.clone()], cfg).unwrap();
    let lr = 1e-4;
    for step in 0..100 {
        for (var, opt) in [(&half, &mut half_opt), (&full, &mut full_opt)] {
            let mut store = GradStore::default();
            store.insert(
                var.as_tensor(),
                tensor(grad.clone(), &shape).to_dtype(var.dtype()).unwrap(),
            );
            opt.step(&store, lr).unwrap();
        }
        let state = half_opt.state().unwrap();
        let master = &state.iter().find(|(n, _)| n == "param.0.master").unwrap().1;
        assert_eq!(master.dtype(), DType::F32);
        // The master follows the f32 run exactly, and the variable holds its rounding.
        assert_eq!(to_f32(master), to_f32(full.as_tensor()), "step {step}");
        assert_eq!(
            to_f32(half.as_tensor()),
            bf16_round(&to_f32(master), &shape),
            "step {step}"
        );
        if step == 0 {
            assert_eq!(
                to_f32(half.as_tensor()),
                init,
                "one step is below bf16 resolution"
            );
        }
    }
    let moved = to_f32(half.as_tensor())
        .iter()
        .zip(&init)
        .filter(|(a, b)| a != b)
        .count();
    assert!(
        moved > 32,
        "only {moved} of 64 bf16 values moved after 100 steps"
    );
}

/// Runs steps `range` of a case on `vars` with `opt`.
fn run_steps(case: &Value, opt: &mut AdamW, vars: &[Var], range: std::ops::Range<usize>) {
    for step in range {
        opt.step(&grads(case, step, vars), lr(case, step)).unwrap();
    }
}

#[test]
fn saved_state_resumes_exactly() {
    let case = case("decay_clip_skip");
    let total = case["steps"].as_array().unwrap().len();
    for dtype in [DType::F32, DType::BF16] {
        let straight = initial_vars(case, dtype);
        let mut opt = AdamW::new(straight.clone(), config(case)).unwrap();
        run_steps(case, &mut opt, &straight, 0..total);

        // Interrupted after 3 steps: the variables (as an adapter checkpoint holds them) and the optimizer state
        // go to disk; a fresh process rebuilds both and continues.
        let first = initial_vars(case, dtype);
        let mut opt = AdamW::new(first.clone(), config(case)).unwrap();
        run_steps(case, &mut opt, &first, 0..3);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("optimizer.safetensors");
        let state: std::collections::HashMap<String, Tensor> =
            opt.state().unwrap().into_iter().collect();
        candle_core::safetensors::save(&state, &path).unwrap();
        let checkpoint: Vec<Tensor> = first
            .iter()
            .map(|v| v.as_detached_tensor().copy().unwrap())
            .collect();
        drop((opt, first));

        let resumed: Vec<Var> = checkpoint
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let mut opt = AdamW::new(resumed.clone(), config(case)).unwrap();
        opt.load_state(candle_core::safetensors::load(&path, &Device::Cpu).unwrap())
            .unwrap();
        assert_eq!(opt.step_count(), 3);
        run_steps(case, &mut opt, &resumed, 3..total);
        for (a, b) in straight.iter().zip(&resumed) {
            assert_eq!(to_f32(a.as_tensor()), to_f32(b.as_tensor()), "{dtype:?}");
        }
        // Without the state the continuation differs: the comparison can fail.
        let cold: Vec<Var> = checkpoint
            .iter()
            .map(|t| Var::from_tensor(t).unwrap())
            .collect();
        let mut opt = AdamW::new(cold.clone(), config(case)).unwrap();
        run_steps(case, &mut opt, &cold, 3..total);
        assert_ne!(to_f32(straight[0].as_tensor()), to_f32(cold[0].as_tensor()));
    }
}

#[test]
fn load_state_rejects_a_foreign_state_and_changes_nothing() {
    let case = case("plain");
    let vars = initial_vars(case, DType::F32);
    let mut opt = AdamW::new(vars.clone(), config(case)).unwrap();
    run_steps(case, &mut opt, &vars, 0..2);
    let good = opt.state().unwrap();

    let mut fresh = AdamW::new(initial_vars(case, DType::F32), config(case)).unwrap();
    let without = |name: &str| {
        good.iter()
            .filter(|(n, _)| n != name)
            .cloned()
            .collect::<Vec<_>>()
    };
    let err = fresh.load_state(without("param.1.exp_avg_sq")).unwrap_err();
    assert!(
        err.to_string().contains("param.1.exp_avg_sq: is missing"),
        "{err}"
    );

    let mut extra = good.clone();
    extra.push((
        "param.3.exp_avg".into(),
        Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap(),
    ));
    let err = fresh.load_state(extra).unwrap_err();
    assert!(err.to_string().contains("param.3.exp_avg"), "{err}");

    let mut wrong = without("param.0.exp_avg");
    wrong.push((
        "param.0.exp_avg".into(),
        Tensor::zeros((4, 3), DType::F32, &Device::Cpu).unwrap(),
    ));
    let err = fresh.load_state(wrong).unwrap_err();
    assert!(err.to_string().contains("shape"), "{err}");

    let mut negative = without("step");
    negative.push(("step".into(), Tensor::new(&[-1i64], &Device::Cpu).unwrap()));
    assert!(fresh.load_state(negative).is_err());
    // The failed loads left the fresh optimizer untouched.
    assert_eq!(fresh.step_count(), 0);
    assert!(fresh
        .state()
        .unwrap()
        .iter()
        .all(|(n, t)| n.ends_with("steps") || n == "step" || to_f32(t).iter().all(|v| *v == 0.0)));
}

#[test]
fn unused_vars_and_foreign_gradients() {
    let a = Var::new(&[1.0f32, -2.0, 3.0], &Device::Cpu).unwrap();
    let b = Var::new(&[0.5f32, 0.25], &Device::Cpu).unwrap();
    let outside = Var::new(&[4.0f32], &Device::Cpu).unwrap();
    let loss = (a.as_tensor().sqr().unwrap().sum_all().unwrap()
        * outside.as_tensor().sum_all().unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    assert!(grads.get(outside.as_tensor()).is_some() && grads.get(b.as_tensor()).is_none());
    let mut opt = AdamW::new(vec![a.clone(), b.clone()], AdamWConfig::default()).unwrap();
    let report = opt.step(&grads, 0.1).unwrap();
    assert_eq!(report.updated, 1);
    // The norm is that of a's gradient alone, 2 * a * 4 = [8, -16, 24].
    assert!((report.grad_norm - (64.0f64 + 256.0 + 576.0).sqrt()).abs() < 1e-4);
    assert_eq!(to_f32(b.as_tensor()), [0.5, 0.25]);
    assert_eq!(to_f32(outside.as_tensor()), [4.0]);
    assert_ne!(to_f32(a.as_tensor()), [1.0, -2.0, 3.0]);
    let state = opt.state().unwrap();
    let steps = |name: &str| {
        state
            .iter()
            .find(|(n, _)| n == name)
            .unwrap()
            .1
            .to_vec1::<i64>()
            .unwrap()[0]
    };
    assert_eq!((steps("param.0.steps"), steps("param.1.steps")), (1, 0));
}

#[test]
fn bad_gradients_and_configs_are_errors() {
    let a = Var::new(&[1.0f32, 2.0], &Device::Cpu).unwrap();
    let mut opt = AdamW::new(vec![a.clone()], AdamWConfig::default()).unwrap();
    let mut store = GradStore::default();
    store.insert(
        a.as_tensor(),
        Tensor::new(&[f32::INFINITY, 1.0], &Device::Cpu).unwrap(),
    );
    let err = opt.step(&store, 0.1).unwrap_err();
    assert!(
        matches!(err, OptimError::NonFiniteGradient { step: 1, .. }),
        "{err}"
    );
    assert_eq!(to_f32(a.as_tensor()), [1.0, 2.0]);
    assert_eq!(opt.step_count(), 0);

    let mut store = GradStore::default();
    store.insert(
        a.as_tensor(),
        Tensor::new(&[1.0f32, 2.0, 3.0], &Device::Cpu).unwrap(),
    );
    assert!(matches!(
        opt.step(&store, 0.1),
        Err(OptimError::GradientShape { param: 0, .. })
    ));
    assert!(opt.step(&GradStore::default(), f64::NAN).is_err());

    let bad = [
        AdamWConfig {
            beta1: 1.0,
            ..AdamWConfig::default()
        },
        AdamWConfig {
            beta2: -0.1,
            ..AdamWConfig::default()
        },
        AdamWConfig {
            eps: 0.0,
            ..AdamWConfig::default()
        },
        AdamWConfig {
            weight_decay: -1.0,
            ..AdamWConfig::default()
        },
        AdamWConfig {
            max_grad_norm: Some(0.0),
            ..AdamWConfig::default()
        },
    ];
    for cfg in bad {
        assert!(
            matches!(
                AdamW::new(vec![a.clone()], cfg),
                Err(OptimError::Optimizer { .. })
            ),
            "{cfg:?}"
        );
    }
    assert!(AdamW::new(vec![a.clone(), a.clone()], AdamWConfig::default()).is_err());
}

#[test]
fn accumulated_micro_batches_equal_one_batch() {
    // Per micro-batch loss: the mean over its rows r of (x_r . w)^2 + c . v, where v is reached only when c != 0.
    let w = Var::new(&[0.3f32, -0.7, 1.1], &Device::Cpu).unwrap();
    let v = Var::new(&[2.0f32, 0.5], &Device::Cpu).unwrap();
    let rows: [[f32; 3]; 5] = [
        [1.0, 2.0, 0.5],
        [-1.0, 0.0, 3.0],
        [0.5, 0.5, 0.5],
        [2.0, -1.0, 1.0],
        [0.0, 1.0, -2.0],
    ];
    let loss = |rows: &[[f32; 3]], c: [f32; 2]| {
        let x = Tensor::from_vec(rows.concat(), (rows.len(), 3), &Device::Cpu).unwrap();
        let scores = x.matmul(&w.as_tensor().unsqueeze(1).unwrap()).unwrap();
        let mean = (scores.sqr().unwrap().sum_all().unwrap() / rows.len() as f64).unwrap();
        if c == [0.0, 0.0] {
            return mean;
        }
        let linear = (Tensor::new(&c, &Device::Cpu).unwrap() * v.as_tensor())
            .unwrap()
            .sum_all()
            .unwrap();
        (mean + linear).unwrap()
    };
    let whole = loss(&rows, [0.0, 0.0]).backward().unwrap();

    let mut acc = GradAccumulator::new(vec![w.clone(), v.clone()]);
    acc.add_weighted(&loss(&rows[..2], [0.0, 0.0]).backward().unwrap(), 2.0)
        .unwrap();
    acc.add_weighted(&loss(&rows[2..], [0.0, 0.0]).backward().unwrap(), 3.0)
        .unwrap();
    assert_eq!(acc.count(), 2);
    let mean = acc.take().unwrap();
    assert_eq!(acc.count(), 0);
    let err = max_rel_diff(
        &to_f32(mean.get(w.as_tensor()).unwrap()),
        &to_f32(whole.get(w.as_tensor()).unwrap()),
    );
    assert!(err < 1e-6, "weighted accumulation error {err:e}");
    assert!(
        mean.get(v.as_tensor()).is_none(),
        "v was reached by no micro-batch"
    );

    // Unweighted: the plain mean of the micro-batch gradients, v's included where only one batch reached it.
    let a = loss(&rows[..2], [1.0, 3.0]).backward().unwrap();
    let b = loss(&rows[2..4], [0.0, 0.0]).backward().unwrap();
    acc.add(&a).unwrap();
    acc.add(&b).unwrap();
    let mean = acc.take().unwrap();
    let want: Vec<f32> = to_f32(a.get(w.as_tensor()).unwrap())
        .iter()
        .zip(to_f32(b.get(w.as_tensor()).unwrap()))
        .map(|(x, y)| (x + y) / 2.0)
        .collect();
    assert!(max_rel_diff(&to_f32(mean.get(w.as_tensor()).unwrap()), &want) < 1e-6);
    assert_eq!(to_f32(mean.get(v.as_tensor()).unwrap()), [0.5, 1.5]);

    assert!(acc.take().is_err(), "nothing added since the last take");
    assert!(acc.add_weighted(&a, 0.0).is_err());
}

fn schedule(case: &Value, decay: Decay) -> Schedule {
    Schedule {
        peak_lr: case["peak_lr"].as_f64().unwrap(),
        warmup_steps: case["warmup_steps"].as_u64().unwrap(),
        total_steps: case["total_steps"].as_u64().unwrap(),
        decay,
        min_lr_ratio: case["min_lr_rate"].as_f64().unwrap_or(0.0),
    }
}

#[test]
fn schedules_equal_transformers() {
    for case in reference()["schedules"].as_array().unwrap() {
        let decay = match case["name"].as_str().unwrap() {
            "linear" => Decay::Linear,
            "constant" => Decay::Constant,
            _ => Decay::Cosine,
        };
        let schedule = schedule(case, decay);
        schedule.check().unwrap();
        for (step, want) in case["lrs"].as_array().unwrap().iter().enumerate() {
            let (got, want) = (schedule.lr(step as u64), want.as_f64().unwrap());
            assert!(
                (got - want).abs() <= 1e-12 * schedule.peak_lr,
                "{} step {step}: {got} vs {want}",
                case["name"]
            );
        }
    }
}

#[test]
fn schedules_follow_their_closed_forms() {
    let peak = 3e-4;
    let at = |decay, min_lr_ratio, step| {
        Schedule {
            peak_lr: peak,
            warmup_steps: 10,
            total_steps: 110,
            decay,
            min_lr_ratio,
        }
        .lr(step)
    };
    let close = |got: f64, want: f64| assert!((got - want).abs() < 1e-15, "{got} vs {want}");
    // Warmup: peak * step / warmup, the same for every decay.
    for decay in [Decay::Cosine, Decay::Linear, Decay::Constant] {
        close(at(decay, 0.0, 0), 0.0);
        close(at(decay, 0.0, 4), peak * 0.4);
        close(at(decay, 0.0, 10), peak);
    }
    // Cosine: peak * (1 + cos(pi * (step - 10) / 100)) / 2.
    close(
        at(Decay::Cosine, 0.0, 35),
        peak * (1.0 + (std::f64::consts::PI * 0.25).cos()) / 2.0,
    );
    close(at(Decay::Cosine, 0.0, 60), peak * 0.5);
    close(at(Decay::Cosine, 0.0, 110), 0.0);
    // Linear: peak * (1 - (step - 10) / 100).
    close(at(Decay::Linear, 0.0, 35), peak * 0.75);
    close(at(Decay::Linear, 0.0, 110), 0.0);
    // A floor: peak * (ratio + (1 - ratio) * factor).
    close(at(Decay::Linear, 0.2, 60), peak * (0.2 + 0.8 * 0.5));
    close(at(Decay::Cosine, 0.2, 110), peak * 0.2);
    close(at(Decay::Constant, 0.2, 80), peak);
    // Past the end the rate stays at its floor (transformers' cosine would rise again).
    close(at(Decay::Cosine, 0.0, 200), 0.0);
    close(at(Decay::Cosine, 0.1, 310), peak * 0.1);
    close(at(Decay::Linear, 0.0, 500), 0.0);
}

#[test]
fn bad_schedules_are_errors() {
    let good = Schedule {
        peak_lr: 1e-4,
        warmup_steps: 5,
        total_steps: 50,
        decay: Decay::Cosine,
        min_lr_ratio: 0.0,
    };
    good.check().unwrap();
    for (bad, field) in [
        (
            Schedule {
                peak_lr: -1.0,
                ..good
            },
            "peak_lr",
        ),
        (
            Schedule {
                peak_lr: f64::NAN,
                ..good
            },
            "peak_lr",
        ),
        (
            Schedule {
                min_lr_ratio: 1.5,
                ..good
            },
            "min_lr_ratio",
        ),
        (
            Schedule {
                warmup_steps: 51,
                ..good
            },
            "warmup_steps",
        ),
    ] {
        let err = bad.check().unwrap_err();
        assert!(
            matches!(err, OptimError::Schedule { field: f, .. } if f == field),
            "{err}"
        );
    }
    let parsed: Schedule =
        toml::from_str("peak_lr = 1e-4\nwarmup_steps = 5\ntotal_steps = 50\ndecay = \"cosine\"")
            .unwrap();
    assert_eq!(parsed, good);
}
