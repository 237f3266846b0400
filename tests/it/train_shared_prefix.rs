//! Shared-prefix training (issue 6): running the prefix a group's prompts share once gives the plain padded
//! path's logits at the scored token and the same parameter gradients, for the SFT and CL objectives, on the tiny
//! VL model (query images in the shared prefix, document images in the suffixes, text-only groups) and on the
//! tiny text decoder; and a short training run takes the same steps either way. The blocked attention kernel
//! gives the reference kernel's loss and gradients on every layout.

use crate::common::reference::to_f32;
use crate::common::train_data;

use candle_core::Device;
use train_data::{small_demo_data, tokenizer_dir};
use umrank::dataset::Dataset;
use umrank::models::layers::attention::AttentionKernel;
use umrank::models::text::prompt::PromptBuilder;
use umrank::train::config::{DataFormat, Tuning};
use umrank::train::encode::{Encoder, Sequence};
use umrank::train::forward::{batch_logits, BatchLayout};
use umrank::train::objective::group_loss;
use umrank::train::prefix::{shared_part, SharedRow};
use umrank::train::{prepare, Prepared, TrainConfig, TrainInputs};

const NEGATIVES: usize = 3;

fn train_config(init: &str, objective: &str) -> TrainConfig {
    toml::from_str(&format!(
        "init = '{init}'\ntokenizer = '{}'\nmax_len = 512\ntune = 'full'\nobjective = '{objective}'\n\
         temperature = 0.5\nnegatives = {NEGATIVES}",
        tokenizer_dir().display()
    ))
    .unwrap()
}

/// Every value of `b` within `tol` of `a`, relative to the largest magnitude of `a` (at least 1).
fn assert_close(what: &str, a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len(), "{what}");
    let scale = a.iter().fold(1f32, |m, x| m.max(x.abs()));
    let worst = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max);
    assert!(
        worst <= tol * scale,
        "{what}: differs by {worst} (scale {scale})"
    );
}

/// The prompts of the groups `pick` chooses, group after group.
fn sequences(prepared: &Prepared, pick: impl Fn(&[Sequence]) -> bool) -> Vec<Sequence> {
    let builder = PromptBuilder::reranker(prepared.model.tokenizer()).unwrap();
    let encoder = Encoder::new(builder, 512, prepared.images.as_ref());
    prepared
        .groups
        .iter()
        .map(|g| encoder.encode(g).unwrap())
        .filter(|s| pick(s))
        .take(2)
        .flatten()
        .collect()
}

/// The logits, the loss and every trainable variable's gradient of one layout.
fn run(
    prepared: &mut Prepared,
    config: &TrainConfig,
    sequences: &[Sequence],
    layout: BatchLayout,
) -> Vec<(String, Vec<f32>)> {
    let logits = batch_logits(
        &prepared.model,
        prepared.images.as_mut(),
        sequences,
        NEGATIVES + 1,
        layout,
        false,
        None,
    )
    .unwrap();
    let report = group_loss(
        &config.objective_config().unwrap(),
        &logits.z_yes,
        &logits.z_no,
    )
    .unwrap();
    let grads = report.loss.backward().unwrap();
    let mut out = vec![
        ("z_yes".to_string(), to_f32(&logits.z_yes)),
        ("z_no".to_string(), to_f32(&logits.z_no)),
        ("loss".to_string(), to_f32(&report.loss)),
    ];
    for (name, var) in prepared.model.trainable() {
        let grad = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} has no gradient"));
        out.push((name, to_f32(grad)));
    }
    out
}

fn check_layouts(prepared: &mut Prepared, config: &TrainConfig, sequences: &[Sequence]) {
    let plain = run(prepared, config, sequences, BatchLayout::Padded);
    let shared = run(prepared, config, sequences, BatchLayout::SharedPrefix);
    assert!(plain.len() > 10);
    for ((name, a), (_, b)) in plain.iter().zip(&shared) {
        assert!(a.iter().any(|x| *x != 0.0), "{name} is all zero");
        assert_close(name, a, b, 1e-5);
    }
}

#[test]
fn shared_prefix_gives_the_plain_paths_logits_and_gradients() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], NEGATIVES);
    let inputs = TrainInputs {
        groups: Dataset::open(&data.shards.join(DataFormat::Sft.dir_name())).unwrap(),
        corpus: None,
        images: Some(Dataset::open(&data.ingest.join("images")).unwrap()),
    };
    for objective in ["sft", "cl"] {
        // The VL model with a tuned vision tower: the shared query image is embedded once and its gradient
        // gathered from every prompt of the group.
        let mut config = train_config("tiny", objective);
        config.train_vision = true;
        let mut prepared = prepare(&config, &inputs, 3, &Device::Cpu).unwrap();
        let image_token = prepared.model.vl().unwrap().tokens().image_token_id;
        let query_image = |s: &[Sequence]| shared_part(s, Some(image_token)).images == 1;
        let document_image = |s: &[Sequence]| {
            s.iter()
                .all(|p| p.images.len() > shared_part(s, Some(image_token)).images)
        };
        let text = |s: &[Sequence]| s.iter().all(|p| p.images.is_empty());
        let mut batch = sequences(&prepared, query_image);
        batch.extend(sequences(&prepared, document_image));
        batch.extend(sequences(&prepared, text));
        assert_eq!(
            batch.len(),
            6 * (NEGATIVES + 1),
            "every kind of group is present"
        );
        let row = SharedRow::new(&batch, NEGATIVES + 1, Some(image_token));
        let whole: usize = batch.iter().map(|s| s.ids.len()).sum();
        assert!(
            row.ids().len() * 2 < whole,
            "{} of {whole}",
            row.ids().len()
        );
        check_layouts(&mut prepared, &config, &batch);

        let text_config = train_config("tiny-text", objective);
        let text_inputs = TrainInputs {
            images: None,
            ..inputs.clone()
        };
        let mut prepared = prepare(&text_config, &text_inputs, 3, &Device::Cpu).unwrap();
        let batch = sequences(&prepared, |_| true);
        check_layouts(&mut prepared, &text_config, &batch);
    }
}

/// One training step's loss and gradients on the blocked kernel equal the reference kernel's, on the padded,
/// packed and shared-prefix layouts: the VL model with its vision tower tuned in full, and the text model with
/// LoRA.
#[test]
fn blocked_attention_gives_the_reference_kernels_loss_and_gradients() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], NEGATIVES);
    let inputs = TrainInputs {
        groups: Dataset::open(&data.shards.join(DataFormat::Sft.dir_name())).unwrap(),
        corpus: None,
        images: Some(Dataset::open(&data.ingest.join("images")).unwrap()),
    };
    let mut vl_config = train_config("tiny", "sft");
    vl_config.train_vision = true;
    let mut lora_config = train_config("tiny-text", "cl");
    lora_config.tune = Tuning::Lora;
    for (config, inputs) in [
        (vl_config, inputs.clone()),
        (
            lora_config,
            TrainInputs {
                images: None,
                ..inputs.clone()
            },
        ),
    ] {
        let mut prepared = prepare(&config, &inputs, 3, &Device::Cpu).unwrap();
        let batch = sequences(&prepared, |_| true);
        for layout in [
            BatchLayout::Padded,
            BatchLayout::Packed,
            BatchLayout::SharedPrefix,
        ] {
            prepared
                .model
                .set_attention_kernel(AttentionKernel::Reference);
            let reference = run(&mut prepared, &config, &batch, layout);
            prepared
                .model
                .set_attention_kernel(AttentionKernel::Blocked);
            let blocked = run(&mut prepared, &config, &batch, layout);
            // LoRA's A matrices have no gradient while B is still zero; every B has one.
            let nonzero = reference
                .iter()
                .filter(|(_, a)| a.iter().any(|x| *x != 0.0))
                .count();
            assert!(nonzero > 10, "{nonzero} nonzero of {}", reference.len());
            for ((name, a), (_, b)) in reference.iter().zip(&blocked) {
                assert_close(&format!("{:?} {layout:?} {name}", config.init), a, b, 1e-5);
            }
        }
    }
}

/// Full fine-tuning at a high learning rate (the learning test's recipe), where differences would compound: the
/// two layouts' losses and gradient norms stay together step after step.
#[test]
fn training_with_a_shared_prefix_follows_the_plain_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &["t2t"], NEGATIVES);
    let inputs = TrainInputs {
        groups: Dataset::open(&data.shards.join(DataFormat::Sft.dir_name())).unwrap(),
        corpus: None,
        images: None,
    };
    let run = |shared: bool| {
        let mut config = train_config("tiny-text", "sft");
        config.lr = 1e-2;
        config.groups_per_batch = 8;
        config.max_steps = Some(6);
        config.checkpoint_every = 0;
        config.shared_prefix = shared;
        let settings = umrank::train::RunSettings {
            seed: 3,
            device: Device::Cpu,
            out_dir: tmp.path().join(format!("run-{shared}")),
            run_key: "shared".into(),
            stop_after: None,
        };
        umrank::train::train(&config, &inputs, &settings)
            .unwrap()
            .log
    };
    let (plain, shared) = (run(false), run(true));
    assert_eq!(plain.len(), 6);
    for (a, b) in plain.iter().zip(&shared) {
        assert!(
            (a.loss - b.loss).abs() <= 1e-5 * (1.0 + a.loss.abs()),
            "step {}: loss {} vs {}",
            a.step,
            a.loss,
            b.loss
        );
        assert!(
            (a.grad_norm - b.grad_norm).abs() <= 1e-3 * a.grad_norm,
            "step {}: gradient norm {} vs {}",
            a.step,
            a.grad_norm,
            b.grad_norm
        );
    }
}
