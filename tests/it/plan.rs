//! The memory plan (issue 17): `umrank run --plan` on the shipped paper pipeline with its model paths pointing at
//! directories that hold only the published config.json files (tests/fixtures/plan), so nothing but configs is
//! read; and `umrank run` refusing a stage whose plan does not fit, naming the setting that would make it fit.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::common::cli::{umrank, umrank_ok};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/plan")
}

/// The shipped paper pipeline with its models in tests/fixtures/plan, its workdir under `dir` and `train_extra`
/// added to its [train] table, written to `dir/name.toml`.
fn paper_pipeline(dir: &Path, name: &str, train_extra: &str) -> PathBuf {
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/mbeir-gme-qwen25vl.toml"),
    )
    .unwrap();
    let text = shipped
        .replace(
            "/models/Qwen2.5-VL-3B-Instruct",
            &fixtures()
                .join("Qwen2.5-VL-3B-Instruct")
                .display()
                .to_string(),
        )
        .replace(
            "/models/gme-Qwen2-VL-2B-Instruct",
            &fixtures()
                .join("gme-Qwen2-VL-2B-Instruct")
                .display()
                .to_string(),
        )
        .replace(
            "workdir = \"runs/mbeir-gme-qwen25vl\"",
            &format!("workdir = \"{}\"", dir.join("work").display()),
        )
        .replace("[train]\n", &format!("[train]\n{train_extra}\n"));
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).unwrap();
    path
}

fn plan_json(pipeline: &Path, device_memory: &str) -> Value {
    let out = umrank_ok(&[
        "run",
        &pipeline.display().to_string(),
        "--plan",
        "--json",
        "--device-memory",
        device_memory,
    ]);
    serde_json::from_str(&out).unwrap()
}

/// The bf16 weights of Qwen2.5-VL-3B-Instruct from its config: 36 layers of width 2048, a 151936-token tied
/// embedding, the 32-block vision tower; about 3.75 billion weights.
const QWEN25_VL_3B_BF16_BYTES: u64 = 7_500_000_000;

#[test]
fn the_paper_pipeline_is_planned_from_its_configs_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = paper_pipeline(tmp.path(), "shipped", "");
    let plans = plan_json(&pipeline, "80GiB");
    let train = &plans["stages"]["train"];
    let peak = train["peak_bytes"].as_u64().unwrap();
    let weights = train["parts"]["weights"].as_u64().unwrap();
    assert!(weights > QWEN25_VL_3B_BF16_BYTES * 9 / 10, "{train}");
    assert!(peak > weights, "{train}");
    assert_eq!(train["device_bytes"].as_u64(), Some(80 << 30));
    assert_eq!(train["fits"], Value::Bool(true), "{train}");
    for part in [
        "weights",
        "gradients",
        "optimizer",
        "activations",
        "attention_workspace",
        "vision_cache",
        "image_buffers",
    ] {
        assert!(train["parts"][part].is_u64(), "{part}: {train}");
    }
    let parts: u64 = train["parts"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(parts, peak);
    let by_setting = &train["activations_by_recompute"];
    assert_eq!(
        by_setting["layers"], train["parts"]["activations"],
        "{train}"
    );
    assert!(
        by_setting["none"].as_u64().unwrap() > 10 * by_setting["layers"].as_u64().unwrap(),
        "{by_setting}"
    );
    for stage in ["embed", "eval"] {
        let plan = &plans["stages"][stage];
        assert!(plan["peak_bytes"].as_u64().unwrap() > 0, "{stage}: {plan}");
        assert!(plan["fits"].is_boolean(), "{stage}: {plan}");
    }

    // Without recomputation every layer's activations are kept: far beyond the device, and the plan says the
    // setting that brings it back.
    let without = paper_pipeline(tmp.path(), "without", "recompute = \"none\"");
    let plans = plan_json(&without, "80GiB");
    let train = &plans["stages"]["train"];
    assert_eq!(train["fits"], Value::Bool(false), "{train}");
    assert!(train["peak_bytes"].as_u64().unwrap() > 1 << 40, "{train}");
    assert!(
        train["fix"]
            .as_str()
            .unwrap()
            .contains("recompute = \"layers\""),
        "{train}"
    );

    // On a smaller card the plan names another setting to lower.
    let plans = plan_json(&pipeline, "40GiB");
    let train = &plans["stages"]["train"];
    assert_eq!(train["fits"], Value::Bool(false), "{train}");
    assert!(train["fix"].as_str().unwrap().contains("lower "), "{train}");

    let unknown = umrank_ok(&["run", &pipeline.display().to_string(), "--plan"]);
    assert!(unknown.contains("[train]") && unknown.contains("unknown (give --device-memory)"));
}

#[test]
fn a_stage_whose_plan_does_not_fit_is_refused_with_the_setting_to_change() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = paper_pipeline(tmp.path(), "without", "recompute = \"none\"");
    let (ok, _, stderr) = umrank(&[
        "run",
        &pipeline.display().to_string(),
        "--from",
        "train",
        "--until",
        "train",
        "--device-memory",
        "80GiB",
    ]);
    assert!(!ok);
    assert!(
        stderr.contains("stage `train` would need about")
            && stderr.contains("recompute = \"layers\""),
        "{stderr}"
    );
}
