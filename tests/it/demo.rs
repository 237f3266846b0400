//! The built-in demo, end to end at a smaller size: the pipeline `umrank demo` runs (printed by
//! `umrank demo --print-pipeline`) with the small world, one embedder epoch and a few training steps, run by the
//! binary through every stage from world to release; its final table names the first stage and both rerankers;
//! a second run is a no-op.

use crate::common::cli::umrank;
use std::path::Path;

/// The built-in pipeline with the sizes turned down; every other key is the demo's.
fn small_demo(workdir: &Path) -> String {
    let (ok, pipeline, err) = umrank(&["demo", "--print-pipeline"]);
    assert!(ok, "{err}");
    let replace = |text: String, from: &str, to: &str| {
        assert!(text.contains(from), "the demo pipeline lost `{from}`");
        text.replace(from, to)
    };
    let mut text = replace(pipeline, "size = \"full\"", "size = \"small\"");
    text = replace(text, "epochs = 6", "epochs = 1");
    text = replace(text, "max_steps = 1200", "max_steps = 4");
    replace(
        text,
        "workdir = \"runs/demo\"",
        &format!("workdir = {:?}", workdir.display().to_string()),
    )
}

/// The run's closing stage table (stage outputs such as mine's statistics come before it).
fn summary(out: &str) -> &str {
    let start = out
        .rfind("pipeline demo\n")
        .unwrap_or_else(|| panic!("no stage table:\n{out}"));
    &out[start..]
}

/// The stage table's row of `stage`.
fn summary_row<'a>(out: &'a str, stage: &str) -> &'a str {
    summary(out)
        .lines()
        .find(|l| l.split_whitespace().next() == Some(stage))
        .unwrap_or_else(|| panic!("no summary row for {stage}:\n{out}"))
}

const STAGES: [&str; 12] = [
    "world",
    "ingest",
    "embedder",
    "embed",
    "mine",
    "shards",
    "train_sft",
    "train_cl",
    "eval_sft",
    "eval_cl",
    "report",
    "release",
];

#[test]
fn the_demo_runs_every_stage_prints_its_table_and_reruns_as_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    let pipeline = tmp.path().join("demo.toml");
    std::fs::write(&pipeline, small_demo(&tmp.path().join("runs"))).unwrap();
    let path = pipeline.to_str().unwrap();

    // The small world's pools are tiny: one of its 40 training queries has no usable negative, over the default
    // 1% reject limit that the full demo meets with none.
    let run = ["--max-reject-fraction", "0.05", "run", path];
    let (ok, out, err) = umrank(&run);
    assert!(ok, "the small demo failed:\n{out}\n{err}");
    for stage in STAGES {
        let row = summary_row(&out, stage);
        assert!(row.contains(" ran "), "{stage} did not run: {row}");
        assert!(
            tmp.path()
                .join("runs")
                .join(stage)
                .join("manifest.json")
                .is_file(),
            "{stage} has no manifest"
        );
    }
    for name in ["first stage", "eval_sft", "eval_cl"] {
        assert!(out.contains(name), "the final table lacks {name}:\n{out}");
    }
    let release = tmp.path().join("runs/release");
    assert!(
        std::fs::read_dir(&release).unwrap().count() > 2,
        "the release stage wrote nothing beyond its manifest"
    );

    let (ok, again, err) = umrank(&run);
    assert!(ok, "{err}");
    for stage in STAGES {
        let row = summary_row(&again, stage);
        assert!(row.contains("up to date"), "a rerun ran {stage}: {row}");
    }
}

/// Every file under `dir`, relative to it, with its bytes.
fn tree(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                let name = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.insert(name, std::fs::read(&path).unwrap());
            }
        }
    }
    files
}

/// Files that say when and where a run happened rather than what it computed: the manifests (their
/// fingerprints are compared instead) and the trainer's wall-clock throughput.
fn records_the_run_itself(name: &str) -> bool {
    let file = name.rsplit('/').next().unwrap_or(name);
    (file.starts_with("manifest") && file.ends_with(".json")) || file == "train_timing.jsonl"
}

#[test]
fn the_same_pipeline_in_two_directories_writes_the_same_bytes() {
    let tmp = tempfile::tempdir().unwrap();
    let run_in = |workdir: &Path| {
        let pipeline = tmp.path().join("demo.toml");
        std::fs::write(&pipeline, small_demo(workdir)).unwrap();
        let (ok, out, err) = umrank(&[
            "--max-reject-fraction",
            "0.05",
            "run",
            pipeline.to_str().unwrap(),
        ]);
        assert!(ok, "{out}\n{err}");
        tree(workdir)
    };
    let a = run_in(&tmp.path().join("a"));
    let b = run_in(&tmp.path().join("somewhere/else/b"));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same files"
    );
    let mut fingerprints = 0;
    for (name, bytes) in &a {
        if records_the_run_itself(name) {
            if name.ends_with("manifest.json") {
                let fingerprint = |bytes: &[u8]| {
                    serde_json::from_slice::<serde_json::Value>(bytes).unwrap()["fingerprint"]
                        .clone()
                };
                assert_eq!(fingerprint(bytes), fingerprint(&b[name]), "{name}");
                fingerprints += 1;
            }
            continue;
        }
        assert!(
            bytes == &b[name],
            "{name} differs between the two directories"
        );
    }
    assert_eq!(
        fingerprints,
        STAGES.len(),
        "every stage's fingerprint compared"
    );
}

#[test]
fn the_quick_demo_runs_in_any_directory_and_again_as_a_no_op() {
    let tmp = tempfile::tempdir().unwrap();
    let demo = || {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_umrank"))
            .args(["demo", "--quick"])
            .current_dir(tmp.path())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(out.status.success(), "{text}\n{err}");
        text
    };
    let first = demo();
    for stage in STAGES {
        assert!(summary_row(&first, stage).contains(" ran "), "{first}");
    }
    assert!(
        tmp.path()
            .join("runs/demo-quick/release/manifest.json")
            .is_file(),
        "outputs go under ./runs of the directory it runs in"
    );
    let again = demo();
    for stage in STAGES {
        assert!(summary_row(&again, stage).contains("up to date"), "{again}");
    }
}
