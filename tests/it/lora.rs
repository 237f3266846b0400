//! LoRA on the decoder: a PEFT-made adapter (tests/fixtures/models/qwen2_lora, random non-zero A and B, targets
//! q_proj, v_proj and down_proj) against transformers + peft, PEFT-format save/load, merging, fresh
//! initialisation, and training steps that move only the adapters.

use crate::common::reference;

use candle_core::{Device, Tensor, Var};
use candle_nn::{AdamW, Optimizer, ParamsAdamW};
use reference::{fixture, get, load, rel_error, rel_error_at, to_f64, Batch};
use std::collections::BTreeMap;
use std::path::Path;
use umrank::models::adapters::lora::{LoraConfig, DECODER_TARGETS};
use umrank::models::adapters::peft::{ADAPTER_CONFIG, ADAPTER_WEIGHTS};
use umrank::models::decoder::{select_positions, Decoder};
use umrank::models::layers::softmax::log_softmax;

fn with_peft_adapter() -> Decoder {
    let mut decoder = load("qwen2");
    decoder.load_lora(&fixture("qwen2_lora"), 0).unwrap();
    decoder
}

fn logits(decoder: &Decoder, train: bool) -> Tensor {
    let batch = Batch::of("qwen2");
    let hidden = batch.hidden(decoder, train);
    decoder.logits(&hidden).unwrap()
}

fn adapted_modules(decoder: &Decoder) -> Vec<String> {
    decoder
        .linears()
        .into_iter()
        .filter(|linear| linear.lora().is_some())
        .map(|linear| linear.path().to_string())
        .collect()
}

#[test]
fn peft_adapter_matches_transformers_peft() {
    let decoder = with_peft_adapter();
    let config = decoder.lora_config().unwrap();
    assert_eq!((config.r, config.alpha), (4, 16.0));
    assert_eq!(config.target_modules, ["down_proj", "q_proj", "v_proj"]);
    let adapted = adapted_modules(&decoder);
    assert_eq!(adapted.len(), 6, "{adapted:?}");
    assert!(adapted.contains(&"model.layers.1.mlp.down_proj".to_string()));
    let adapter = decoder.linears()[0].lora().unwrap();
    assert_eq!((adapter.rank(), adapter.scaling()), (4, 4.0));

    let batch = Batch::of("qwen2");
    let valid = batch.valid_positions();
    let got = logits(&decoder, false);
    let err = rel_error_at(&got, &get("qwen2_lora.logits"), &valid);
    assert!(err < 1e-4, "logits rel error {err:e}");
    // The adapter matters: without it the logits are far from peft's.
    let base = rel_error_at(
        &logits(&load("qwen2"), false),
        &get("qwen2_lora.logits"),
        &valid,
    );
    assert!(base > 1e-2, "the adapter changes little ({base:e})");
}

fn read_tensors(dir: &Path) -> BTreeMap<String, Vec<f32>> {
    candle_core::safetensors::load(dir.join(ADAPTER_WEIGHTS), &Device::Cpu)
        .unwrap()
        .into_iter()
        .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect()
}

#[test]
fn save_and_load_round_trip_exactly() {
    let first = tempfile::tempdir().unwrap();
    with_peft_adapter()
        .save_lora(first.path(), Some("tiny-qwen2"))
        .unwrap();
    assert_eq!(
        read_tensors(first.path()),
        read_tensors(&fixture("qwen2_lora")),
        "saved values and keys equal peft's"
    );

    let mut reloaded = load("qwen2");
    reloaded.load_lora(first.path(), 0).unwrap();
    let second = tempfile::tempdir().unwrap();
    reloaded
        .save_lora(second.path(), Some("tiny-qwen2"))
        .unwrap();
    for file in [ADAPTER_WEIGHTS, ADAPTER_CONFIG] {
        assert_eq!(
            std::fs::read(first.path().join(file)).unwrap(),
            std::fs::read(second.path().join(file)).unwrap(),
            "{file} differs after a round trip"
        );
    }
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(first.path().join(ADAPTER_CONFIG)).unwrap()).unwrap();
    assert_eq!(config["peft_type"], "LORA");
    assert_eq!(config["r"], 4);
    assert_eq!(config["base_model_name_or_path"], "tiny-qwen2");
}

#[test]
fn merged_weights_give_the_adapter_logits() {
    let mut decoder = with_peft_adapter();
    let adapted = logits(&decoder, false);
    decoder.merge_lora().unwrap();
    assert!(decoder.lora_vars().is_empty() && decoder.lora_config().is_none());
    let merged = logits(&decoder, false);
    let err = rel_error(&to_f64(&merged), &to_f64(&adapted));
    assert!(err < 1e-5, "merged logits rel error {err:e}");
}

/// A frozen adapter, as a reranker that only scores holds it, gives the same logits bit for bit and records no
/// graph, so that a scoring pass keeps no activations alive.
#[test]
fn frozen_adapters_give_the_same_logits_without_a_graph() {
    let mut decoder = with_peft_adapter();
    let trainable = logits(&decoder, false);
    assert!(trainable.track_op(), "trainable adapters record a graph");
    decoder.freeze_lora();
    let frozen = logits(&decoder, false);
    assert!(!frozen.track_op(), "a frozen adapter records none");
    assert_eq!(to_f64(&frozen), to_f64(&trainable));
}

/// A fresh adapter is PEFT's: A uniform within 1/sqrt(in), B zero, so the model is unchanged bit for bit.
#[test]
fn fresh_adapters_start_as_the_identity() {
    let base = logits(&load("qwen2"), false);
    let mut decoder = load("qwen2");
    let attached = decoder.add_lora(&LoraConfig::default(), 7).unwrap();
    assert_eq!(attached, 2 * DECODER_TARGETS.len());
    assert_eq!(decoder.lora_vars().len(), 2 * attached);
    assert_eq!(to_f64(&logits(&decoder, false)), to_f64(&base));
    for linear in decoder.linears() {
        let adapter = linear.lora().unwrap();
        assert_eq!(adapter.rank(), 16);
        let a = to_f64(adapter.a().as_tensor());
        let bound = 1.0 / (linear.in_dim() as f64).sqrt();
        assert!(a.iter().all(|v| v.abs() <= bound), "{}", linear.path());
        assert!(a.iter().any(|v| v.abs() > bound / 2.0), "{}", linear.path());
        assert!(to_f64(adapter.b().as_tensor()).iter().all(|&v| v == 0.0));
    }
}

/// An adapter saved with the decoder under `model.layers` applies to a checkpoint that keeps it under
/// `model.language_model.layers` (the tiny Qwen2-VL has matching projection shapes), and saves under the latter.
#[test]
fn adapters_apply_across_vl_weight_layouts() {
    let mut decoder = load("qwen2_vl");
    decoder.load_lora(&fixture("qwen2_lora"), 0).unwrap();
    let adapted = adapted_modules(&decoder);
    assert_eq!(adapted.len(), 6);
    assert!(adapted
        .iter()
        .all(|path| path.starts_with("model.language_model.layers.")));
    let dir = tempfile::tempdir().unwrap();
    decoder.save_lora(dir.path(), None).unwrap();
    let keys: Vec<String> = read_tensors(dir.path()).into_keys().collect();
    assert!(keys.contains(
        &"base_model.model.model.language_model.layers.0.self_attn.q_proj.lora_A.weight"
            .to_string()
    ));
}

/// A copy of the PEFT fixture whose adapter_config.json went through `edit`.
fn edited_adapter(edit: impl FnOnce(&mut serde_json::Value)) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for file in [ADAPTER_CONFIG, ADAPTER_WEIGHTS] {
        std::fs::copy(fixture("qwen2_lora").join(file), dir.path().join(file)).unwrap();
    }
    let path = dir.path().join(ADAPTER_CONFIG);
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    edit(&mut config);
    std::fs::write(&path, config.to_string()).unwrap();
    dir
}

fn load_lora_error(dir: &Path) -> String {
    load("qwen2").load_lora(dir, 0).unwrap_err().to_string()
}

#[test]
fn adapters_that_would_not_apply_fully_are_refused() {
    let dora = edited_adapter(|c| c["use_dora"] = true.into());
    assert!(load_lora_error(dora.path()).contains("DoRA"));

    let regex = edited_adapter(|c| c["target_modules"] = ".*proj".into());
    assert!(load_lora_error(regex.path()).contains("regular expression"));

    let more_targets = edited_adapter(|c| {
        c["target_modules"] = serde_json::json!(["q_proj", "k_proj", "v_proj", "down_proj"])
    });
    let err = load_lora_error(more_targets.path());
    assert!(
        err.contains("`base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight`"),
        "{err}"
    );

    let fewer_targets =
        edited_adapter(|c| c["target_modules"] = serde_json::json!(["q_proj", "v_proj"]));
    let err = load_lora_error(fewer_targets.path());
    assert!(
        err.contains("4 tensors match no adapted module") && err.contains("down_proj"),
        "{err}"
    );

    let wrong_rank = edited_adapter(|c| c["r"] = 8.into());
    let err = load_lora_error(wrong_rank.path());
    assert!(
        err.contains("lora_A.weight") && err.contains("[4, 32]") && err.contains("[8, 32]"),
        "{err}"
    );

    let missing_r = edited_adapter(|c| {
        c.as_object_mut().unwrap().remove("r");
    });
    let err = load_lora_error(missing_r.path());
    assert!(
        err.contains("adapter_config.json") && err.contains("`r`"),
        "{err}"
    );
}

/// Cross-entropy over {no, yes} at each row's last token: the SFT reranking loss.
fn yes_no_loss(decoder: &Decoder, train: bool) -> Tensor {
    let batch = Batch::of("qwen2");
    let hidden = batch.hidden(decoder, train);
    let last = select_positions(&hidden, &batch.last_positions()).unwrap();
    let (no, yes) = (17, 200);
    let log_probs = log_softmax(&decoder.token_logits(&last, &[no, yes]).unwrap()).unwrap();
    // Row 0 relevant (yes), rows 1 and 2 not (no).
    let labels = Tensor::new(&[[0f32, 1.], [1., 0.], [1., 0.]], &Device::Cpu).unwrap();
    (log_probs * labels)
        .unwrap()
        .sum_all()
        .unwrap()
        .affine(-1.0 / 3.0, 0.0)
        .unwrap()
}

/// Every base tensor the projections hold, plus the LM head.
fn base_snapshot(decoder: &Decoder) -> Vec<(String, Vec<f32>)> {
    let mut snapshot: Vec<(String, Vec<f32>)> = decoder
        .linears()
        .into_iter()
        .flat_map(|linear| {
            let mut tensors = vec![(linear.path().to_string(), linear.weight().clone())];
            tensors.extend(
                linear
                    .bias()
                    .map(|b| (format!("{}.bias", linear.path()), b.clone())),
            );
            tensors
        })
        .map(|(name, t)| (name, t.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
        .collect();
    snapshot.push((
        "lm_head".into(),
        decoder.lm_head().flatten_all().unwrap().to_vec1().unwrap(),
    ));
    snapshot
}

fn train(seed: u64, steps: usize, dropout: f64) -> (Decoder, Vec<f32>) {
    let mut decoder = load("qwen2");
    let config = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout,
        ..LoraConfig::default()
    };
    decoder.add_lora(&config, seed).unwrap();
    let params = ParamsAdamW {
        lr: 1e-2,
        ..ParamsAdamW::default()
    };
    let mut optimizer = AdamW::new(decoder.lora_vars(), params).unwrap();
    let mut losses = Vec::new();
    for _ in 0..steps {
        losses.push(yes_no_loss(&decoder, false).to_scalar::<f32>().unwrap());
        optimizer
            .backward_step(&yes_no_loss(&decoder, true))
            .unwrap();
    }
    losses.push(yes_no_loss(&decoder, false).to_scalar::<f32>().unwrap());
    (decoder, losses)
}

fn var_values(vars: &[Var]) -> Vec<Vec<f32>> {
    vars.iter()
        .map(|v| v.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

#[test]
fn training_moves_only_the_adapters_and_lowers_the_loss() {
    let before = base_snapshot(&load("qwen2"));
    let (decoder, losses) = train(3, 5, 0.0);
    assert!(
        losses.windows(2).all(|w| w[1] < w[0]),
        "loss must fall at every step: {losses:?}"
    );
    assert!(losses[5] < 0.8 * losses[0], "{losses:?}");
    assert!(base_snapshot(&decoder) == before, "a base tensor changed");
    let changed_b = decoder
        .linears()
        .iter()
        .filter(|l| {
            to_f64(l.lora().unwrap().b().as_tensor())
                .iter()
                .any(|&v| v != 0.0)
        })
        .count();
    assert_eq!(changed_b, 14, "every adapter's B should have moved");
}

#[test]
fn training_with_dropout_is_reproducible_from_the_seed() {
    let (first, _) = train(11, 2, 0.2);
    let (second, _) = train(11, 2, 0.2);
    let (other, _) = train(12, 2, 0.2);
    assert_eq!(
        var_values(&first.lora_vars()),
        var_values(&second.lora_vars())
    );
    assert_ne!(
        var_values(&first.lora_vars()),
        var_values(&other.lora_vars())
    );
}
