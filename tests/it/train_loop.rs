//! The training loop (issue 6): resuming equals not stopping, LoRA trains only adapters, full fine-tuning keeps
//! the LM head and vision tower frozen unless asked, packing and the vision cache change nothing but speed, bad
//! groups become rejects with their reason, the stage runs in a pipeline, and `umrank train --help` documents
//! every key of the `[train]` table.

use crate::common::cli::umrank_ok;
use crate::common::reference::to_f32;
use crate::common::train_data;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::Device;
use train_data::{
    cpu_run_settings, small_demo_data, tiny_train_config, tokenizer_dir, train_inputs,
    upstream_dirs,
};
use umrank::pipeline::{Runner, Stage, StageOutcome};
use umrank::schema::outputs::train::TRAIN_LOG;
use umrank::train::config::DataFormat;
use umrank::train::encode::Encoder;
use umrank::train::forward::{batch_logits, BatchLayout};
use umrank::train::log::read_log;
use umrank::train::{prepare, train, train_prepared, RunSettings, TrainConfig, TrainStage};

/// The tiny VL test config, with the keys of `extra` overriding its defaults.
fn config(extra: &str) -> TrainConfig {
    tiny_train_config(
        "max_len = 512\ngroups_per_batch = 2\nlr = 1e-3\ncheckpoint_every = 0",
        extra,
    )
}

fn settings(out: &Path, stop_after: Option<u64>) -> RunSettings {
    cpu_run_settings(out, 3, "test-run", stop_after)
}

#[test]
fn a_resumed_run_equals_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 3);
    // Images (vision cache), LoRA dropout, accumulation and a cosine schedule all have to line up.
    let config = config("accumulation = 2\nmax_steps = 6\ncheckpoint_every = 2\nwarmup_steps = 1");
    let inputs = train_inputs(&data, DataFormat::Sft);

    let whole = tmp.path().join("whole");
    let uninterrupted = train(&config, &inputs, &settings(&whole, None)).unwrap();
    assert_eq!(uninterrupted.log.len(), 6);
    assert!(uninterrupted.cached_images > 0);

    let split = tmp.path().join("split");
    let first = train(&config, &inputs, &settings(&split, Some(3))).unwrap();
    assert!(first.output.is_none() && first.log.len() == 3);
    let second = train(&config, &inputs, &settings(&split, None)).unwrap();
    assert_eq!(second.resumed_from, 3);
    assert_eq!(second.log, uninterrupted.log);
    for file in ["adapter_model.safetensors", "adapter_config.json"] {
        assert_eq!(
            std::fs::read(whole.join("adapter").join(file)).unwrap(),
            std::fs::read(split.join("adapter").join(file)).unwrap(),
            "{file}"
        );
    }
    assert_eq!(read_log(&split.join(TRAIN_LOG)).unwrap(), uninterrupted.log);
    assert_eq!(
        std::fs::read(split.join(TRAIN_LOG)).unwrap(),
        std::fs::read(whole.join(TRAIN_LOG)).unwrap(),
        "the log is an output: byte-identical (throughput goes to train_timing.jsonl)"
    );
    assert_eq!(
        second.timing.len(),
        3,
        "timing covers the steps this process ran"
    );

    // A checkpoint of another run is not resumed from.
    let other = RunSettings {
        run_key: "another-run".into(),
        ..settings(&split, Some(2))
    };
    assert_eq!(train(&config, &inputs, &other).unwrap().resumed_from, 0);
}

#[test]
fn lora_training_changes_only_adapter_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 2);
    let config = config("max_steps = 3\ndata = 'cl'");
    let prepared = prepare(
        &config,
        &train_inputs(&data, DataFormat::Cl),
        3,
        &Device::Cpu,
    )
    .unwrap();
    let before: BTreeMap<String, Vec<f32>> = prepared
        .model
        .base_weights()
        .iter()
        .map(|(name, t)| (name.clone(), to_f32(t)))
        .collect();
    let trainable = prepared.model.trainable();
    assert!(trainable
        .iter()
        .all(|(name, _)| name.ends_with(".lora_A") || name.ends_with(".lora_B")));
    let b_before: Vec<Vec<f32>> = trainable
        .iter()
        .map(|(_, v)| to_f32(v.as_tensor()))
        .collect();

    let (outcome, model) = train_prepared(&config, prepared, &settings(tmp.path(), None)).unwrap();
    assert_eq!(outcome.log.len(), 3);
    for (name, tensor) in model.base_weights() {
        assert_eq!(to_f32(&tensor), before[&name], "{name} changed");
    }
    let changed = model
        .trainable()
        .iter()
        .zip(&b_before)
        .filter(|((_, v), old)| to_f32(v.as_tensor()) != **old)
        .count();
    assert!(
        changed > model.trainable().len() / 2,
        "only {changed} adapter matrices moved"
    );
    let adapter = tmp.path().join("adapter");
    assert!(adapter.join("adapter_config.json").is_file());
    assert!(!adapter.join("extra_weights.safetensors").exists());
}

#[test]
fn full_tuning_keeps_the_lm_head_and_vision_tower_frozen_unless_asked() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 2);
    let run = |extra: &str, out: &str| {
        let config = config(&format!("tune = 'full'\nmax_steps = 2\n{extra}"));
        let prepared = prepare(
            &config,
            &train_inputs(&data, DataFormat::Sft),
            3,
            &Device::Cpu,
        )
        .unwrap();
        let before: BTreeMap<String, Vec<f32>> = prepared
            .model
            .base_weights()
            .iter()
            .map(|(n, t)| (n.clone(), to_f32(t)))
            .collect();
        let (_, model) =
            train_prepared(&config, prepared, &settings(&tmp.path().join(out), None)).unwrap();
        model
            .base_weights()
            .into_iter()
            .map(|(name, t)| {
                let moved = to_f32(&t) != before[&name];
                (name, moved)
            })
            .collect::<BTreeMap<String, bool>>()
    };
    let moved = run("", "frozen");
    assert!(!moved["lm_head.weight"]);
    assert!(moved
        .iter()
        .filter(|(n, _)| n.starts_with("visual."))
        .all(|(_, m)| !m));
    assert!(moved["model.embed_tokens.weight"] && moved["model.layers.0.mlp.up_proj.weight"]);
    let moved = run("train_vision = true\ntrain_lm_head = true", "unfrozen");
    assert!(moved["lm_head.weight"]);
    assert!(moved["visual.patch_embed.proj.weight"] && moved["visual.blocks.0.attn.qkv.weight"]);
    let model = tmp.path().join("unfrozen/model");
    for file in ["config.json", "model.safetensors", "tokenizer.json"] {
        assert!(model.join(file).is_file(), "{file}");
    }
}

#[test]
fn packing_and_the_vision_cache_give_the_logits_of_the_plain_path_within_any_cache_budget() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 2);
    let logits = |extra: &str| {
        let config = config(extra);
        let mut prepared = prepare(
            &config,
            &train_inputs(&data, DataFormat::Sft),
            3,
            &Device::Cpu,
        )
        .unwrap();
        let sequences: Vec<_> = {
            let builder =
                umrank::models::text::prompt::PromptBuilder::reranker(prepared.model.tokenizer())
                    .unwrap();
            let encoder = Encoder::new(builder, 512, prepared.images.as_ref());
            prepared.groups[..4]
                .iter()
                .flat_map(|g| encoder.encode(g).unwrap())
                .collect()
        };
        assert!(sequences.iter().any(|s| !s.images.is_empty()));
        let layout = BatchLayout::of(&config);
        let mut out = Vec::new();
        // Twice, so that the second pass reads the cache the first one filled.
        for _ in 0..2 {
            let batch = batch_logits(
                &prepared.model,
                prepared.images.as_mut(),
                &sequences,
                3,
                layout,
                false,
                None,
            )
            .unwrap();
            assert_eq!(batch.z_yes.dims(), &[4, 3]);
            out.push((to_f32(&batch.z_yes), to_f32(&batch.z_no)));
        }
        assert_eq!(out[0], out[1]);
        (out.remove(0), prepared.images.map_or(0, |b| b.cached()))
    };
    let (plain, cached) = logits("packing = false\nvision_cache = false\nshared_prefix = false");
    assert_eq!(cached, 0);
    let (fast, all_cached) = logits("packing = true\nvision_cache = true\nshared_prefix = false");
    assert!(all_cached > 0);
    // A budget of a few tower outputs: the cache keeps dropping the least recently used and computing them again.
    let (bounded, some_cached) = logits(
        "packing = true\nvision_cache = true\nshared_prefix = false\nvision_cache_budget = '8KiB'",
    );
    assert!(
        0 < some_cached && some_cached < all_cached,
        "{some_cached} of {all_cached}"
    );
    for other in [&fast, &bounded] {
        for (a, b) in plain
            .0
            .iter()
            .zip(&other.0)
            .chain(plain.1.iter().zip(&other.1))
        {
            assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "{a} vs {b}");
        }
    }
}

#[test]
fn unusable_groups_become_rejects_with_their_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 2);
    let inputs = train_inputs(&data, DataFormat::Sft);
    let text_model = toml::from_str::<TrainConfig>(&format!(
        "init = 'tiny-text'\ntokenizer = '{}'\nmax_len = 512\n",
        tokenizer_dir().display()
    ))
    .unwrap();
    let prepared = prepare(&text_model, &inputs, 1, &Device::Cpu).unwrap();
    assert!(!prepared.groups.is_empty());
    assert!(prepared
        .groups
        .iter()
        .all(|g| g.image_ids().next().is_none()));
    assert!(!prepared.rejects.is_empty());
    assert!(prepared
        .rejects
        .iter()
        .all(|r| r.reason == "image_without_vision_model"
            && r.record_id.is_some()
            && r.line.is_some()));
    assert_eq!(
        prepared.records as usize,
        prepared.groups.len() + prepared.rejects.len()
    );

    let err = prepare(&config("negatives = 5"), &inputs, 1, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("short_of_negatives") && err.contains("training uses 5"),
        "{err}"
    );
    let err = prepare(&config("max_len = 40"), &inputs, 1, &Device::Cpu)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("too_long"), "{err}");
}

#[test]
fn every_objective_reports_both_losses_and_the_unified_weights() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 3);
    let inputs = train_inputs(&data, DataFormat::Cl);
    for (extra, check_weights) in [
        ("objective = 'cl'\ntemperature = 0.5", false),
        (
            "objective = 'unified'\nweight = 'const'\ndirection = 'sft'",
            true,
        ),
        (
            "objective = 'unified'\nweight = 'cl'\ndirection = 'sft'\ntau = 0.45",
            false,
        ),
    ] {
        let out = tmp.path().join(format!("run{}", extra.len()));
        let outcome = train(
            &config(&format!("max_steps = 2\ndata = 'cl'\n{extra}")),
            &inputs,
            &settings(&out, None),
        )
        .unwrap();
        for row in &outcome.log {
            assert!(
                row.sft_loss.is_finite() && row.cl_loss.is_finite() && row.loss.is_finite(),
                "{extra}: {row:?}"
            );
            assert!(row.grad_norm > 0.0 && row.lr > 0.0 && row.groups == 2);
            if check_weights {
                assert_eq!((row.w_pos, row.w_neg), (1.0, 1.0));
            }
        }
    }
}

#[test]
fn the_train_stage_runs_in_a_pipeline_and_is_then_up_to_date() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 2);
    let stage = |max_steps: u64| -> Box<dyn Stage> {
        Box::new(TrainStage::new(config(&format!("max_steps = {max_steps}\ndata = 'cl'"))).unwrap())
    };
    let run = |max_steps: u64| {
        Runner::new(
            data.workdir.clone(),
            7,
            vec![("train".to_string(), stage(max_steps))],
            upstream_dirs(&data),
        )
        .run()
        .unwrap()
        .remove(0)
    };
    let report = run(2);
    assert_eq!(report.outcome, StageOutcome::Ran);
    let dir = data.workdir.join("train");
    let log = read_log(&dir.join(TRAIN_LOG)).unwrap();
    assert_eq!(log.iter().map(|r| r.step).collect::<Vec<_>>(), [1, 2]);
    assert!(dir.join("adapter/adapter_model.safetensors").is_file());
    assert!(dir.join("manifest.json").is_file());
    assert_eq!(run(2).outcome, StageOutcome::UpToDate);
    assert_eq!(run(3).outcome, StageOutcome::Ran);
    assert_eq!(read_log(&dir.join(TRAIN_LOG)).unwrap().len(), 3);
}

#[test]
fn train_help_documents_every_key_of_the_train_table() {
    let help = umrank_ok(&["train", "--help"]);
    let keys = serde_json::to_value(config("")).unwrap();
    for key in keys.as_object().unwrap().keys() {
        let flag = match key.as_str() {
            // The standalone command reads the upstream stages from these directories.
            "shards" | "ingest" => format!("--{key} <DIR>"),
            "vision_cache" | "packing" | "shared_prefix" => {
                format!("--no-{}", key.replace('_', "-"))
            }
            other => format!("--{}", other.replace('_', "-")),
        };
        assert!(
            help.contains(&flag),
            "`umrank train --help` lacks {flag}:\n{help}"
        );
    }
    for documented in ["--out <DIR>", "--seed", "--device", "--force", "--resume"] {
        assert!(help.contains(documented), "{documented}");
    }
}
