//! Ingest: exact counts on the demo world, one reject row per kind of bad input with everything else kept,
//! byte-identical reruns, and sharded output equal to unsharded.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::{Array, StringArray, UInt64Array};
use umrank::dataset::Dataset;
use umrank::digest::sha256_file;
use umrank::ingest::{Format, IngestConfig};
use umrank::pipeline::{RejectPolicy, RunOptions, StageReport};
use umrank::shard::Shard;

use crate::common::datasets::{
    column, empty_mbeir_tree, ingest_alone, qrels, small_world, solid_png, strings, ID_COLUMNS,
};

/// The ingest stage alone under runner seed 11.
fn ingest(
    config: IngestConfig,
    out: &Path,
    shard: Option<Shard>,
    policy: RejectPolicy,
) -> Result<StageReport, String> {
    let options = RunOptions {
        shard,
        policy,
        ..Default::default()
    };
    ingest_alone(config, out, 11, options)
}

fn rows(path: &Path) -> u64 {
    Dataset::open(path).unwrap().num_rows().unwrap()
}

#[test]
fn the_demo_world_ingests_with_exact_counts() {
    let dir = tempfile::tempdir().unwrap();
    let (root, summary) = small_world(dir.path(), 5);
    let out = dir.path().join("ingest");
    let report = ingest(
        IngestConfig::new(Format::Mbeir, root),
        &out,
        None,
        RejectPolicy::default(),
    )
    .unwrap();
    assert_eq!(report.rejects, 0);

    let pool: usize = summary.tasks.iter().map(|t| t.pool).sum();
    let queries: usize = summary
        .tasks
        .iter()
        .map(|t| t.queries.train + t.queries.val + t.queries.test)
        .sum();
    let qrels: usize = summary
        .tasks
        .iter()
        .map(|t| t.qrels.train + t.qrels.val + t.qrels.test)
        .sum();
    assert_eq!((pool, queries, qrels, summary.images), (300, 75, 75, 120));
    assert_eq!(rows(&out.join("corpus")), pool as u64);
    assert_eq!(rows(&out.join("queries")), queries as u64);
    let relevance: Vec<i32> = crate::common::datasets::qrels(&out.join("qrels"))
        .into_iter()
        .map(|(_, _, r)| r)
        .collect();
    assert_eq!(
        relevance.iter().filter(|r| **r > 0).count(),
        qrels,
        "one judgement per positive"
    );
    assert_eq!(
        relevance.iter().filter(|r| **r == 0).count(),
        3 * queries,
        "each world query lists three near misses in neg_cand_list: judged not relevant"
    );
    assert_eq!(
        rows(&out.join("images")),
        summary.images as u64,
        "each image file once"
    );

    let image_ids: BTreeSet<String> = strings(&out.join("images"), "image_id")
        .into_iter()
        .collect();
    assert_eq!(image_ids.len(), summary.images);
    let qids = strings(&out.join("queries"), "qid");
    let splits = strings(&out.join("queries"), "split");
    assert_eq!(splits.iter().filter(|s| *s == "test").count(), 20);
    let instructions = strings(&out.join("queries"), "instruction");
    assert_eq!(
        instructions.len(),
        qids.len(),
        "every world query gets an instruction"
    );
    let tasks: BTreeSet<String> = strings(&out.join("queries"), "task").into_iter().collect();
    let expected: BTreeSet<String> = [
        "text->image",
        "text->text",
        "image->text",
        "image->image",
        "image,text->image",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(tasks, expected);

    let split_only = dir.path().join("test-only");
    let config = IngestConfig {
        split: Some("test".into()),
        ..IngestConfig::new(Format::Mbeir, dir.path().join("world"))
    };
    ingest(config, &split_only, None, RejectPolicy::default()).unwrap();
    assert_eq!(rows(&split_only.join("queries")), 20);
    let judged = crate::common::datasets::qrels(&split_only.join("qrels"));
    assert_eq!(judged.iter().filter(|(_, _, r)| *r > 0).count(), 20);
    assert_eq!(
        rows(&split_only.join("corpus")),
        300,
        "the pool is shared by the splits"
    );
}

/// A small M-BEIR tree with one instance of every kind of bad input.
fn broken_corpus(dir: &Path) -> PathBuf {
    let root = empty_mbeir_tree(dir);
    let png = |w: u32, h: u32, shade: u8| solid_png(w, h, [shade, 10, 200]);
    fs::write(root.join("images/a.png"), png(8, 8, 1)).unwrap();
    fs::write(root.join("images/b.png"), png(8, 8, 2)).unwrap();
    fs::write(root.join("images/a-copy.png"), png(8, 8, 1)).unwrap();
    fs::write(root.join("images/big.png"), png(40, 40, 3)).unwrap();
    let full = png(8, 8, 4);
    fs::write(root.join("images/truncated.png"), &full[..full.len() / 2]).unwrap();
    fs::write(root.join("images/notes.png"), b"these are not pixels").unwrap();
    fs::write(dir.join("outside.png"), png(8, 8, 5)).unwrap();

    let pool = [
        r#"{"did": "1:1", "txt": "a red circle", "img_path": null, "modality": "text", "src_content": null}"#,
        r#"{"did": "1:2", "txt": null, "img_path": "images/a.png", "modality": "image", "src_content": null}"#,
        r#"{"did": "1:3", "txt": "blue", "img_path": "images/b.png", "modality": "image,text", "src_content": null}"#,
        r#"{"did": "1:4", "txt": null, "img_path": "images/a-copy.png", "modality": "image", "src_content": null}"#,
        r#"{"did": "1:5", "txt": null, "img_path": "images/gone.png", "modality": "image", "src_content": null}"#,
        r#"{"did": "1:6", "txt": null, "img_path": "images/truncated.png", "modality": "image", "src_content": null}"#,
        r#"{"did": "1:7", "txt": null, "img_path": "images/notes.png", "modality": "image", "src_content": null}"#,
        r#"{"did": "1:8", "txt": null, "img_path": "images/big.png", "modality": "image", "src_content": null}"#,
        r#"{"did": "1:9", "txt": null, "img_path": "../outside.png", "modality": "image", "src_content": null}"#,
        r#"{"did": "1:10", "txt": "oops", "img_path": null, "modality": "text""#,
        r#"{"did": "1:1", "txt": "a second 1:1", "img_path": null, "modality": "text", "src_content": null}"#,
        r#"{"did": "1:11", "txt": "a video", "img_path": null, "modality": "video", "src_content": null}"#,
        r#"{"did": "1:12", "txt": "a green square", "img_path": null, "modality": "text", "src_content": null}"#,
    ];
    fs::write(
        root.join("cand_pool/local/mbeir_toy_cand_pool.jsonl"),
        pool.join("\n") + "\n",
    )
    .unwrap();
    let queries = [
        r#"{"qid": "1:100", "query_txt": "red circle", "query_img_path": null, "query_modality": "text", "query_src_content": null, "pos_cand_list": ["1:1"], "neg_cand_list": [], "task_id": 1}"#,
        r#"{"qid": "1:101", "query_txt": null, "query_img_path": "images/b.png", "query_modality": "image", "query_src_content": null, "pos_cand_list": ["1:2"], "neg_cand_list": [], "task_id": 4}"#,
        r#"{"qid": "1:102", "query_txt": null, "query_img_path": null, "query_modality": "text", "query_src_content": null, "pos_cand_list": ["1:3"], "neg_cand_list": [], "task_id": 1}"#,
        r#"{"qid": "1:103", "query_txt": "green square", "query_img_path": null, "query_modality": "text", "query_src_content": null, "pos_cand_list": ["1:12"], "neg_cand_list": [], "task_id": 1}"#,
    ];
    fs::write(
        root.join("query/test/mbeir_toy_test.jsonl"),
        queries.join("\n") + "\n",
    )
    .unwrap();
    let qrels = [
        "1:100 0 1:1 1 1",
        "1:101 0 1:2 1 4",
        "1:103 0 1:12 1 1",
        "1:103 0 1:404 1 1",
    ];
    fs::write(
        root.join("qrels/test/mbeir_toy_test_qrels.txt"),
        qrels.join("\n") + "\n",
    )
    .unwrap();
    fs::write(
        root.join("instructions/query_instructions.tsv"),
        "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1\tprompt_2\n\
         text\ttext\ttoy\t1\tFind the matching caption.\tRetrieve the text that matches.\n",
    )
    .unwrap();
    root
}

fn tree_hashes(dir: &Path) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                pending.push(e.path());
            } else {
                out.push((e.path(), sha256_file(&e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn every_kind_of_bad_input_becomes_its_own_reject_and_the_rest_is_ingested() {
    let dir = tempfile::tempdir().unwrap();
    let root = broken_corpus(dir.path());
    let before = tree_hashes(dir.path());
    let out = dir.path().join("ingest");
    let config = IngestConfig {
        max_pixels: 1000,
        ..IngestConfig::new(Format::Mbeir, root.clone())
    };
    let lenient = RejectPolicy {
        max_fraction: 1.0,
        strict: false,
    };
    let report = ingest(config.clone(), &out, None, lenient).unwrap();

    let rejects = Dataset::open(&out.join("rejects.parquet")).unwrap();
    let batch = rejects.batches().unwrap().next().unwrap().unwrap();
    let col = |name: &str| {
        batch
            .column_by_name(name)
            .unwrap()
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap()
            .clone()
    };
    let (source, reason, id) = (col("source"), col("reason"), col("record_id"));
    let line = batch
        .column_by_name("line")
        .unwrap()
        .as_any()
        .downcast_ref::<UInt64Array>()
        .unwrap()
        .clone();
    let found: BTreeSet<(String, u64, String, String)> = (0..batch.num_rows())
        .map(|i| {
            let id = if id.is_null(i) {
                String::new()
            } else {
                id.value(i).to_string()
            };
            (
                source.value(i).to_string(),
                line.value(i),
                reason.value(i).to_string(),
                id,
            )
        })
        .collect();
    let pool = "cand_pool/local/mbeir_toy_cand_pool.jsonl";
    let queries = "query/test/mbeir_toy_test.jsonl";
    let qrels = "qrels/test/mbeir_toy_test_qrels.txt";
    let expected: BTreeSet<(String, u64, String, String)> = [
        (pool, 5, "image_missing", "1:5"),
        (pool, 6, "image_truncated", "1:6"),
        (pool, 7, "image_not_an_image", "1:7"),
        (pool, 8, "image_too_many_pixels", "1:8"),
        (pool, 9, "image_path_escapes_root", "1:9"),
        (pool, 10, "malformed_json", ""),
        (pool, 11, "conflicting_did", "1:1"),
        (pool, 12, "unknown_modality", ""),
        (queries, 3, "empty_query", ""),
        (qrels, 4, "unknown_did", "test/1:103 1:404"),
    ]
    .into_iter()
    .map(|(s, l, r, i)| (s.to_string(), l, r.to_string(), i.to_string()))
    .collect();
    assert_eq!(
        found, expected,
        "one reject row per problem, each with its own reason"
    );
    assert_eq!(report.rejects, 10);

    let dids = strings(&out.join("corpus"), "did");
    assert_eq!(dids, ["1:1", "1:2", "1:3", "1:4", "1:12"]);
    assert_eq!(
        strings(&out.join("queries"), "qid"),
        ["test/1:100", "test/1:101", "test/1:103"],
        "M-BEIR's qids restart in every split: each carries its split"
    );
    let qrel_pairs: Vec<String> = strings(&out.join("qrels"), "qid")
        .into_iter()
        .zip(strings(&out.join("qrels"), "did"))
        .map(|(q, d)| format!("{q} {d}"))
        .collect();
    assert_eq!(
        qrel_pairs,
        ["test/1:100 1:1", "test/1:101 1:2", "test/1:103 1:12"]
    );
    assert_eq!(
        rows(&out.join("images")),
        2,
        "a.png and its byte-identical copy are one image; b.png the other"
    );
    let texts = column(&out.join("corpus"), "text");
    assert!(
        texts.contains(&Some("a red circle".to_string())),
        "the first 1:1 is kept"
    );

    assert_eq!(
        before,
        tree_hashes(dir.path())
            .into_iter()
            .filter(|(p, _)| !p.starts_with(&out))
            .collect::<Vec<_>>(),
        "inputs are never modified or deleted"
    );

    let err = ingest(
        config,
        &dir.path().join("strict"),
        None,
        RejectPolicy::default(),
    )
    .unwrap_err();
    assert!(
        err.contains(&format!("first: {pool}:5: image_missing (1:5)")),
        "{err}"
    );
}

#[test]
fn ingesting_twice_is_byte_identical_and_shards_union_to_the_whole() {
    let dir = tempfile::tempdir().unwrap();
    let (root, _) = small_world(dir.path(), 5);
    let config = IngestConfig::new(Format::Mbeir, root);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    ingest(config.clone(), &a, None, RejectPolicy::default()).unwrap();
    ingest(config.clone(), &b, None, RejectPolicy::default()).unwrap();
    for dataset in ["corpus", "queries", "qrels", "images"] {
        let name = format!("{dataset}/part-00000-of-00001.parquet");
        assert_eq!(
            fs::read(a.join(&name)).unwrap(),
            fs::read(b.join(&name)).unwrap(),
            "{dataset}"
        );
    }

    let sharded = dir.path().join("sharded");
    for i in 0..3 {
        ingest(
            config.clone(),
            &sharded,
            Some(Shard::new(i, 3).unwrap()),
            RejectPolicy::default(),
        )
        .unwrap();
    }
    let set = |dir: &Path, column: &str| strings(dir, column).into_iter().collect::<BTreeSet<_>>();
    for (dataset, column) in ID_COLUMNS {
        assert_eq!(
            set(&sharded.join(dataset), column),
            set(&a.join(dataset), column),
            "{dataset}"
        );
    }
    assert_eq!(rows(&sharded.join("corpus")), rows(&a.join("corpus")));
    assert_eq!(rows(&sharded.join("queries")), rows(&a.join("queries")));
    let judged = |dir: &Path| {
        qrels(&dir.join("qrels"))
            .into_iter()
            .collect::<BTreeSet<_>>()
    };
    assert_eq!(judged(&sharded), judged(&a));
}
