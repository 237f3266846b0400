//! Activation recomputation (`recompute = "layers"`, issue 17): a micro-batch run with every decoder layer and
//! every trained vision block recomputed in the backward pass, attention on the blocked algorithm (the CPU's slice
//! kernels, and the tensor-op tiles a GPU runs), gives the plain path's loss (reference attention, nothing
//! recomputed) and the same gradient of every trainable variable, with LoRA (dropout on, so the recomputed layers must redraw the same masks) and
//! with full fine-tuning (vision tower and tied LM head included; the MLP halves recomputed in slices of a few
//! tokens), on the tiny Qwen2-VL with images, the tiny
//! Qwen2.5-VL fixture (windowed vision blocks) and the tiny text decoder; and whole training steps through the
//! trainer take the same steps and end at the same weights either way.

use crate::common::reference::to_f32;
use crate::common::train_data;

use std::path::PathBuf;

use candle_core::{Device, Tensor};
use train_data::{small_demo_data, tokenizer_dir};
use umrank::dataset::Dataset;
use umrank::models::layers::attention::AttentionKernel;
use umrank::models::layers::recompute::RecomputeTape;
use umrank::models::text::prompt::PromptBuilder;
use umrank::train::config::{DataFormat, Recompute, Tuning};
use umrank::train::encode::{Encoder, Sequence};
use umrank::train::forward::{batch_logits, BatchLayout};
use umrank::train::objective::group_loss;
use umrank::train::{prepare, Prepared, RunSettings, TrainConfig, TrainInputs};

const NEGATIVES: usize = 3;

/// Values by name: the loss and each trainable variable's gradient or weight.
type Named = Vec<(String, Vec<f32>)>;

fn tiny_config(init: &str, tune: &str) -> TrainConfig {
    toml::from_str(&format!(
        "init = '{init}'\ntokenizer = '{}'\nmax_len = 512\ntune = '{tune}'\nnegatives = {NEGATIVES}",
        tokenizer_dir().display()
    ))
    .unwrap()
}

/// The tiny Qwen2.5-VL checkpoint (transformers 5 layout, tied embeddings, windowed vision blocks).
fn qwen25_config(tune: &str) -> TrainConfig {
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/vlm/qwen2_5_vl");
    toml::from_str(&format!(
        "model = '{}'\nmax_len = 512\ntune = '{tune}'\nnegatives = {NEGATIVES}",
        dir.display()
    ))
    .unwrap()
}

/// Every value of `b` within `tol` of `a`, relative to the largest magnitude of `a` (at least 1e-3); returns the
/// relative error.
fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) -> f32 {
    assert_eq!(a.len(), b.len(), "{what}");
    let scale = a.iter().fold(1e-3f32, |m, x| m.max(x.abs()));
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= tol * scale,
        "{what}: differs by {worst} (scale {scale})"
    );
    worst / scale
}

/// The prompts of the first groups, group after group, images included.
fn sequences(prepared: &Prepared) -> Vec<Sequence> {
    let builder = PromptBuilder::reranker(prepared.model.tokenizer()).unwrap();
    let encoder = Encoder::new(builder, 512, prepared.images.as_ref());
    prepared
        .groups
        .iter()
        .take(4)
        .flat_map(|g| encoder.encode(g).unwrap())
        .collect()
}

/// LoRA's B matrices start at zero, which leaves every A without a gradient: give them values so that both
/// matrices of every adapter are checked.
fn wake_adapters(prepared: &Prepared) {
    for (name, var) in prepared.model.trainable() {
        if name.ends_with("lora_B") {
            let values = Tensor::randn(0f32, 0.1, var.shape(), &Device::Cpu).unwrap();
            var.set(&values.to_dtype(var.dtype()).unwrap()).unwrap();
        }
    }
}

/// How one pass computes: the attention kernel, and whether layers are recomputed.
#[derive(Debug, Clone, Copy)]
struct Path {
    kernel: AttentionKernel,
    recompute: bool,
}

const PLAIN: Path = Path {
    kernel: AttentionKernel::Reference,
    recompute: false,
};

/// The loss and every trainable variable's gradient of one training-mode pass (dropout on), and where the
/// adapters' dropout generators stand after it. The generators start from `start` either way.
fn run(
    prepared: &mut Prepared,
    config: &TrainConfig,
    sequences: &[Sequence],
    layout: BatchLayout,
    path: Path,
    start: &[Option<u128>],
) -> (Named, Vec<Option<u128>>) {
    prepared.model.set_dropout_positions(start).unwrap();
    prepared.model.set_attention_kernel(path.kernel);
    // A few tokens per slice of a recomputed MLP, so that slices meet inside sequences and images.
    prepared.model.set_recompute_rows(7);
    let tape = path.recompute.then(RecomputeTape::new);
    let logits = batch_logits(
        &prepared.model,
        prepared.images.as_mut(),
        sequences,
        NEGATIVES + 1,
        layout,
        true,
        tape.as_ref(),
    )
    .unwrap();
    let report = group_loss(
        &config.objective_config().unwrap(),
        &logits.z_yes,
        &logits.z_no,
    )
    .unwrap();
    let grads = match tape {
        Some(tape) => {
            assert!(!tape.is_empty());
            tape.backward(&report.loss).unwrap()
        }
        None => report.loss.backward().unwrap(),
    };
    let mut out = vec![("loss".to_string(), to_f32(&report.loss))];
    for (name, var) in prepared.model.trainable() {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        out.push((name, to_f32(grad)));
    }
    (out, prepared.model.dropout_positions().unwrap())
}

fn inputs(data: &train_data::DemoData, images: bool) -> TrainInputs {
    TrainInputs {
        groups: Dataset::open(&data.shards.join(DataFormat::Sft.dir_name())).unwrap(),
        corpus: None,
        images: images.then(|| Dataset::open(&data.ingest.join("images")).unwrap()),
    }
}

#[test]
fn recomputed_layers_give_the_plain_paths_loss_and_gradients() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], NEGATIVES);
    let mut vision_full = tiny_config("tiny", "full");
    vision_full.train_vision = true;
    let mut qwen25_full = qwen25_config("full");
    qwen25_full.train_vision = true;
    qwen25_full.train_lm_head = true;
    let cases = [
        ("tiny VL, LoRA", tiny_config("tiny", "lora"), true),
        ("tiny VL, full with vision", vision_full, true),
        ("Qwen2.5-VL fixture, LoRA", qwen25_config("lora"), true),
        (
            "Qwen2.5-VL fixture, full, vision and head",
            qwen25_full,
            true,
        ),
        ("tiny text, LoRA", tiny_config("tiny-text", "lora"), false),
        ("tiny text, full", tiny_config("tiny-text", "full"), false),
    ];
    let mut worst = 0f32;
    for (case, config, images) in cases {
        let mut prepared = prepare(&config, &inputs(&data, images), 5, &Device::Cpu).unwrap();
        if config.tune == Tuning::Lora {
            wake_adapters(&prepared);
        }
        let batch = sequences(&prepared);
        assert_eq!(batch.iter().any(|s| !s.images.is_empty()), images, "{case}");
        let start = prepared.model.dropout_positions().unwrap();
        for layout in [BatchLayout::SharedPrefix, BatchLayout::Padded] {
            let (plain, plain_end) = run(&mut prepared, &config, &batch, layout, PLAIN, &start);
            let nonzero = plain
                .iter()
                .filter(|(_, a)| a.iter().any(|x| *x != 0.0))
                .count();
            assert_eq!(nonzero, plain.len(), "{case}: every gradient is nonzero");
            for kernel in [AttentionKernel::Blocked, AttentionKernel::Tiled] {
                let path = Path {
                    kernel,
                    recompute: true,
                };
                let (recomputed, recomputed_end) =
                    run(&mut prepared, &config, &batch, layout, path, &start);
                assert_eq!(plain_end, recomputed_end, "{case}: dropout generators");
                assert_eq!(plain.len(), recomputed.len());
                for ((name, a), (_, b)) in plain.iter().zip(&recomputed) {
                    let what = format!("{case} {layout:?} {kernel:?} {name}");
                    worst = worst.max(assert_close(&what, a, b, 1e-5));
                }
            }
        }
    }
    eprintln!("largest relative difference: {worst:e}");
}

/// Two LoRA steps of the tiny VL model with dropout, through the trainer: the same losses, gradient norms and
/// adapter weights with recomputation as without.
#[test]
fn training_steps_with_recomputation_follow_the_plain_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], NEGATIVES);
    let run = |recompute: Recompute| {
        let mut config = tiny_config("tiny", "lora");
        config.lr = 1e-2;
        config.groups_per_batch = 2;
        config.accumulation = 2;
        config.max_steps = Some(2);
        config.checkpoint_every = 0;
        config.recompute = Some(recompute);
        let settings = RunSettings {
            seed: 7,
            device: Device::Cpu,
            out_dir: tmp.path().join(format!("run-{recompute:?}")),
            run_key: "recompute".into(),
            stop_after: None,
        };
        let prepared = prepare(&config, &inputs(&data, true), 7, &Device::Cpu).unwrap();
        let (outcome, model) = umrank::train::train_prepared(&config, prepared, &settings).unwrap();
        let weights: Named = model
            .trainable()
            .into_iter()
            .map(|(name, var)| (name, to_f32(var.as_tensor())))
            .collect();
        (outcome.log, weights)
    };
    let (plain_log, plain) = run(Recompute::None);
    let (recomputed_log, recomputed) = run(Recompute::Layers);
    assert_eq!(plain_log.len(), 2);
    for (a, b) in plain_log.iter().zip(&recomputed_log) {
        assert!(
            (a.loss - b.loss).abs() <= 1e-5 * (1.0 + a.loss.abs()),
            "step {}: loss {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
        assert!(
            (a.grad_norm - b.grad_norm).abs() <= 1e-5 * (1.0 + a.grad_norm.abs()),
            "step {}: grad norm {} vs {}",
            a.step,
            a.grad_norm,
            b.grad_norm
        );
    }
    for ((name, a), (_, b)) in plain.iter().zip(&recomputed) {
        assert_close(name, a, b, 1e-5);
    }
}
