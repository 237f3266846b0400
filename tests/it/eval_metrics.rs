//! The evaluation library against pytrec_eval and numpy references (tests/fixtures/eval/gen_eval.py).

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::{Path, PathBuf};

use serde_json::Value;
use umrank::eval::{
    evaluate, macro_average, paired_values, parse_qrels, parse_run, randomisation_test, read_qrels,
    read_run, write_run, EvalError, Metric, Qrels, Run,
};

const TOLERANCE: f64 = 1e-9;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval")
        .join(name)
}

fn reference() -> Value {
    let text = std::fs::read_to_string(fixture("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn case<'a>(reference: &'a Value, name: &str) -> &'a Value {
    reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|case| case["name"] == name)
        .unwrap()
}

fn reference_values(case: &Value, metric: Metric) -> BTreeMap<String, f64> {
    let values = case["per_query"][metric.to_string()].as_object().unwrap();
    values
        .iter()
        .map(|(query, value)| (query.clone(), value.as_f64().unwrap()))
        .collect()
}

fn load(case: &Value) -> (Run, Qrels) {
    let run = read_run(&fixture(case["run"].as_str().unwrap())).unwrap();
    let qrels = read_qrels(&fixture(case["qrels"].as_str().unwrap())).unwrap();
    (run, qrels)
}

#[test]
fn metrics_equal_pytrec_eval_per_query_and_mean_on_every_case() {
    let reference = reference();
    let cases = reference["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let (run, qrels) = load(case);
        let evaluation = evaluate(&run, &qrels, &Metric::DEFAULT).unwrap();
        for metric in Metric::DEFAULT {
            let expected = reference_values(case, metric);
            let actual = &evaluation.per_query[&metric];
            assert_eq!(
                actual.keys().collect::<Vec<_>>(),
                expected.keys().collect::<Vec<_>>(),
                "{metric}"
            );
            for (query, value) in &expected {
                let got = actual[query];
                assert!(
                    (got - value).abs() <= TOLERANCE,
                    "{} {metric} {query}: {got} vs {value}",
                    case["name"]
                );
            }
            let mean = case["mean"][metric.to_string()].as_f64().unwrap();
            let got = evaluation.mean[&metric];
            assert!(
                (got - mean).abs() <= TOLERANCE,
                "{} mean {metric}: {got} vs {mean}",
                case["name"]
            );
        }
    }
}

#[test]
fn handmade_case_exercises_ties_cuts_and_missing_queries() {
    let reference = reference();
    let (run, qrels) = load(case(&reference, "handmade"));
    let evaluation = evaluate(&run, &qrels, &Metric::DEFAULT).unwrap();
    let values = |metric| evaluation.per_query[&metric].clone();
    // Queries without a relevant document (q3) or without judgements (q6) are not evaluated; q2 (no run) is 0.
    assert_eq!(
        values(Metric::Ndcg(10)).keys().collect::<Vec<_>>(),
        ["q1", "q2", "q4", "q5", "q7"]
    );
    assert_eq!(values(Metric::Hit(10))["q2"], 0.0);
    // Ties broken by id descending put q1's first relevant document at rank 4 and q5's best one first.
    assert_eq!(values(Metric::Mrr(10))["q1"], 0.25);
    assert_eq!(values(Metric::Ndcg(10))["q5"], 1.0);
    // q4's relevant documents at ranks 101 and 115 fall outside recall@100; q7's only one is at rank 11.
    assert_eq!(values(Metric::Recall(100))["q4"], 0.6);
    assert_eq!(values(Metric::Mrr(10))["q7"], 0.0);
    assert_eq!(values(Metric::Recall(100))["q7"], 1.0);
}

#[test]
fn metric_names_parse_and_print() {
    for metric in Metric::DEFAULT {
        assert_eq!(metric.to_string().parse::<Metric>().unwrap(), metric);
    }
    assert_eq!("map@1000".parse::<Metric>().unwrap(), Metric::Map(1000));
    for bad in ["ndcg", "ndcg@0", "ndcg@x", "precision@10", "@10", "hit@-1"] {
        assert!(
            matches!(bad.parse::<Metric>(), Err(EvalError::UnknownMetric(_))),
            "{bad}"
        );
    }
}

#[test]
fn written_run_reads_back_with_the_same_metrics_and_ordered_ranks() {
    let reference = reference();
    let (run, qrels) = load(case(&reference, "random_a"));
    let mut bytes = Vec::new();
    write_run(&mut bytes, &run, "umrank").unwrap();
    let text = String::from_utf8(bytes).unwrap();
    let reread = parse_run(Cursor::new(&text), "written").unwrap();
    assert_eq!(reread, run);
    assert_eq!(
        evaluate(&reread, &qrels, &Metric::DEFAULT).unwrap(),
        evaluate(&run, &qrels, &Metric::DEFAULT).unwrap()
    );
    let mut previous: Option<(String, usize, f64)> = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        let (query, rank, score) = (
            fields[0].to_owned(),
            fields[3].parse().unwrap(),
            fields[4].parse().unwrap(),
        );
        match &previous {
            Some((last_query, last_rank, last_score)) if *last_query == query => {
                assert_eq!(rank, last_rank + 1);
                assert!(score <= *last_score);
            }
            _ => assert_eq!(rank, 1),
        }
        previous = Some((query, rank, score));
    }
}

#[test]
fn write_run_rejects_fields_that_would_not_read_back() {
    let run: Run = BTreeMap::from([("q 1".to_owned(), BTreeMap::from([("d".to_owned(), 1.0)]))]);
    assert!(matches!(
        write_run(Vec::new(), &run, "t"),
        Err(EvalError::InvalidField { .. })
    ));
    let run: Run = BTreeMap::from([("q".to_owned(), BTreeMap::from([("d".to_owned(), f64::NAN)]))]);
    assert!(matches!(
        write_run(Vec::new(), &run, "t"),
        Err(EvalError::NonFiniteScore { .. })
    ));
    assert!(matches!(
        write_run(Vec::new(), &Run::new(), ""),
        Err(EvalError::InvalidField { .. })
    ));
}

#[test]
fn malformed_lines_are_errors_naming_file_and_line() {
    let qrels_cases = [
        ("q 0 d\n", "qrels.txt:1:"),
        ("q 0 d 1\n\nq 0 e high\n", "qrels.txt:3:"),
        ("q 0 d 1\nq 0 d 2\n", "qrels.txt:2:"),
    ];
    for (text, location) in qrels_cases {
        let error = parse_qrels(Cursor::new(text), "qrels.txt")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with(location), "{error}");
    }
    let run_cases = [
        ("q Q0 d 1 0.5\n", "run.txt:1:"),
        ("q Q0 d 1 0.5 t extra\n", "run.txt:1:"),
        ("q Q0 d 1 0.5 t\nq Q0 e one 0.5 t\n", "run.txt:2:"),
        ("q Q0 d 1 high t\n", "run.txt:1:"),
        ("q Q0 d 1 0.5 t\nq Q0 e 2 NaN t\n", "run.txt:2:"),
        ("q Q0 d 1 inf t\n", "run.txt:1:"),
        ("q Q0 d 1 0.5 t\nq Q0 d 2 0.4 t\n", "run.txt:2:"),
    ];
    for (text, location) in run_cases {
        let error = parse_run(Cursor::new(text), "run.txt")
            .unwrap_err()
            .to_string();
        assert!(error.starts_with(location), "{error}");
    }
    let missing = read_run(Path::new("/nonexistent/run.txt"))
        .unwrap_err()
        .to_string();
    assert!(missing.starts_with("/nonexistent/run.txt:"), "{missing}");
}

#[test]
fn mbeir_task_column_is_ignored() {
    let qrels = parse_qrels(Cursor::new("q1 0 d1 1 3\nq1 0 d2 0 3\n"), "mbeir").unwrap();
    assert_eq!(
        qrels["q1"],
        BTreeMap::from([("d1".to_owned(), 1), ("d2".to_owned(), 0)])
    );
}

#[test]
fn a_byte_order_mark_is_not_part_of_the_first_query_id() {
    let qrels = parse_qrels(Cursor::new("\u{feff}q1 0 d1 1\nq2 0 d2 1\n"), "qrels").unwrap();
    assert_eq!(qrels.keys().collect::<Vec<_>>(), ["q1", "q2"]);
    let run = parse_run(Cursor::new("\u{feff}q1 Q0 d1 1 0.5 r\n"), "run").unwrap();
    assert_eq!(run.keys().collect::<Vec<_>>(), ["q1"]);
}

#[test]
fn evaluate_rejects_what_it_cannot_average() {
    let qrels = parse_qrels(Cursor::new("q 0 d 1\n"), "q").unwrap();
    let run: Run = BTreeMap::from([("q".to_owned(), BTreeMap::from([("d".to_owned(), f64::NAN)]))]);
    assert!(matches!(
        evaluate(&run, &qrels, &Metric::DEFAULT),
        Err(EvalError::NonFiniteScore { .. })
    ));
    assert!(matches!(
        evaluate(&Run::new(), &qrels, &[Metric::Hit(0)]),
        Err(EvalError::ZeroCutoff(_))
    ));
    let unjudged = parse_qrels(Cursor::new("q 0 d 0\n"), "q").unwrap();
    assert!(matches!(
        evaluate(&Run::new(), &unjudged, &Metric::DEFAULT),
        Err(EvalError::NoRelevantQueries)
    ));
}

#[test]
fn macro_average_is_the_mean_of_group_means() {
    let reference = reference();
    let values = reference_values(case(&reference, "handmade"), Metric::Ndcg(10));
    let group_of: BTreeMap<String, String> = [
        ("q1", "a"),
        ("q2", "b"),
        ("q4", "b"),
        ("q5", "b"),
        ("q7", "a"),
        ("q3", "c"),
    ]
    .into_iter()
    .map(|(query, group)| (query.to_owned(), group.to_owned()))
    .collect();
    let average = macro_average(&values, &group_of).unwrap();
    let a = (values["q1"] + values["q7"]) / 2.0;
    let b = (values["q2"] + values["q4"] + values["q5"]) / 3.0;
    assert_eq!(average.per_group.keys().collect::<Vec<_>>(), ["a", "b"]);
    assert!((average.per_group["a"] - a).abs() <= TOLERANCE);
    assert!((average.per_group["b"] - b).abs() <= TOLERANCE);
    assert!((average.overall - (a + b) / 2.0).abs() <= TOLERANCE);
    let mut incomplete = group_of.clone();
    incomplete.remove("q4");
    assert!(
        matches!(macro_average(&values, &incomplete), Err(EvalError::MissingGroup(query)) if query == "q4")
    );
}

/// The two-sided p-value over all 2^n sign flips, with the library's rounding slack.
fn exact_p(differences: &[f64]) -> f64 {
    let n = differences.len();
    let observed = differences.iter().sum::<f64>().abs();
    let slack = 4.0 * n as f64 * f64::EPSILON * differences.iter().map(|d| d.abs()).sum::<f64>();
    let extreme = (0u64..1 << n)
        .filter(|code| {
            let sum: f64 = differences
                .iter()
                .enumerate()
                .map(|(bit, &d)| if code >> bit & 1 == 1 { -d } else { d })
                .sum();
            sum.abs() >= observed - slack
        })
        .count();
    extreme as f64 / (1u64 << n) as f64
}

#[test]
fn randomisation_test_matches_exact_enumeration_within_sampling_error() {
    let reference = reference();
    let (a_case, b_case) = (case(&reference, "random_a"), case(&reference, "random_b"));
    let permutations = 20_000;
    for test in reference["significance"].as_array().unwrap() {
        let metric: Metric = test["metric"].as_str().unwrap().parse().unwrap();
        let (a, b) = paired_values(
            &reference_values(a_case, metric),
            &reference_values(b_case, metric),
        )
        .unwrap();
        let differences: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x - y).collect();
        let exact = test["exact_p"].as_f64().unwrap();
        assert_eq!(
            exact_p(&differences),
            exact,
            "{metric}: enumeration disagrees with numpy"
        );
        let result = randomisation_test(&a, &b, permutations, 7).unwrap();
        let sigma = (exact * (1.0 - exact) / permutations as f64).sqrt();
        assert!(
            (result.p_value - exact).abs() <= 4.5 * sigma + 1.0 / permutations as f64,
            "{metric}: p {} vs exact {exact}",
            result.p_value
        );
        let mean_difference = differences.iter().sum::<f64>() / differences.len() as f64;
        assert!((result.mean_difference - mean_difference).abs() <= TOLERANCE);
    }
}

#[test]
fn randomisation_test_is_deterministic_and_checks_its_input() {
    let a = [0.9, 0.4, 0.7, 0.3, 1.0, 0.5, 0.6];
    let b = [0.5, 0.4, 0.2, 0.35, 0.7, 0.45, 0.1];
    let first = randomisation_test(&a, &b, 5_000, 11).unwrap();
    assert_eq!(randomisation_test(&a, &b, 5_000, 11).unwrap(), first);
    assert_eq!(randomisation_test(&a, &a, 100, 11).unwrap().p_value, 1.0);
    assert!(matches!(
        randomisation_test(&a, &b[..3], 100, 1),
        Err(EvalError::Pairing(_))
    ));
    assert!(matches!(
        randomisation_test(&[], &[], 100, 1),
        Err(EvalError::Pairing(_))
    ));
    assert!(matches!(
        randomisation_test(&a, &b, 0, 1),
        Err(EvalError::Pairing(_))
    ));
    let left = BTreeMap::from([("q1".to_owned(), 1.0)]);
    let right = BTreeMap::from([("q2".to_owned(), 1.0)]);
    assert!(matches!(
        paired_values(&left, &right),
        Err(EvalError::Pairing(_))
    ));
}

#[test]
fn a_run_without_hits_scores_positive_zero() {
    let qrels = parse_qrels(Cursor::new("q1 0 d1 1\nq2 0 d2 1\n"), "qrels.txt").unwrap();
    let run = parse_run(
        Cursor::new("q1 Q0 d9 1 0.5 run\nq2 Q0 d8 1 0.5 run\n"),
        "run.txt",
    )
    .unwrap();
    let evaluation = evaluate(&run, &qrels, &Metric::DEFAULT).unwrap();
    for metric in Metric::DEFAULT {
        let mean = evaluation.mean[&metric];
        assert!(mean == 0.0 && mean.is_sign_positive(), "{metric}: {mean}");
        for value in evaluation.per_query[&metric].values() {
            assert!(value.is_sign_positive(), "{metric}: {value}");
        }
    }
}
