//! The eval stage on hand-built ingest and candidates datasets with the tiny Qwen2-VL fixture
//! (tests/fixtures/models/vlm): its reranked run holds the library's scores (zero-shot and with a PEFT adapter,
//! p_yes and z_yes), its TREC files and metrics equal what the evaluator computes from them, reruns are
//! byte-identical, bad pairs become rejects, bad settings fail early, and the report stage renders its output.
//! Also `umrank eval` on the pytrec_eval fixtures.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, Float32Builder, Int32Array, LargeBinaryArray, ListBuilder, RecordBatch,
    StringArray, StringBuilder, StructBuilder, UInt32Array, UInt32Builder, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Float64Type, UInt32Type};
use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use umrank::dataset::{Dataset, DatasetWriter};
use umrank::eval::stage::{EvalSummary, FIRST_STAGE, RERANKED};
use umrank::eval::{
    evaluate, read_run, EvalConfig, EvalStage, Interpolation, Metric, Qrels, Run, ScoreField,
};
use umrank::media::preprocess::ImageInput;
use umrank::models::adapters::lora::LoraConfig;
use umrank::models::qwen2_vl::Qwen2VlModel;
use umrank::models::reranker::{PairSide, Reranker};
use umrank::pipeline::{
    Input, Output, RejectPolicy, RunOptions, Runner, Stage, StageContext, StageError, StageOutcome,
};
use umrank::report::{ReportConfig, ReportStage};
use umrank::shard::Shard;

use crate::common::cli::umrank_ok;

fn model_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/vlm/qwen2_vl")
}

fn fixture_image(index: usize) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("tests/fixtures/models/vlm/image_{index}.png"));
    std::fs::read(path).unwrap()
}

/// `(qid, text, image, instruction, task, split)`.
type QueryRow = (
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    &'static str,
    &'static str,
);

const QUERIES: [QueryRow; 5] = [
    (
        "q1",
        Some("a red square"),
        None,
        Some("Find a matching photo."),
        "t2i",
        "test",
    ),
    ("q2", Some("a blue circle"), None, None, "t2i", "test"),
    (
        "q3",
        None,
        Some("img1"),
        Some("Find its caption."),
        "i2t",
        "test",
    ),
    ("q4", Some("green"), None, None, "t2i", "train"),
    // Judged but without a candidates list: it scores 0 in both runs.
    ("q5", Some("yellow"), None, None, "t2i", "test"),
];

/// `(did, text, image)`.
const CORPUS: [(&str, Option<&str>, Option<&str>); 5] = [
    ("d1", Some("a photo"), Some("img0")),
    ("d2", Some("a red square"), None),
    ("d3", None, Some("img2")),
    ("d4", Some("blue"), None),
    ("d5", Some("a caption"), None),
];

const QRELS: [(&str, &str, i32); 7] = [
    ("q1", "d2", 1),
    ("q2", "d4", 1),
    ("q2", "d1", 0),
    ("q3", "d5", 2),
    ("q3", "d3", 1),
    ("q4", "d1", 1),
    ("q5", "d3", 1),
];

/// `(qid, [(did, score)])` in rank order (score descending, ties by did descending).
fn candidate_lists(
    extra: Option<(&'static str, f32)>,
) -> Vec<(&'static str, Vec<(&'static str, f32)>)> {
    let mut q3 = vec![("d3", 0.7), ("d5", 0.6), ("d1", 0.2)];
    if let Some(entry) = extra {
        q3.push(entry);
    }
    vec![
        (
            "q1",
            vec![("d1", 0.9), ("d2", 0.8), ("d3", 0.7), ("d4", 0.6)],
        ),
        ("q2", vec![("d4", 0.5), ("d2", 0.5), ("d1", 0.3)]),
        ("q3", q3),
        ("q4", vec![("d1", 0.4), ("d2", 0.1)]),
    ]
}

fn strings<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.into_iter().collect::<StringArray>())
}

fn write(dir: &Path, kind: &str, columns: Vec<ArrayRef>) {
    let mut writer = DatasetWriter::create(dir, kind, Shard::ALL).unwrap();
    let batch = RecordBatch::try_new(writer.arrow_schema(), columns).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
}

/// An ingest stage directory and a candidates directory under `root`; `extra` adds an entry to q3's list.
fn write_inputs(root: &Path, extra: Option<(&'static str, f32)>) -> (PathBuf, PathBuf) {
    write_inputs_as(root, extra, "")
}

/// [`write_inputs`] with every qid prefixed by `prefix` (which decides the shards the queries hash to).
fn write_inputs_as(
    root: &Path,
    extra: Option<(&'static str, f32)>,
    prefix: &str,
) -> (PathBuf, PathBuf) {
    let qid = |id: &str| Some(format!("{prefix}{id}"));
    let ingest = root.join("ingest");
    let n = QUERIES.len();
    write(
        &ingest.join("queries"),
        "queries",
        vec![
            Arc::new(QUERIES.iter().map(|q| qid(q.0)).collect::<StringArray>()),
            strings(
                QUERIES
                    .iter()
                    .map(|q| Some(if q.2.is_some() { "image" } else { "text" })),
            ),
            strings(QUERIES.iter().map(|q| q.1)),
            strings(QUERIES.iter().map(|q| q.2)),
            strings(QUERIES.iter().map(|q| q.3)),
            Arc::new(Int32Array::from(vec![None::<i32>; n])),
            strings(QUERIES.iter().map(|q| Some(q.4))),
            strings(QUERIES.iter().map(|_| Some("fixture"))),
            strings(QUERIES.iter().map(|_| Some("fixture"))),
            strings(QUERIES.iter().map(|q| Some(q.5))),
            strings(QUERIES.iter().map(|_| Some("queries.jsonl"))),
            Arc::new(UInt64Array::from_iter_values(1..=n as u64)),
        ],
    );
    write(
        &ingest.join("corpus"),
        "corpus",
        vec![
            strings(CORPUS.iter().map(|d| Some(d.0))),
            strings(
                CORPUS
                    .iter()
                    .map(|d| Some(if d.1.is_some() { "text" } else { "image" })),
            ),
            strings(CORPUS.iter().map(|d| d.1)),
            strings(CORPUS.iter().map(|d| d.2)),
            strings(CORPUS.iter().map(|_| Some("fixture"))),
            strings(CORPUS.iter().map(|_| Some("fixture"))),
            strings(CORPUS.iter().map(|_| Some("corpus.jsonl"))),
            Arc::new(UInt64Array::from_iter_values(1..=CORPUS.len() as u64)),
        ],
    );
    write(
        &ingest.join("qrels"),
        "qrels",
        vec![
            Arc::new(QRELS.iter().map(|r| qid(r.0)).collect::<StringArray>()),
            strings(QRELS.iter().map(|r| Some(r.1))),
            Arc::new(Int32Array::from_iter_values(QRELS.iter().map(|r| r.2))),
        ],
    );
    let images: Vec<Vec<u8>> = (0..3).map(fixture_image).collect();
    let ids = ["img0", "img1", "img2"];
    write(
        &ingest.join("images"),
        "images",
        vec![
            strings(ids.iter().map(|id| Some(*id))),
            Arc::new(LargeBinaryArray::from_iter_values(images.iter())),
            Arc::new(UInt32Array::from(vec![32u32; 3])),
            Arc::new(UInt32Array::from(vec![32u32; 3])),
            strings(ids.iter().map(|_| Some("png"))),
        ],
    );
    let candidates = root.join("mine");
    let lists = candidate_lists(extra);
    let fields = vec![
        Field::new("did", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
        Field::new("rank", DataType::UInt32, false),
    ];
    let entries = StructBuilder::new(
        fields.clone(),
        vec![
            Box::new(StringBuilder::new()),
            Box::new(Float32Builder::new()),
            Box::new(UInt32Builder::new()),
        ],
    );
    let item = Field::new("item", DataType::Struct(fields.into()), false);
    let mut ranked = ListBuilder::new(entries).with_field(Arc::new(item));
    for (_, list) in &lists {
        let entries = ranked.values();
        for (rank, (did, score)) in list.iter().enumerate() {
            entries
                .field_builder::<StringBuilder>(0)
                .unwrap()
                .append_value(did);
            entries
                .field_builder::<Float32Builder>(1)
                .unwrap()
                .append_value(*score);
            entries
                .field_builder::<UInt32Builder>(2)
                .unwrap()
                .append_value(rank as u32 + 1);
            entries.append(true);
        }
        ranked.append(true);
    }
    write(
        &candidates.join("candidates"),
        "candidates",
        vec![
            Arc::new(lists.iter().map(|(q, _)| qid(q)).collect::<StringArray>()),
            Arc::new(ranked.finish()),
            strings(lists.iter().map(|_| Some("fixture-retriever"))),
            Arc::new(UInt32Array::from(vec![100u32; lists.len()])),
        ],
    );
    (ingest, candidates)
}

fn config(ingest: &Path, candidates: &Path) -> EvalConfig {
    let mut config = EvalConfig::new(model_dir());
    config.ingest_dir = Some(ingest.to_owned());
    config.candidates_dir = Some(candidates.to_owned());
    config.k = 3;
    config.batch = 2;
    config.splits = Some(vec!["test".into()]);
    config.permutations = 500;
    config
}

fn run_pipeline(workdir: &Path, stages: Vec<(String, Box<dyn Stage>)>, max_fraction: f64) {
    let options = RunOptions {
        policy: RejectPolicy {
            max_fraction,
            strict: false,
        },
        ..Default::default()
    };
    Runner::new(workdir.to_owned(), 7, stages, options)
        .run()
        .unwrap();
}

fn run_eval(workdir: &Path, config: EvalConfig) -> PathBuf {
    let stage = EvalStage::new(config).unwrap();
    run_pipeline(workdir, vec![("eval".into(), Box::new(stage))], 0.01);
    workdir.join("eval")
}

/// `(run name, qid) -> dids in rank order`.
type Rankings = BTreeMap<(String, String), Vec<String>>;

/// The run dataset as `run name -> run`, and the ranks it gives.
fn read_run_dataset(dir: &Path) -> (BTreeMap<String, Run>, Rankings) {
    let mut runs: BTreeMap<String, Run> = BTreeMap::new();
    let mut ranked = Rankings::new();
    // Sorted by run, qid and rank, so each list's dids arrive in rank order.
    for (name, qid, _, did, score) in read_run_rows(dir) {
        runs.entry(name.clone())
            .or_default()
            .entry(qid.clone())
            .or_default()
            .insert(did.clone(), f64::from_bits(score));
        ranked.entry((name, qid)).or_default().push(did);
    }
    (runs, ranked)
}

/// The library's scores of the evaluated pairs (test queries with a list, top 3), scored one pair at a time.
fn library_scores(
    adapter: Option<&Path>,
) -> BTreeMap<(String, String), umrank::models::qwen2_vl::PairScore> {
    let reranker = Reranker::load(&model_dir(), adapter, &Device::Cpu).unwrap();
    let image = |id: &str| {
        let index: usize = id.trim_start_matches("img").parse().unwrap();
        reranker
            .image(ImageInput::Encoded(&fixture_image(index)))
            .unwrap()
    };
    let mut scores = BTreeMap::new();
    for (qid, list) in candidate_lists(None) {
        let query = QUERIES.iter().find(|q| q.0 == qid).unwrap();
        if query.5 != "test" {
            continue;
        }
        let query_image = query.2.map(image);
        for (did, _) in list.into_iter().take(3) {
            let doc = CORPUS.iter().find(|d| d.0 == did).unwrap();
            let doc_image = doc.2.map(image);
            let pair = reranker
                .prompt(
                    query.3.unwrap_or(""),
                    PairSide {
                        text: query.1,
                        image: query_image.as_ref(),
                    },
                    PairSide {
                        text: doc.1,
                        image: doc_image.as_ref(),
                    },
                    3200,
                )
                .unwrap();
            let score = reranker.score(&[pair], 1).unwrap()[0];
            scores.insert((qid.to_owned(), did.to_owned()), score);
        }
    }
    scores
}

fn test_qrels() -> Qrels {
    let mut qrels = Qrels::new();
    for (qid, did, level) in QRELS {
        if QUERIES.iter().any(|q| q.0 == qid && q.5 == "test") {
            qrels
                .entry(qid.into())
                .or_default()
                .insert(did.into(), i64::from(level));
        }
    }
    qrels
}

fn assert_close(got: f64, want: f64, tolerance: f64, what: &str) {
    assert!((got - want).abs() <= tolerance, "{what}: {got} != {want}");
}

#[test]
fn reranked_run_holds_the_library_scores_and_the_metrics_equal_the_evaluator() {
    let root = tempfile::tempdir().unwrap();
    let (ingest, candidates) = write_inputs(root.path(), None);
    let dir = run_eval(&root.path().join("work"), config(&ingest, &candidates));

    let (runs, ranked) = read_run_dataset(&dir);
    // The first stage is the candidates lists of the test queries, cut to k = 3, in their order.
    for (qid, list) in candidate_lists(None) {
        let key = (FIRST_STAGE.to_owned(), qid.to_owned());
        if qid == "q4" {
            assert!(!ranked.contains_key(&key), "q4 is a train query");
            continue;
        }
        let want: Vec<String> = list.iter().take(3).map(|(d, _)| d.to_string()).collect();
        assert_eq!(ranked[&key], want);
    }
    // The reranked scores are the library's p_yes, ranked by them.
    let library = library_scores(None);
    let reranked = &runs[RERANKED];
    assert_eq!(
        reranked.values().map(BTreeMap::len).sum::<usize>(),
        library.len()
    );
    for ((qid, did), score) in &library {
        assert_close(
            reranked[qid][did],
            f64::from(score.p_yes),
            1e-5,
            &format!("{qid} {did}"),
        );
    }
    for (qid, scores) in reranked {
        let order: Vec<String> = umrank::eval::ranked_documents(scores)
            .into_iter()
            .map(|(d, _)| d.to_owned())
            .collect();
        assert_eq!(ranked[&(RERANKED.to_owned(), qid.clone())], order);
    }
    // The TREC files read back as the dataset's runs, and metrics.json is what the evaluator makes of them.
    let qrels = test_qrels();
    let summary = EvalSummary::read(&dir.join("metrics.json")).unwrap();
    assert_eq!(
        summary.comparison.queries, 4,
        "q1, q2, q3 and q5 (judged, no list)"
    );
    assert_eq!(summary.scored_pairs, 9);
    assert_eq!(summary.splits, ["test"]);
    for (name, file) in [
        (FIRST_STAGE, "first_stage.trec"),
        (RERANKED, "reranked.trec"),
    ] {
        let run = read_run(&dir.join(file)).unwrap();
        assert_eq!(run, runs[name], "{file}");
        let evaluation = evaluate(&run, &qrels, &Metric::DEFAULT).unwrap();
        let written = &summary.comparison.runs[name];
        for metric in Metric::DEFAULT {
            let key = metric.to_string();
            assert_close(written.mean[&key], evaluation.mean[&metric], 1e-12, &key);
            for (qid, value) in &evaluation.per_query[&metric] {
                assert_close(written.per_query[qid][&key], *value, 1e-12, qid);
            }
            // Macro average: t2i has q1, q2, q5; i2t has q3.
            let per_query = &evaluation.per_query[&metric];
            let t2i = (per_query["q1"] + per_query["q2"] + per_query["q5"]) / 3.0;
            let i2t = per_query["q3"];
            assert_close(written.per_task["t2i"][&key], t2i, 1e-12, "t2i");
            assert_close(written.per_task["i2t"][&key], i2t, 1e-12, "i2t");
            assert_close(
                written.macro_average[&key],
                (t2i + i2t) / 2.0,
                1e-12,
                "macro",
            );
        }
        assert_eq!(written.per_query["q5"]["ndcg@10"], 0.0);
    }
    let tests = &summary.comparison.significance;
    for scope in ["all", "t2i", "i2t"] {
        let p = tests[scope]["ndcg@10"].p_value;
        assert!((0.0..=1.0).contains(&p), "{scope}: {p}");
    }
    // The metrics dataset holds the per-query values with each query's task: a row per run, query and metric.
    let rows = read_metric_rows(&dir);
    assert_eq!(rows.len(), 2 * 4 * 6);
    let q3_hit = summary.comparison.runs[FIRST_STAGE].per_query["q3"]["hit@10"];
    assert_eq!(
        rows[&[FIRST_STAGE, "q3", "i2t", "hit@10"].map(String::from)],
        q3_hit.to_bits()
    );
    assert_eq!(
        f64::from_bits(rows[&[RERANKED, "q5", "t2i", "ndcg@10"].map(String::from)]),
        0.0
    );
}

/// The metrics dataset as `[run name, qid, task, metric] -> value bits`.
fn read_metric_rows(dir: &Path) -> BTreeMap<[String; 4], u64> {
    let mut rows = BTreeMap::new();
    for batch in Dataset::open(&dir.join("metrics"))
        .unwrap()
        .batches()
        .unwrap()
    {
        let batch = batch.unwrap();
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        let columns = ["run_name", "qid", "task", "metric"].map(text);
        let value = batch
            .column_by_name("value")
            .unwrap()
            .as_primitive::<Float64Type>()
            .clone();
        for i in 0..batch.num_rows() {
            let key = columns.clone().map(|c| c.value(i).to_owned());
            assert!(rows.insert(key, value.value(i).to_bits()).is_none());
        }
    }
    rows
}

/// The run dataset's rows, sorted: `(run name, qid, rank, did, score bits)`.
fn read_run_rows(dir: &Path) -> Vec<(String, String, u32, String, u64)> {
    let mut rows = Vec::new();
    for batch in Dataset::open(&dir.join("run")).unwrap().batches().unwrap() {
        let batch = batch.unwrap();
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        let (name, qid, did) = (text("run_name"), text("qid"), text("did"));
        let rank = batch
            .column_by_name("rank")
            .unwrap()
            .as_primitive::<UInt32Type>()
            .clone();
        let score = batch
            .column_by_name("score")
            .unwrap()
            .as_primitive::<Float64Type>()
            .clone();
        for i in 0..batch.num_rows() {
            rows.push((
                name.value(i).to_owned(),
                qid.value(i).to_owned(),
                rank.value(i),
                did.value(i).to_owned(),
                score.value(i).to_bits(),
            ));
        }
    }
    rows.sort();
    rows
}

/// The reject rows, sorted: `(reason, record id)`.
fn read_reject_rows(path: &Path) -> Vec<(String, String)> {
    let mut found = Vec::new();
    for batch in Dataset::open(path).unwrap().batches().unwrap() {
        let batch = batch.unwrap();
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        let (reason, id) = (text("reason"), text("record_id"));
        for i in 0..batch.num_rows() {
            found.push((reason.value(i).to_owned(), id.value(i).to_owned()));
        }
    }
    found.sort();
    found
}

/// Everything an eval stage directory holds that a job array must reproduce: the bytes of the TREC files and
/// `metrics.json`, and the rows (with their bits) of the datasets and the rejects.
#[derive(Debug, PartialEq)]
struct EvalOutputs {
    files: BTreeMap<&'static str, Vec<u8>>,
    runs: Vec<(String, String, u32, String, u64)>,
    metrics: BTreeMap<[String; 4], u64>,
    rejects: Vec<(String, String)>,
}

fn eval_outputs(dir: &Path) -> EvalOutputs {
    let files = ["first_stage.trec", "reranked.trec", "metrics.json"]
        .into_iter()
        .map(|name| (name, std::fs::read(dir.join(name)).unwrap()))
        .collect();
    let rejects = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            let name = path.file_name().unwrap().to_string_lossy();
            name.starts_with("rejects.") && name.ends_with(".parquet")
        })
        .flat_map(|path| read_reject_rows(&path))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    EvalOutputs {
        files,
        runs: read_run_rows(dir),
        metrics: read_metric_rows(dir),
        rejects,
    }
}

fn run_eval_as(
    workdir: &Path,
    config: &EvalConfig,
    shard: Option<Shard>,
) -> Vec<umrank::pipeline::StageReport> {
    let stage = EvalStage::new(config.clone()).unwrap();
    let options = RunOptions {
        shard,
        policy: RejectPolicy {
            max_fraction: 0.5,
            strict: false,
        },
        ..Default::default()
    };
    Runner::new(
        workdir.to_owned(),
        7,
        vec![("eval".into(), Box::new(stage))],
        options,
    )
    .run()
    .unwrap()
}

#[test]
fn a_job_array_in_2_and_3_parts_merges_into_exactly_the_unsharded_outputs() {
    let root = tempfile::tempdir().unwrap();
    // q3's list has a document missing from the corpus: a reject, and a pair left out of the reranked run. The
    // prefix spreads the four test queries over both shards of 2 and all three of 3.
    let prefix = "a";
    let (ingest, candidates) = write_inputs_as(root.path(), Some(("d9", 0.1)), prefix);
    let mut config = config(&ingest, &candidates);
    config.k = 4;
    let whole = root.path().join("whole");
    run_eval_as(&whole, &config, None);
    let want = eval_outputs(&whole.join("eval"));
    let want_summary = EvalSummary::read(&whole.join("eval/metrics.json")).unwrap();
    assert_eq!(want_summary.rejected_pairs, 1);
    assert_eq!(want.rejects.len(), 1);

    for parts in [2, 3] {
        let workdir = root.path().join(format!("parts-{parts}"));
        let dir = workdir.join("eval");
        for index in 0..parts {
            let shard = Shard::new(index, parts).unwrap();
            assert!(
                ["q1", "q2", "q3", "q5"]
                    .iter()
                    .any(|qid| shard.owns(&format!("{prefix}{qid}"))),
                "shard {shard} has test queries"
            );
            let reports = run_eval_as(&workdir, &config, Some(shard));
            assert_eq!(reports[0].outcome, StageOutcome::Ran);
        }
        for name in ["metrics.json", "first_stage.trec", "reranked.trec"] {
            assert!(!dir.join(name).exists(), "no shard writes {name}");
        }
        // The report reads the array's summary before any plain run has merged it.
        assert_eq!(
            EvalSummary::of_stage(&dir).unwrap().as_ref(),
            Some(&want_summary),
            "{parts} parts, merged in memory"
        );
        // The plain run after the array finds the stage complete and merges the parts.
        let reports = run_eval_as(&workdir, &config, None);
        assert_eq!(reports[0].outcome, StageOutcome::UpToDate);
        assert_eq!(reports[0].rejects, 1);
        assert!(
            eval_outputs(&dir) == want,
            "{parts} parts: the merge differs"
        );
        // Again: still up to date, the same files.
        let reports = run_eval_as(&workdir, &config, None);
        assert_eq!(reports[0].outcome, StageOutcome::UpToDate);
        assert!(
            eval_outputs(&dir) == want,
            "{parts} parts: the second merge differs"
        );
        // A shard killed before it finished (no manifest, a truncated part) is rerun alone, and the merge after
        // it gives the same files again.
        let last = Shard::new(parts - 1, parts).unwrap();
        std::fs::remove_file(dir.join(format!("manifest.{}.json", last.part_name()))).unwrap();
        std::fs::write(
            dir.join(format!("run/{}.parquet", last.part_name())),
            b"truncated",
        )
        .unwrap();
        let reports = run_eval_as(&workdir, &config, Some(last));
        assert_eq!(reports[0].outcome, StageOutcome::Ran);
        assert!(
            !dir.join("metrics.json").exists(),
            "the rerun shard removes the stale merge"
        );
        run_eval_as(&workdir, &config, None);
        assert!(
            eval_outputs(&dir) == want,
            "{parts} parts: the merge after a rerun differs"
        );
    }
}

/// A LoRA adapter for the fixture with every B filled with small random values (a fresh adapter's B is 0, which
/// would change nothing).
fn write_adapter(dir: &Path) {
    let mut model = Qwen2VlModel::from_model_dir(&model_dir(), DType::F32, &Device::Cpu).unwrap();
    let decoder = model.decoder_mut();
    let config = LoraConfig {
        r: 4,
        alpha: 8.0,
        ..LoraConfig::default()
    };
    decoder.add_lora(&config, 11).unwrap();
    for var in decoder.lora_vars() {
        let noise = Tensor::randn(0f32, 0.5, var.shape(), &Device::Cpu).unwrap();
        var.set(&noise).unwrap();
    }
    decoder.save_lora(dir, None).unwrap();
}

#[test]
fn z_yes_with_an_adapter_is_the_adapted_library_score() {
    let root = tempfile::tempdir().unwrap();
    let (ingest, candidates) = write_inputs(root.path(), None);
    let adapter = root.path().join("adapter");
    write_adapter(&adapter);
    let mut config = config(&ingest, &candidates);
    config.adapter = Some(adapter.clone());
    config.score = ScoreField::ZYes;
    let dir = run_eval(&root.path().join("work"), config);
    let (runs, _) = read_run_dataset(&dir);
    let adapted = library_scores(Some(&adapter));
    let zero_shot = library_scores(None);
    let mut changed = 0;
    for ((qid, did), score) in &adapted {
        let got = runs[RERANKED][qid][did];
        assert_close(got, f64::from(score.z_yes), 1e-4, &format!("{qid} {did}"));
        if (got - f64::from(zero_shot[&(qid.clone(), did.clone())].z_yes)).abs() > 1e-3 {
            changed += 1;
        }
    }
    assert!(changed > 0, "the adapter changes the scores");
    let summary = EvalSummary::read(&dir.join("metrics.json")).unwrap();
    assert_eq!(summary.adapter.as_deref(), Some(adapter.as_path()));
    assert_eq!(summary.score, ScoreField::ZYes);
}

#[test]
fn a_rerun_is_byte_identical_and_the_report_stage_renders_it() {
    let root = tempfile::tempdir().unwrap();
    let (ingest, candidates) = write_inputs(root.path(), None);
    let mut outputs = Vec::new();
    for work in ["a", "b"] {
        let workdir = root.path().join(work);
        let eval = EvalStage::new(config(&ingest, &candidates)).unwrap();
        let report = ReportStage::new(ReportConfig {
            stages: vec!["eval".into()],
            title: "fixture report".into(),
            permutations: 100,
        })
        .unwrap();
        run_pipeline(
            &workdir,
            vec![
                ("eval".into(), Box::new(eval)),
                ("report".into(), Box::new(report)),
            ],
            0.01,
        );
        let read = |path: &str| std::fs::read(workdir.join(path)).unwrap();
        outputs.push([
            read("eval/metrics.json"),
            read("eval/first_stage.trec"),
            read("eval/reranked.trec"),
            read("report/report.md"),
            read("report/report.html"),
        ]);
    }
    assert!(outputs[0] == outputs[1], "the two runs differ");
    let summary = EvalSummary::read(&root.path().join("a/eval/metrics.json")).unwrap();
    let markdown = String::from_utf8(outputs[0][3].clone()).unwrap();
    let reranked = summary.comparison.runs[RERANKED].mean["ndcg@10"];
    assert!(markdown.contains(&format!("{reranked:.4}")), "{markdown}");
    assert!(markdown.contains("Task i2t (1 queries)"), "{markdown}");
    let chart = root.path().join("a/report/plots/eval-ndcg_10.png");
    let image = image::open(&chart).unwrap().to_rgb8();
    assert!(image.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 1000);
}

#[test]
fn a_document_missing_from_the_corpus_is_a_reject_left_out_of_the_reranked_run() {
    let root = tempfile::tempdir().unwrap();
    let (ingest, candidates) = write_inputs(root.path(), Some(("d9", 0.1)));
    let mut config = config(&ingest, &candidates);
    config.k = 4;
    let stage = EvalStage::new(config).unwrap();
    let workdir = root.path().join("work");
    run_pipeline(&workdir, vec![("eval".into(), Box::new(stage))], 0.5);
    let dir = workdir.join("eval");
    let (runs, _) = read_run_dataset(&dir);
    assert!(runs[FIRST_STAGE]["q3"].contains_key("d9"));
    assert!(!runs[RERANKED]["q3"].contains_key("d9"));
    assert_eq!(runs[RERANKED]["q3"].len(), 3);
    let rejects = Dataset::open(&dir.join("rejects.parquet")).unwrap();
    let mut found = BTreeSet::new();
    for batch in rejects.batches().unwrap() {
        let batch = batch.unwrap();
        let text = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_string::<i32>()
                .clone()
        };
        let (reason, id) = (text("reason"), text("record_id"));
        for i in 0..batch.num_rows() {
            found.insert((reason.value(i).to_owned(), id.value(i).to_owned()));
        }
    }
    assert_eq!(
        found,
        BTreeSet::from([("unknown_document".to_owned(), "q3 d9".to_owned())])
    );
    let summary = EvalSummary::read(&dir.join("metrics.json")).unwrap();
    assert_eq!(summary.rejected_pairs, 1);
}

#[test]
fn an_interpolated_run_ranks_by_the_weighted_sum_of_retriever_and_reranker_logits() {
    let root = tempfile::tempdir().unwrap();
    let (ingest, candidates) = write_inputs(root.path(), None);
    let interpolation = Interpolation {
        weight: 0.25,
        scale: 20.0,
    };
    let mut mixed = config(&ingest, &candidates);
    mixed.interpolate = Some(interpolation);
    let dir = run_eval(&root.path().join("mixed"), mixed);

    let (runs, ranked) = read_run_dataset(&dir);
    let retriever: BTreeMap<(String, String), f32> = candidate_lists(None)
        .into_iter()
        .flat_map(|(qid, list)| {
            list.into_iter()
                .map(move |(did, score)| ((qid.to_owned(), did.to_owned()), score))
        })
        .collect();
    let library = library_scores(None);
    for ((qid, did), score) in &library {
        let logit = f64::from(score.z_yes) - f64::from(score.z_no);
        let want = 0.25 * 20.0 * f64::from(retriever[&(qid.clone(), did.clone())]) + 0.75 * logit;
        assert_close(
            runs[RERANKED][qid][did],
            want,
            1e-4,
            &format!("{qid} {did}"),
        );
    }
    let summary = EvalSummary::read(&dir.join("metrics.json")).unwrap();
    assert_eq!(summary.interpolate, Some(interpolation));
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(
        written["interpolate"]["weight"], 0.25,
        "metrics.json names it"
    );

    // All of the weight on the first stage gives back its order.
    let mut first_only = config(&ingest, &candidates);
    first_only.interpolate = Some(Interpolation {
        weight: 1.0,
        scale: 20.0,
    });
    let (_, first_ranked) = read_run_dataset(&run_eval(&root.path().join("first"), first_only));
    for ((name, qid), order) in &first_ranked {
        if name == RERANKED {
            assert_eq!(
                order,
                &ranked[&(FIRST_STAGE.to_owned(), qid.clone())],
                "{qid}"
            );
        }
    }
}

#[test]
fn bad_settings_fail_before_any_work() {
    let base = || EvalConfig::new(model_dir());
    let cases: Vec<(EvalConfig, &str)> = vec![
        (EvalConfig { k: 0, ..base() }, "`k`"),
        (EvalConfig { batch: 0, ..base() }, "`batch`"),
        (
            EvalConfig {
                splits: Some(Vec::new()),
                ..base()
            },
            "`splits`",
        ),
        (
            EvalConfig {
                from: Some("a".into()),
                ingest_dir: Some("b".into()),
                ..base()
            },
            "`from` and `ingest_dir`",
        ),
        (
            EvalConfig {
                adapter_from: Some("t".into()),
                adapter: Some("d".into()),
                ..base()
            },
            "`adapter_from` and `adapter`",
        ),
        (
            EvalConfig {
                model: Some(PathBuf::new()),
                ..base()
            },
            "`model`",
        ),
        (
            EvalConfig {
                model_from: Some("train".into()),
                ..base()
            },
            "`model` and `model_from`",
        ),
        (
            EvalConfig {
                model: None,
                ..base()
            },
            "`model_from`",
        ),
        (
            EvalConfig {
                interpolate: Some(Interpolation {
                    weight: 1.5,
                    scale: 20.0,
                }),
                ..base()
            },
            "`interpolate.weight`",
        ),
        (
            EvalConfig {
                interpolate: Some(Interpolation {
                    weight: 0.5,
                    scale: 0.0,
                }),
                ..base()
            },
            "`interpolate.scale`",
        ),
    ];
    for (config, needle) in cases {
        let error = EvalStage::new(config).err().expect("an error").to_string();
        assert!(error.contains(needle), "{error}");
    }
    let stage = EvalStage::new(base()).unwrap();
    assert_eq!(stage.config().unwrap()["from"], "ingest");
    assert_eq!(stage.config().unwrap()["candidates_from"], "mine");
    assert_eq!(stage.config().unwrap()["k"], 100);
    assert!(ReportStage::new(ReportConfig {
        stages: Vec::new(),
        title: "t".into(),
        permutations: 10
    })
    .is_err());
}

/// A stand-in for a train stage: its outputs are the fixture model as `model/` (full fine-tuning) and an
/// adapter as `adapter/` (LoRA), where the eval stage looks for them.
struct FakeTrain;

impl Stage for FakeTrain {
    fn name(&self) -> &'static str {
        "fake_train"
    }

    fn config(&self) -> Result<Value, serde_json::Error> {
        Ok(Value::Null)
    }

    fn inputs(&self) -> Vec<Input> {
        Vec::new()
    }

    fn outputs(&self) -> Vec<Output> {
        vec![Output::tree("model"), Output::tree("adapter")]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let model = ctx.output_path("model");
        std::fs::create_dir_all(&model)?;
        for entry in std::fs::read_dir(model_dir())? {
            let entry = entry?;
            std::fs::copy(entry.path(), model.join(entry.file_name()))?;
        }
        write_adapter(&ctx.output_path("adapter"));
        Ok(())
    }
}

#[test]
fn model_from_and_adapter_from_read_a_train_stage_outputs() {
    let root = tempfile::tempdir().unwrap();
    let (ingest, candidates) = write_inputs(root.path(), None);
    let full = EvalConfig {
        model: None,
        model_from: Some("train".into()),
        ..config(&ingest, &candidates)
    };
    let lora = EvalConfig {
        adapter_from: Some("train".into()),
        ..config(&ingest, &candidates)
    };
    let workdir = root.path().join("work");
    run_pipeline(
        &workdir,
        vec![
            ("train".into(), Box::new(FakeTrain)),
            ("eval_full".into(), Box::new(EvalStage::new(full).unwrap())),
            ("eval_lora".into(), Box::new(EvalStage::new(lora).unwrap())),
        ],
        0.01,
    );
    let adapter = workdir.join("train/adapter");
    for (stage, scores) in [
        ("eval_full", library_scores(None)),
        ("eval_lora", library_scores(Some(&adapter))),
    ] {
        let dir = workdir.join(stage);
        let (runs, _) = read_run_dataset(&dir);
        for ((qid, did), score) in &scores {
            let got = runs[RERANKED][qid][did];
            assert_close(
                got,
                f64::from(score.p_yes),
                1e-5,
                &format!("{stage} {qid} {did}"),
            );
        }
        let summary = EvalSummary::read(&dir.join("metrics.json")).unwrap();
        let want_model = if stage == "eval_full" {
            PathBuf::from("train/model")
        } else {
            model_dir()
        };
        assert_eq!(
            summary.model, want_model,
            "a model the run wrote is named from the run directory; another as configured"
        );
    }
}

fn eval_fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/eval")
        .join(name)
}

fn umrank_json(args: &[&str]) -> Value {
    serde_json::from_str(&umrank_ok(args)).unwrap()
}

#[test]
fn eval_cli_json_equals_pytrec_eval_on_every_committed_case() {
    let text = std::fs::read_to_string(eval_fixture("reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    for case in reference["cases"].as_array().unwrap() {
        let run = eval_fixture(case["run"].as_str().unwrap());
        let qrels = eval_fixture(case["qrels"].as_str().unwrap());
        let got = umrank_json(&[
            "eval",
            "--run",
            run.to_str().unwrap(),
            "--qrels",
            qrels.to_str().unwrap(),
            "--json",
        ]);
        let want = case["mean"].as_object().unwrap();
        for key in [
            "ndcg@10",
            "recall@10",
            "recall@100",
            "map@100",
            "hit@10",
            "mrr@10",
        ] {
            let (g, w) = (got[key].as_f64().unwrap(), want[key].as_f64().unwrap());
            assert!((g - w).abs() <= 1e-9, "{}: {key}: {g} != {w}", case["name"]);
        }
        assert_eq!(got.as_object().unwrap().len(), 6, "{got}");
    }
}

#[test]
fn eval_cli_baseline_adds_the_randomisation_test() {
    let (a, b, qrels) = (
        eval_fixture("run_random_a.txt"),
        eval_fixture("run_random_b.txt"),
        eval_fixture("qrels_random.txt"),
    );
    let got = umrank_json(&[
        "eval",
        "--run",
        b.to_str().unwrap(),
        "--baseline",
        a.to_str().unwrap(),
        "--qrels",
        qrels.to_str().unwrap(),
        "--metrics",
        "ndcg@10",
        "--permutations",
        "2000",
        "--json",
    ]);
    let qrels = umrank::eval::read_qrels(&qrels).unwrap();
    let metric = [Metric::Ndcg(10)];
    let first = evaluate(&read_run(&a).unwrap(), &qrels, &metric).unwrap();
    let second = evaluate(&read_run(&b).unwrap(), &qrels, &metric).unwrap();
    let (x, y) =
        umrank::eval::paired_values(&first.per_query[&metric[0]], &second.per_query[&metric[0]])
            .unwrap();
    let test = umrank::eval::randomisation_test(&y, &x, 2000, 0).unwrap();
    assert_close(
        got["ndcg@10"].as_f64().unwrap(),
        second.mean[&metric[0]],
        1e-12,
        "run",
    );
    assert_close(
        got["baseline"]["ndcg@10"].as_f64().unwrap(),
        first.mean[&metric[0]],
        1e-12,
        "baseline",
    );
    assert_eq!(got["p_value"]["ndcg@10"].as_f64().unwrap(), test.p_value);
    assert_close(
        got["mean_difference"]["ndcg@10"].as_f64().unwrap(),
        test.mean_difference,
        1e-12,
        "difference",
    );
}

/// `min_pixels` / `max_pixels` of an eval table bound the reranker's images in place of the model's processor:
/// an image becomes fewer patches within a lower `max_pixels`, and the bounds of the model stay otherwise.
#[test]
fn the_rerankers_images_are_bounded_by_the_configured_pixels() {
    let mut reranker = Reranker::load(&model_dir(), None, &Device::Cpu).unwrap();
    let bytes = fixture_image(1);
    let patches = |r: &Reranker| r.image(ImageInput::Encoded(&bytes)).unwrap().grid.patches();
    let (default, params) = (
        patches(&reranker),
        reranker.image_processor().unwrap().params().clone(),
    );
    reranker.set_pixel_bounds((None, None)).unwrap();
    assert_eq!(patches(&reranker), default);
    reranker
        .set_pixel_bounds((None, Some(params.min_pixels)))
        .unwrap();
    assert_eq!(
        reranker.image_processor().unwrap().params().max_pixels,
        params.min_pixels
    );
    assert!(
        patches(&reranker) < default,
        "{default} patches at the model's bounds"
    );
}
