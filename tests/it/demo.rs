//! The built-in demo, end to end at a smaller size: the pipeline `umrank demo` runs (printed by
//! `umrank demo --print-pipeline`) with the small world, one embedder epoch and a few training steps, run by the
//! binary through every stage from world to release; its final table names the first stage and both rerankers;
//! a second run is a no-op; the outputs do not depend on the directory; and over two seeds the rerankers run
//! again with the next seed while the report aggregates both.

use crate::common::cli::umrank;
use crate::common::outputs::{records_the_run_itself, tree};
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
        same_outputs(&a, &b),
        STAGES.len(),
        "every stage's fingerprint compared"
    );
}

/// Asserts that two runs' trees hold the same files with the same bytes, and the same fingerprint in every
/// manifest (the rest of a manifest records when the stage ran); returns how many fingerprints it compared.
fn same_outputs(
    a: &std::collections::BTreeMap<String, Vec<u8>>,
    b: &std::collections::BTreeMap<String, Vec<u8>>,
) -> usize {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "the same files"
    );
    let mut fingerprints = 0;
    for (name, bytes) in a {
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
        assert!(bytes == &b[name], "{name} differs between the two runs");
    }
    fingerprints
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

/// The per-seed stages' replicas over two seeds.
const SEED_TWO: [&str; 4] = ["train_sft@s2", "train_cl@s2", "eval_sft@s2", "eval_cl@s2"];

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn number(value: &serde_json::Value) -> f64 {
    value
        .as_f64()
        .unwrap_or_else(|| panic!("not a number: {value}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

/// Asserts that `spread` (mean, sd, min, max and values in `seeds.json`) summarises `values`, seed 1 first.
fn assert_spread(spread: &serde_json::Value, values: &[f64], what: &str) {
    let listed: Vec<f64> = spread["values"]
        .as_array()
        .unwrap_or_else(|| panic!("{what}: no values in {spread}"))
        .iter()
        .map(number)
        .collect();
    assert_eq!(listed, values, "{what}: the seeds' values, in seed order");
    let mean = values.iter().sum::<f64>() / values.len() as f64;
    let sd =
        (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (values.len() - 1) as f64).sqrt();
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    for (field, expected) in [("mean", mean), ("sd", sd), ("min", min), ("max", max)] {
        let got = number(&spread[field]);
        assert!(
            close(got, expected),
            "{what}: {field} {got}, expected {expected}"
        );
    }
}

#[test]
fn the_demo_over_two_seeds_keeps_seed_one_reports_over_both_and_writes_the_same_bytes_anywhere() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |workdir: &Path, seeds: &str| {
        let pipeline = tmp.path().join("demo.toml");
        std::fs::write(&pipeline, small_demo(workdir)).unwrap();
        let path = pipeline.to_str().unwrap();
        let (ok, out, err) = umrank(&[
            "--max-reject-fraction",
            "0.05",
            "run",
            path,
            "--seeds",
            seeds,
        ]);
        assert!(ok, "{out}\n{err}");
        out
    };
    let (one, two) = (tmp.path().join("one"), tmp.path().join("elsewhere/two"));
    run(&one, "1");
    let single = tree(&one);
    let out = run(&two, "2");
    for stage in STAGES.iter().chain(&SEED_TWO) {
        let row = summary_row(&out, stage);
        assert!(row.contains(" ran "), "{stage} did not run: {row}");
    }
    assert_eq!(
        summary(&out).lines().count(),
        2 + STAGES.len() + SEED_TWO.len(),
        "the data stages, the report and the release run once:\n{out}"
    );

    // Seed 1 is the single-seed run: the same bytes and fingerprints in every stage but the report.
    let seeds = tree(&two);
    for (name, bytes) in single
        .iter()
        .filter(|(name, _)| !name.starts_with("report/"))
    {
        if name.ends_with("manifest.json") {
            let fingerprint = |bytes: &[u8]| {
                serde_json::from_slice::<serde_json::Value>(bytes).unwrap()["fingerprint"].clone()
            };
            assert_eq!(fingerprint(bytes), fingerprint(&seeds[name]), "{name}");
        } else if !records_the_run_itself(name) {
            assert!(
                bytes == &seeds[name],
                "{name} differs from the single-seed run"
            );
        }
    }
    // Seed 2 trains with the next seed and evaluates its own model.
    for stage in SEED_TWO {
        assert_eq!(
            json(&two.join(stage).join("manifest.json"))["seed"],
            43,
            "{stage}"
        );
    }
    assert_eq!(
        json(&two.join("eval_sft@s2/metrics.json"))["model"],
        "train_sft@s2/model"
    );
    assert_ne!(
        seeds["train_sft@s2/model/model.safetensors"], seeds["train_sft/model/model.safetensors"],
        "seed 2 trained other weights"
    );

    // seeds.json: each reranker's figures over its two evals' metrics.json, and the pooled tests.
    let over = json(&two.join("report/seeds.json"));
    let rerankers = over["rerankers"].as_array().unwrap();
    let names: Vec<&str> = rerankers
        .iter()
        .map(|r| r["reranker"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["eval_sft", "eval_cl"]);
    // reranker -> metric -> the seeds' means over all queries of the reranked run.
    let mut reranked_means = std::collections::BTreeMap::new();
    for reranker in rerankers {
        let name = reranker["reranker"].as_str().unwrap();
        let evals = [name.to_owned(), format!("{name}@s2")];
        assert_eq!(reranker["runs"], serde_json::json!(evals));
        let per_seed: Vec<serde_json::Value> = evals
            .iter()
            .map(|eval| json(&two.join(eval).join("metrics.json")))
            .collect();
        let metrics = reranker["metrics"].as_array().unwrap();
        assert_eq!(metrics.len(), 6, "every metric");
        for metric in metrics.iter().map(|m| m.as_str().unwrap()) {
            let value = |seed: &serde_json::Value, run: &str, figure: &str| {
                number(&seed["runs"][seed[run].as_str().unwrap()][figure][metric])
            };
            let seed_values = |run: &str, figure: &str| -> Vec<f64> {
                per_seed.iter().map(|s| value(s, run, figure)).collect()
            };
            for (side, run) in [("reranked", "candidate"), ("first_stage", "baseline")] {
                for figure in ["mean", "macro_average"] {
                    assert_spread(
                        &reranker[side][figure][metric],
                        &seed_values(run, figure),
                        &format!("{name} {side} {figure} {metric}"),
                    );
                }
            }
            for task in reranker["reranked"]["per_task"].as_object().unwrap().keys() {
                let values: Vec<f64> = per_seed
                    .iter()
                    .map(|s| {
                        number(
                            &s["runs"][s["candidate"].as_str().unwrap()]["per_task"][task][metric],
                        )
                    })
                    .collect();
                assert_spread(
                    &reranker["reranked"]["per_task"][task][metric],
                    &values,
                    &format!("{name} {task} {metric}"),
                );
            }
            let (reranked, first_stage) = (
                seed_values("candidate", "macro_average"),
                seed_values("baseline", "macro_average"),
            );
            let above = reranked
                .iter()
                .zip(&first_stage)
                .filter(|(r, f)| r > f)
                .count();
            assert_eq!(reranker["seeds_above"][metric], above, "{name} {metric}");
            // The pooled test's Δ is the seeds' mean Δ over all queries.
            let (reranked, first_stage) = (
                seed_values("candidate", "mean"),
                seed_values("baseline", "mean"),
            );
            let delta = (reranked[0] - first_stage[0] + reranked[1] - first_stage[1]) / 2.0;
            let pooled = &reranker["pooled"][metric];
            assert!(
                close(number(&pooled["mean_difference"]), delta),
                "{name} {metric}: pooled Δ {pooled}, seeds' mean Δ {delta}"
            );
            let p = number(&pooled["p_value"]);
            assert!((0.0..=1.0).contains(&p), "{name} {metric}: p {p}");
            assert_eq!(pooled["permutations"], over["permutations"]);
            reranked_means.insert((name.to_owned(), metric.to_owned()), reranked);
        }
        let tasks = reranker["reranked"]["per_task"].as_object().unwrap();
        assert_eq!(tasks.len(), 5, "every task of the demo world");
    }
    let compared = &over["compared"][0];
    assert_eq!(compared["first"], "eval_sft");
    assert_eq!(compared["second"], "eval_cl");
    let sft = &reranked_means[&("eval_sft".to_owned(), "ndcg@10".to_owned())];
    let cl = &reranked_means[&("eval_cl".to_owned(), "ndcg@10".to_owned())];
    let delta = (cl[0] + cl[1] - sft[0] - sft[1]) / 2.0;
    let test = &compared["tests"]["ndcg@10"];
    assert!(
        close(number(&test["mean_difference"]), delta),
        "CL minus SFT over seeds: {test}"
    );

    // report.md's section, and the table printed last.
    let report = std::fs::read_to_string(two.join("report/report.md")).unwrap();
    assert!(report.contains("## Over 2 seeds"), "{report}");
    let printed = out
        .rfind("over seeds (macro averages over tasks")
        .unwrap_or_else(|| panic!("no table over seeds:\n{out}"));
    let table = &out[printed..out.rfind("pipeline demo\n").unwrap()];
    for row in [
        ["eval_sft", "ndcg@10"],
        ["eval_cl", "ndcg@10"],
        ["eval_sft", "vs"],
    ] {
        let found = table
            .lines()
            .any(|line| line.split_whitespace().take(2).eq(row));
        assert!(found, "the table over seeds lacks {row:?}:\n{table}");
    }

    // Two seeds in another directory, after its single-seed run: seed 1 is up to date, seed 2 runs, and every
    // output, seeds.json and the report included, has the bytes of the first directory's.
    let again = run(&one, "2");
    for stage in STAGES.iter().chain(&SEED_TWO) {
        let expected = match *stage {
            "report" => " ran ",
            stage if stage.contains('@') => " ran ",
            _ => "up to date",
        };
        assert!(
            summary_row(&again, stage).contains(expected),
            "{stage}:\n{again}"
        );
    }
    assert_eq!(
        same_outputs(&tree(&one), &seeds),
        STAGES.len() + SEED_TWO.len()
    );

    // Back to one seed: seed 1 is up to date, and the report is the single-seed one again.
    let again = run(&two, "1");
    for stage in STAGES {
        let row = summary_row(&again, stage);
        let expected = if stage == "report" {
            " ran "
        } else {
            "up to date"
        };
        assert!(row.contains(expected), "{stage}: {row}");
    }
    assert!(!two.join("report/seeds.json").exists());
    assert_eq!(
        std::fs::read(two.join("report/report.md")).unwrap(),
        single["report/report.md"]
    );
}
