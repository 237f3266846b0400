//! Training from pretrained model directories (issue 18): LoRA runs with `model = DIR` on each kind of directory
//! transformers writes (tests/fixtures/models/pretrained, see gen_pretrained.py there): Qwen2-VL in the flat
//! transformers-4 config and the nested transformers-5 one, sharded Qwen2.5-VL, tied and untied LM heads, Qwen2,
//! Qwen3 and a Llama (SmolLM2) decoder. For each: the loss goes down, only the adapter tensors move (every base
//! weight bit-identical), and a run stopped mid-way and resumed ends byte-identical to an uninterrupted one.
//!
//! The VL directories train on the demo world's image tasks (image pairs), the text decoders on its text task.
//! Every step sees all of the groups at a constant learning rate without dropout, so the loss of a step is the
//! loss of the weights it starts from and must fall.

use crate::common::reference::to_f32;
use crate::common::train_data::{cpu_run_settings, small_demo_data, train_inputs, DemoData};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use candle_core::Device;
use umrank::train::config::DataFormat;
use umrank::train::{prepare, train, train_prepared, TrainConfig};

const SEED: u64 = 5;
const STEPS: u64 = 4;
/// More than the groups of any task of the small demo world: one batch holds them all.
const ALL_GROUPS: usize = 64;

fn pretrained(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/pretrained")
        .join(name)
}

/// A LoRA run of `STEPS` full-batch steps from `dir` on `format` groups, checkpointing every other step.
fn config(dir: &Path, format: DataFormat) -> TrainConfig {
    let (data, objective) = match format {
        DataFormat::Sft => ("sft", "sft"),
        DataFormat::Cl => ("cl", "cl"),
    };
    toml::from_str(&format!(
        "model = '{}'\ndata = '{data}'\nobjective = '{objective}'\nmax_len = 512\n\
         groups_per_batch = {ALL_GROUPS}\nlr = 2e-3\ndecay = 'constant'\nwarmup_steps = 0\nlora_r = 4\n\
         lora_alpha = 8\nlora_dropout = 0\nnegatives = 2\nmax_steps = {STEPS}\ncheckpoint_every = 2",
        dir.display()
    ))
    .unwrap()
}

/// The demo data a directory trains on: an image task for a VL model, the text task for a text decoder.
fn data_for(dir: &Path, work: &Path) -> DemoData {
    let config = std::fs::read_to_string(dir.join("config.json")).unwrap();
    let task = if config.contains("vision_config") {
        "world_t2i"
    } else {
        "world_t2t"
    };
    small_demo_data(work, &[task], 2)
}

fn snapshot(weights: Vec<(String, candle_core::Tensor)>) -> BTreeMap<String, Vec<f32>> {
    weights
        .into_iter()
        .map(|(name, t)| (name, to_f32(&t)))
        .collect()
}

/// Trains `name` with `format` groups and checks the loss, the frozen base and resuming.
fn trains_from(name: &str, format: DataFormat) {
    let dir = pretrained(name);
    let tmp = tempfile::tempdir().unwrap();
    let data = data_for(&dir, tmp.path());
    let config = config(&dir, format);
    let inputs = train_inputs(&data, format);

    let prepared = prepare(&config, &inputs, SEED, &Device::Cpu).unwrap();
    assert!(
        prepared.groups.len() <= ALL_GROUPS && prepared.rejects.is_empty(),
        "{name}: {} groups, rejects {:?}",
        prepared.groups.len(),
        prepared.rejects
    );
    if prepared.model.vl().is_some() {
        assert!(
            prepared
                .groups
                .iter()
                .any(|g| g.image_ids().next().is_some()),
            "{name}: no image pairs"
        );
    }
    let base = snapshot(prepared.model.base_weights());
    let trainable = prepared.model.trainable();
    assert!(
        !trainable.is_empty()
            && trainable
                .iter()
                .all(|(n, _)| n.ends_with(".lora_A") || n.ends_with(".lora_B")),
        "{name}: trainable {:?}",
        trainable.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    let adapters_before: Vec<Vec<f32>> = trainable
        .iter()
        .map(|(_, v)| to_f32(v.as_tensor()))
        .collect();

    let whole = tmp.path().join("whole");
    let settings = |out: &Path, stop| cpu_run_settings(out, SEED, name, stop);
    let (outcome, model) = train_prepared(&config, prepared, &settings(&whole, None)).unwrap();

    let losses: Vec<f64> = outcome.log.iter().map(|entry| entry.loss).collect();
    assert_eq!(losses.len(), STEPS as usize);
    assert!(
        losses.iter().all(|l| l.is_finite()) && losses[STEPS as usize - 1] < losses[0],
        "{name}: the loss did not fall: {losses:?}"
    );
    assert_eq!(
        snapshot(model.base_weights()),
        base,
        "{name}: a base weight moved"
    );
    let moved = model
        .trainable()
        .iter()
        .zip(&adapters_before)
        .filter(|((_, v), before)| to_f32(v.as_tensor()) != **before)
        .count();
    assert_eq!(
        moved,
        adapters_before.len(),
        "{name}: only {moved} of {} adapter matrices moved",
        adapters_before.len()
    );

    let split = tmp.path().join("split");
    let first = train(&config, &inputs, &settings(&split, Some(STEPS / 2))).unwrap();
    assert!(first.output.is_none() && first.log.len() == STEPS as usize / 2);
    let second = train(&config, &inputs, &settings(&split, None)).unwrap();
    assert_eq!(second.resumed_from, STEPS / 2, "{name}");
    assert_eq!(second.log, outcome.log, "{name}");
    for file in ["adapter_model.safetensors", "adapter_config.json"] {
        assert_eq!(
            std::fs::read(whole.join("adapter").join(file)).unwrap(),
            std::fs::read(split.join("adapter").join(file)).unwrap(),
            "{name}: {file} of the resumed run differs"
        );
    }
}

#[test]
fn qwen2_vl_flat_transformers4_config_sft() {
    trains_from("qwen2_vl_flat", DataFormat::Sft);
}

#[test]
fn qwen2_vl_nested_config_untied_head_cl() {
    trains_from("qwen2_vl", DataFormat::Cl);
}

#[test]
fn qwen2_5_vl_sharded_tied_sft() {
    trains_from("qwen2_5_vl", DataFormat::Sft);
}

#[test]
fn qwen2_5_vl_sharded_tied_cl() {
    trains_from("qwen2_5_vl", DataFormat::Cl);
}

#[test]
fn qwen2_text_decoder_tied_sft() {
    trains_from("qwen2", DataFormat::Sft);
}

#[test]
fn qwen3_text_decoder_sharded_untied_cl() {
    trains_from("qwen3", DataFormat::Cl);
}

#[test]
fn smollm2_llama_decoder_sft() {
    trains_from("smollm2", DataFormat::Sft);
}
