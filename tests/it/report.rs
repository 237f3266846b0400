//! Charts and reports render into files a person can open.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};
use serde_json::json;
use umrank::charts::{bar_chart, line_chart, Bars, PlotError, Series, CHART_SIZE};
use umrank::eval::stage::{EvalSummary, FIRST_STAGE, RERANKED};
use umrank::eval::{
    compare, paired_values, randomisation_test, read_qrels, read_run, Comparison, Metric, Run,
    ScoreField, Significance, TestSettings,
};
use umrank::report::document::p_value_text;
use umrank::report::{write_report, ReportError, ReportSettings};

use crate::common::cli::umrank_ok;

fn decode(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
        .to_rgb8()
}

fn count_colour(image: &RgbImage, colour: [u8; 3]) -> usize {
    image.pixels().filter(|p| **p == Rgb(colour)).count()
}

fn non_white(image: &RgbImage) -> usize {
    image
        .pixels()
        .filter(|p| **p != Rgb([255, 255, 255]))
        .count()
}

#[test]
fn line_chart_writes_a_png_with_each_series_in_its_colour() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loss.png");
    let loss = Series::new(
        "loss",
        (0..50)
            .map(|s| (s as f64, 1.0 / (1.0 + s as f64)))
            .collect(),
    );
    let lr = Series::new("lr", (0..50).map(|s| (s as f64, 0.01 * s as f64)).collect());
    line_chart(&path, "Training loss", "step", "loss", &[loss, lr]).unwrap();
    let image = decode(&path);
    assert_eq!(image.dimensions(), CHART_SIZE);
    // The first two series colours (Okabe-Ito blue and vermilion) are drawn, and so is text and axes.
    assert!(count_colour(&image, [0, 114, 178]) > 100);
    assert!(count_colour(&image, [213, 94, 0]) > 100);
    assert!(count_colour(&image, [0, 0, 0]) > 500);
    assert!(non_white(&image) > 2000);
}

#[test]
fn line_chart_is_byte_identical_when_drawn_twice_and_skips_non_finite_points() {
    let dir = tempfile::tempdir().unwrap();
    let series = [Series::new(
        "w+",
        vec![
            (0.0, 0.5),
            (1.0, f64::NAN),
            (2.0, 0.25),
            (f64::INFINITY, 1.0),
        ],
    )];
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    line_chart(&a, "W+", "step", "weight", &series).unwrap();
    line_chart(&b, "W+", "step", "weight", &series).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(count_colour(&decode(&a), [0, 114, 178]) > 50);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
}

#[test]
fn a_chart_without_finite_points_is_an_error_not_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.png");
    let nothing = [Series::new("loss", vec![(0.0, f64::NAN)])];
    let error = line_chart(&path, "t", "x", "y", &nothing).unwrap_err();
    assert!(matches!(error, PlotError::Empty { .. }), "{error}");
    let error = line_chart(&path, "t", "x", "y", &[]).unwrap_err();
    assert!(matches!(error, PlotError::Empty { .. }), "{error}");
    assert!(!path.exists());
}

#[test]
fn bar_chart_draws_one_bar_per_category_and_series() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ndcg.png");
    let tasks = vec!["text->image".to_owned(), "image->text".to_owned()];
    let bars = [
        Bars::new("first stage", vec![0.4, 0.5]),
        Bars::new("reranked", vec![0.6, 0.7]),
    ];
    bar_chart(&path, "nDCG@10 per task", "ndcg@10", &tasks, &bars).unwrap();
    let image = decode(&path);
    assert_eq!(image.dimensions(), CHART_SIZE);
    let (first, reranked) = (
        count_colour(&image, [0, 114, 178]),
        count_colour(&image, [213, 94, 0]),
    );
    assert!(first > 2000 && reranked > 2000, "{first} {reranked}");
    // Bar area grows with the value: the reranked bars (0.6 + 0.7) outweigh the first-stage ones (0.4 + 0.5).
    assert!(reranked > first);
}

#[test]
fn bar_chart_rejects_a_series_of_the_wrong_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.png");
    let error = bar_chart(
        &path,
        "t",
        "y",
        &["a".to_owned()],
        &[Bars::new("x", vec![0.1, 0.2])],
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            PlotError::Shape {
                values: 2,
                categories: 1,
                ..
            }
        ),
        "{error}"
    );
}

fn eval_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval")
        .join(name)
}

/// The comparison of two runs of the random fixture, queries split into two tasks by the parity of their number.
fn comparison(first_stage: &Run, reranked: &Run) -> Comparison {
    let qrels = read_qrels(&eval_fixture("qrels_random.txt")).unwrap();
    let task_of = qrels
        .keys()
        .map(|qid| {
            let odd = qid.trim_start_matches('r').parse::<u32>().unwrap() % 2 == 1;
            (qid.clone(), if odd { "odd" } else { "even" }.to_owned())
        })
        .collect();
    compare(
        (FIRST_STAGE, first_stage),
        (RERANKED, reranked),
        &qrels,
        &task_of,
        &Metric::DEFAULT,
        TestSettings {
            permutations: 300,
            seed: 1,
        },
    )
    .unwrap()
}

fn write_json(path: &Path, value: &impl serde::Serialize) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, serde_json::to_string_pretty(value).unwrap()).unwrap();
}

/// A work directory as a pipeline leaves it: two eval stages (the second reranker reverses the first's order),
/// a mine stage's stats.json, a train stage's log (with a null value, as serde_json writes NaN), a train stage
/// without a log and a stage with nothing to report.
fn workdir(root: &Path) -> (Comparison, Comparison) {
    let a = read_run(&eval_fixture("run_random_a.txt")).unwrap();
    let b = read_run(&eval_fixture("run_random_b.txt")).unwrap();
    let reversed: Run = b
        .iter()
        .map(|(q, docs)| {
            (
                q.clone(),
                docs.iter().map(|(d, s)| (d.clone(), -s)).collect(),
            )
        })
        .collect();
    let sft = comparison(&a, &b);
    let cl = comparison(&a, &reversed);
    for (stage, comparison, score) in [
        ("eval_sft", &sft, ScoreField::PYes),
        ("eval_cl", &cl, ScoreField::ZYes),
    ] {
        let summary = EvalSummary {
            model: "models/base".into(),
            adapter: Some(format!("work/train_{stage}/adapter").into()),
            score,
            interpolate: None,
            k: 100,
            splits: vec!["test".into()],
            retrievers: vec!["clip-fixture".into()],
            scored_pairs: 1234,
            rejected_pairs: 0,
            comparison: comparison.clone(),
        };
        write_json(&root.join(stage).join("metrics.json"), &summary);
    }
    let summary = json!({"count": 40, "min": 0.1, "p5": 0.15, "p25": 0.3, "p50": 0.4125,
        "p75": 0.5, "p95": 0.7, "max": 0.8, "mean": 0.41});
    write_json(
        &root.join("mine/stats.json"),
        &json!({"retriever": "clip-fixture", "shard": "0/1", "candidate_queries": 25, "k": 100,
            "mining_k": 50, "queries": 30, "groups": 31, "positives": summary,
            "hard_negatives": {"count": 240, "min": 0.05, "p5": 0.1, "p25": 0.2, "p50": 0.25, "p75": 0.3,
                "p95": 0.35, "max": 0.4, "mean": 0.25},
            "random_negatives": null,
            "dropped": {"rank_window": 3, "max_score": 0, "relative_margin": 7, "absolute_margin": 0},
            "mean_gap": 0.1875}),
    );
    let log: Vec<String> = (1..=20)
        .map(|step| {
            let s = f64::from(step);
            json!({"step": step, "epoch": s / 20.0, "loss": 2.0 / s, "sft_loss": 1.5 / s,
                "cl_loss": if step == 7 { serde_json::Value::Null } else { json!(3.0 / s) },
                "lr": 1e-4 * s / 20.0, "grad_norm": 1.0 + s / 10.0, "w_pos": 0.5 + s / 100.0,
                "w_neg": 0.5 - s / 100.0, "masked": 0, "groups": 4})
            .to_string()
        })
        .collect();
    std::fs::create_dir_all(root.join("train_sft")).unwrap();
    std::fs::write(
        root.join("train_sft/train_log.jsonl"),
        log.join("\n") + "\n",
    )
    .unwrap();
    std::fs::create_dir_all(root.join("train_cl/adapter")).unwrap();
    std::fs::create_dir_all(root.join("world")).unwrap();
    (sft, cl)
}

fn metric(comparison: &Comparison, run: &str, scope: &str, name: &str) -> f64 {
    let metrics = &comparison.runs[run];
    match scope {
        "mean" => metrics.mean[name],
        "macro" => metrics.macro_average[name],
        task => metrics.per_task[task][name],
    }
}

#[test]
fn report_command_writes_markdown_html_and_charts_holding_the_metrics() {
    let root = tempfile::tempdir().unwrap();
    let (sft, cl) = workdir(root.path());
    umrank_ok(&[
        "report",
        root.path().to_str().unwrap(),
        "--permutations",
        "400",
    ]);
    let out = root.path().join("report");
    let markdown = std::fs::read_to_string(out.join("report.md")).unwrap();
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    // Markdown escapes markup characters (`_`, `*`); the checks read it unescaped.
    let plain = markdown.replace('\\', "");
    for text in [&plain, &html] {
        for comparison in [&sft, &cl] {
            for scope in ["mean", "macro", "odd", "even"] {
                for name in ["ndcg@10", "recall@100", "mrr@10"] {
                    for run in [FIRST_STAGE, RERANKED] {
                        let value = format!("{:.4}", metric(comparison, run, scope, name));
                        assert!(text.contains(&value), "{scope} {name} {run}: {value}");
                    }
                    let delta = metric(comparison, RERANKED, scope, name)
                        - metric(comparison, FIRST_STAGE, scope, name);
                    assert!(
                        text.contains(&format!("{delta:+.4}")),
                        "{scope} {name} delta"
                    );
                }
            }
            for test in comparison.significance["all"].values() {
                let p = p_value_text(test);
                let (markdown_cell, html_cell) =
                    (format!("| {p}"), format!("<td>{}", p.replace('<', "&lt;")));
                assert!(
                    text.contains(&markdown_cell) || text.contains(&html_cell),
                    "p {p}"
                );
            }
        }
        // The mining statistics and the training section.
        assert!(text.contains("mining_k") && text.contains("0.4125") && text.contains("0.1875"));
        assert!(text.contains("dropped.relative_margin"));
        assert!(text.contains("20 steps logged"));
    }
    // The test between the two rerankers (in name order, as there are no manifests), with the report's default
    // seed (0).
    let values = |c: &Comparison| -> BTreeMap<String, f64> {
        c.runs[RERANKED]
            .per_query
            .iter()
            .map(|(q, v)| (q.clone(), v["ndcg@10"]))
            .collect()
    };
    let (x, y) = paired_values(&values(&cl), &values(&sft)).unwrap();
    let test = randomisation_test(&y, &x, 400, 0).unwrap();
    let section = plain
        .split("### eval_cl vs eval_sft")
        .nth(1)
        .expect("the reranker test section");
    let row = section
        .lines()
        .find(|line| line.starts_with("| ndcg@10 |"))
        .unwrap();
    let p = p_value_text(&Significance {
        mean_difference: test.mean_difference,
        p_value: test.p_value,
        permutations: test.permutations,
    });
    let delta = format!("{:+.4}", test.mean_difference);
    assert!(row.contains(&format!("| {delta} | {p}")), "{row}");
    // Every chart exists, decodes, and has drawn content; the HTML embeds each one.
    let charts = [
        "eval_sft-ndcg_10.png",
        "eval_cl-ndcg_10.png",
        "mine-scores.png",
        "train_sft-loss.png",
        "train_sft-weights.png",
        "train_sft-lr.png",
        "train_sft-grad_norm.png",
    ];
    for chart in charts {
        let image = decode(&out.join("plots").join(chart));
        assert_eq!(image.dimensions(), CHART_SIZE);
        assert!(non_white(&image) > 2000, "{chart}");
        assert!(markdown.contains(&format!("](plots/{chart})")), "{chart}");
    }
    let names = std::fs::read_dir(out.join("plots")).unwrap().count();
    assert_eq!(names, charts.len());
    assert_eq!(
        html.matches("src=\"data:image/png;base64,").count(),
        charts.len()
    );
    // W+ and W- are two series: both colours are drawn.
    let weights = decode(&out.join("plots/train_sft-weights.png"));
    assert!(count_colour(&weights, [0, 114, 178]) > 100);
    assert!(count_colour(&weights, [213, 94, 0]) > 100);
}

#[test]
fn a_report_of_nothing_or_of_a_broken_log_is_an_error_naming_the_problem() {
    let root = tempfile::tempdir().unwrap();
    let settings = ReportSettings {
        title: "t".into(),
        permutations: 10,
        seed: 0,
    };
    let empty = root.path().join("world");
    std::fs::create_dir_all(&empty).unwrap();
    let out = root.path().join("out");
    let error = write_report(&[("world".into(), empty.clone())], &settings, &out).unwrap_err();
    assert!(matches!(error, ReportError::Nothing(_)), "{error}");
    std::fs::write(
        empty.join("train_log.jsonl"),
        "{\"step\": 1}\n{\"step\": \n",
    )
    .unwrap();
    let error = write_report(&[("world".into(), empty)], &settings, &out)
        .unwrap_err()
        .to_string();
    assert!(error.contains("train_log.jsonl:2"), "{error}");
}
