//! The peft round trip (issue 18): a LoRA adapter trained from a pretrained directory (tiny Qwen2-VL, Qwen2.5-VL
//! and Qwen3 of tests/fixtures/models/pretrained) is released with merged weights, and transformers + peft load
//! it (`PeftModel.from_pretrained` on the base, and the merged weights with transformers alone) and score the
//! pairs `umrank score` scores to 1e-4 (f32). The scoring side is scripts/load_with_peft.py, run in the pinned
//! environment scripts/python-test-env.sh installs from PyPI on first use; without it the tests fail and say how
//! to get it.

use crate::common::cli::umrank_ok;
use crate::common::train_data::{small_demo_data, upstream_dirs};

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use umrank::models::qwen2_vl::PairScore;
use umrank::pipeline::{Runner, Stage};
use umrank::release::{ReleaseConfig, ReleaseStage};
use umrank::train::TrainStage;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// The test environment's python, installed once per test process (the script serialises concurrent installs).
fn python() -> &'static Path {
    static PYTHON: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let found = PYTHON.get_or_init(|| {
        let script = repo("scripts/python-test-env.sh");
        let out = Command::new(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            return Err(format!(
                "{} failed:\n{}",
                script.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
    });
    match found {
        Ok(path) => path,
        Err(why) => panic!(
            "the peft round trip needs Python 3 with torch, transformers and peft: {why}\nFix: run \
             scripts/python-test-env.sh with PyPI reachable (it installs scripts/python-test-requirements.txt \
             into ~/.cache/umrank/python-test-env, or UMRANK_PYENV)"
        ),
    }
}

/// Trains a LoRA adapter from the pretrained fixture `name` (three steps on the demo world's `task` groups)
/// and releases it with merged weights under `work`; returns (base, release) directories.
fn trained_release(name: &str, task: &str, work: &Path) -> (PathBuf, PathBuf) {
    let base = repo("tests/fixtures/models/pretrained").join(name);
    let data = small_demo_data(&work.join("data"), &[task], 2);
    let train = toml::from_str(&format!(
        "model = '{}'\nmax_len = 512\ngroups_per_batch = 64\nlr = 1e-2\ndecay = 'constant'\nlora_r = 4\n\
         lora_alpha = 8\nlora_dropout = 0\nmax_steps = 3\ncheckpoint_every = 0\nnegatives = 2",
        s(&base)
    ))
    .unwrap();
    let release = ReleaseConfig {
        merged: true,
        ..Default::default()
    };
    let stages: Vec<(String, Box<dyn Stage>)> = vec![
        ("train".into(), Box::new(TrainStage::new(train).unwrap())),
        (
            "release".into(),
            Box::new(ReleaseStage::new(release).unwrap()),
        ),
    ];
    let run = work.join("run");
    Runner::new(run.clone(), 7, stages, upstream_dirs(&data))
        .run()
        .unwrap();
    (base, run.join("release/model"))
}

/// A pairs file in `dir`: text pairs, and for a VL model pairs with a document image and with both images
/// (PNG fixtures whose sides are multiples of 28, so no resize happens on either side).
fn write_pairs(dir: &Path, vision: bool) -> PathBuf {
    let mut lines = vec![
        r#"{"instruction": "Find a matching caption.", "query_text": "a red square on grass", "doc_text": "a photo of a red square"}"#,
        r#"{"instruction": "Match.", "query_text": "two dogs", "doc_text": "a cat asleep on a sofa"}"#,
    ];
    if vision {
        for i in 0..3 {
            let name = format!("image_{i}.png");
            let from = repo("tests/fixtures/models/vlm").join(&name);
            std::fs::copy(from, dir.join(&name)).unwrap();
        }
        lines.push(r#"{"instruction": "Find a matching photo.", "query_text": "a red square", "doc_text": "a photo", "doc_image": "image_0.png"}"#);
        lines.push(r#"{"instruction": "Match.", "query_text": "what is this?", "query_image": "image_1.png", "doc_image": "image_2.png"}"#);
    }
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn parse(stdout: &str) -> Vec<PairScore> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

fn umrank_scores(model: &Path, adapter: Option<&Path>, pairs: &Path) -> Vec<PairScore> {
    let mut args = vec!["score", "--model", s(model), "--pairs", s(pairs)];
    if let Some(adapter) = adapter {
        args.extend(["--adapter", s(adapter)]);
    }
    parse(&umrank_ok(&args))
}

/// transformers + peft's scores of `pairs` through the release (or its merged weights alone).
fn peft_scores(base: &Path, release: &Path, merged: bool, pairs: &Path) -> Vec<PairScore> {
    let script = repo("scripts/load_with_peft.py");
    let mut command = Command::new(python());
    command
        .arg(&script)
        .arg(release)
        .args(["--base", s(base), "--pairs", s(pairs)]);
    if merged {
        command.arg("--merged");
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{} failed:\n{}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    parse(&String::from_utf8_lossy(&out.stdout))
}

fn assert_close(what: &str, got: &[PairScore], want: &[PairScore]) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        for (a, b) in [(g.z_yes, w.z_yes), (g.z_no, w.z_no), (g.p_yes, w.p_yes)] {
            assert!(
                (a - b).abs() <= 1e-4 * b.abs().max(1.0),
                "{what}, pair {i}: {g:?} vs umrank {w:?}"
            );
        }
    }
}

fn round_trip(name: &str, task: &str, vision: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let (base, release) = trained_release(name, task, tmp.path());
    let pairs = write_pairs(tmp.path(), vision);
    let ours = umrank_scores(&base, Some(&release), &pairs);
    let untrained = umrank_scores(&base, None, &pairs);
    assert!(
        ours.iter()
            .zip(&untrained)
            .any(|(a, b)| (a.z_yes - b.z_yes).abs() > 1e-3),
        "{name}: the adapter does not change the scores, so the round trip would prove nothing"
    );
    assert_close(
        &format!("{name}: umrank score of merged/"),
        &umrank_scores(&release.join("merged"), None, &pairs),
        &ours,
    );
    assert_close(
        &format!("{name}: PeftModel on the base"),
        &peft_scores(&base, &release, false, &pairs),
        &ours,
    );
    assert_close(
        &format!("{name}: merged weights in transformers"),
        &peft_scores(&base, &release, true, &pairs),
        &ours,
    );
}

#[test]
fn qwen2_vl_release_scores_the_same_in_transformers_and_peft() {
    round_trip("qwen2_vl", "world_t2i", true);
}

#[test]
fn qwen2_5_vl_release_scores_the_same_in_transformers_and_peft() {
    round_trip("qwen2_5_vl", "world_t2i", true);
}

#[test]
fn qwen3_release_scores_the_same_in_transformers_and_peft() {
    round_trip("qwen3", "world_t2t", false);
}
