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
