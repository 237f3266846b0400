//! Real files as users have them: byte-order marks, queries left without a positive, media umrank does not read,
//! and judgements that name a document the corpus lacks. Each case ends in the kept record, byte-exact, or in a
//! reject row with its reason; sharded runs agree with the whole.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

use umrank::ingest::{Format, IngestConfig};
use umrank::pipeline::{RejectPolicy, RunOptions};
use umrank::shard::Shard;

use crate::common::datasets::{column, empty_mbeir_tree, ingest_alone, qrels, solid_png, strings};

const BOM: &str = "\u{feff}";

/// The ingest stage alone, accepting any share of rejects; the reject rows as (file, line, reason, id).
fn ingest(
    config: IngestConfig,
    out: &Path,
    shard: Option<Shard>,
) -> BTreeSet<(String, u64, String, String)> {
    let options = RunOptions {
        shard,
        policy: RejectPolicy {
            max_fraction: 1.0,
            strict: false,
        },
        ..Default::default()
    };
    ingest_alone(config, out, 3, options).unwrap();
    let rejects = match shard {
        Some(shard) if !shard.is_all() => {
            out.join(format!("rejects.{}.parquet", shard.part_name()))
        }
        _ => out.join("rejects.parquet"),
    };
    if !rejects.exists() {
        return BTreeSet::new();
    }
    let ids = column(&rejects, "record_id");
    let lines = crate::common::datasets::u64_column(&rejects, "line");
    strings(&rejects, "source")
        .into_iter()
        .zip(lines)
        .zip(strings(&rejects, "reason"))
        .zip(ids)
        .map(|(((source, line), reason), id)| (source, line, reason, id.unwrap_or_default()))
        .collect()
}

fn reject(file: &str, line: u64, reason: &str, id: &str) -> (String, u64, String, String) {
    (file.into(), line, reason.into(), id.into())
}

/// A one-dataset M-BEIR tree, `toy`, with its test queries, pool and qrels as given (each a list of lines).
fn mbeir(dir: &Path, pool: &[&str], queries: &[&str], qrels: &[&str], prefix: &str) -> PathBuf {
    let root = empty_mbeir_tree(dir);
    fs::write(root.join("images/a.png"), solid_png(6, 6, [9, 9, 9])).unwrap();
    let write = |rel: &str, lines: &[&str]| {
        fs::write(root.join(rel), format!("{prefix}{}\n", lines.join("\n"))).unwrap()
    };
    write("cand_pool/local/mbeir_toy_task1_cand_pool.jsonl", pool);
    write("query/test/mbeir_toy_task1_test.jsonl", queries);
    write("qrels/test/mbeir_toy_task1_test_qrels.txt", qrels);
    write(
        "instructions/query_instructions.tsv",
        &[
            "query_modality\tcand_modality\tdataset\tdataset_id\tprompt_1",
            "text\ttext\tToy\t1\tFind the passage.",
        ],
    );
    root
}

const DOC_1: &str = r#"{"did": "1:1", "txt": "a red circle", "img_path": null, "modality": "text", "src_content": null}"#;
const DOC_2: &str = r#"{"did": "1:2", "txt": "a blue square", "img_path": null, "modality": "text", "src_content": null}"#;
const QUERY_1: &str = r#"{"qid": "1:1", "query_txt": "the red one", "query_img_path": null, "query_modality": "text", "query_src_content": null, "pos_cand_list": ["1:1"], "neg_cand_list": [], "task_id": 1}"#;

#[test]
fn a_byte_order_mark_is_an_encoding_mark_in_every_input_file() {
    let dir = tempfile::tempdir().unwrap();
    let with_bom = mbeir(
        &dir.path().join("bom"),
        &[DOC_1, DOC_2],
        &[QUERY_1],
        &["1:1 0 1:1 1 1"],
        BOM,
    );
    let plain = mbeir(
        &dir.path().join("plain"),
        &[DOC_1, DOC_2],
        &[QUERY_1],
        &["1:1 0 1:1 1 1"],
        "",
    );
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    assert!(ingest(IngestConfig::new(Format::Mbeir, with_bom), &a, None).is_empty());
    ingest(IngestConfig::new(Format::Mbeir, plain), &b, None);
    for (dataset, columns) in [
        ("corpus", &["did", "text"][..]),
        ("queries", &["qid", "text", "instruction"]),
    ] {
        for name in columns {
            assert_eq!(
                column(&a.join(dataset), name),
                column(&b.join(dataset), name),
                "{dataset}.{name}"
            );
        }
    }
    assert_eq!(qrels(&a.join("qrels")), qrels(&b.join("qrels")));
    assert_eq!(strings(&a.join("queries"), "qid"), ["test/1:1"]);
    assert_eq!(strings(&a.join("corpus"), "did"), ["1:1", "1:2"]);
    assert_eq!(
        column(&a.join("queries"), "instruction"),
        [Some("Find the passage.".to_string())]
    );
    assert_eq!(
        qrels(&a.join("qrels")),
        [("test/1:1".to_string(), "1:1".to_string(), 1)]
    );

    // The trainer formats too.
    let flag = dir.path().join("flag");
    fs::create_dir_all(&flag).unwrap();
    fs::write(
        flag.join("train.jsonl"),
        format!(
            "{BOM}{}\n",
            r#"{"query": "what is rust", "pos": ["Rust is a language."], "neg": []}"#
        ),
    )
    .unwrap();
    let out = dir.path().join("flag_out");
    assert!(ingest(IngestConfig::new(Format::Flag, flag), &out, None).is_empty());
    assert_eq!(
        column(&out.join("queries"), "text"),
        [Some("what is rust".to_string())]
    );
}

#[test]
fn a_query_without_a_kept_positive_is_rejected_with_its_reason() {
    let dir = tempfile::tempdir().unwrap();
    let doc_missing_image = r#"{"did": "1:3", "txt": null, "img_path": "images/gone.png", "modality": "image", "src_content": null}"#;
    let queries = [
        // Kept: a positive that is in the corpus.
        QUERY_1,
        // No positive listed.
        r#"{"qid": "1:2", "query_txt": "nothing", "query_img_path": null, "query_modality": "text", "query_src_content": null, "pos_cand_list": [], "neg_cand_list": ["1:2"], "task_id": 1}"#,
        // Its only positive is not in the pool.
        r#"{"qid": "1:3", "query_txt": "elsewhere", "query_img_path": null, "query_modality": "text", "query_src_content": null, "pos_cand_list": ["1:404"], "neg_cand_list": [], "task_id": 1}"#,
        // Its only positive is rejected (its image is missing).
        r#"{"qid": "1:4", "query_txt": "the lost picture", "query_img_path": null, "query_modality": "text", "query_src_content": null, "pos_cand_list": ["1:3"], "neg_cand_list": [], "task_id": 1}"#,
        // One of two positives rejected: the query stays, the judgement that names the rejected one goes.
        r#"{"qid": "1:5", "query_txt": "both", "query_img_path": null, "query_modality": "text", "query_src_content": null, "pos_cand_list": ["1:2", "1:3"], "neg_cand_list": [], "task_id": 1}"#,
    ];
    let root = mbeir(
        dir.path(),
        &[DOC_1, DOC_2, doc_missing_image],
        &queries,
        &[],
        "",
    );
    let out = dir.path().join("out");
    let (pool, query_file) = (
        "cand_pool/local/mbeir_toy_task1_cand_pool.jsonl",
        "query/test/mbeir_toy_task1_test.jsonl",
    );
    let expected: BTreeSet<_> = [
        reject(pool, 3, "image_missing", "1:3"),
        reject(query_file, 2, "no_positive", "test/1:2"),
        reject(query_file, 2, "query_rejected", "test/1:2 1:2"),
        reject(query_file, 3, "unknown_did", "test/1:3 1:404"),
        reject(query_file, 3, "no_positive", "test/1:3"),
        reject(query_file, 4, "document_rejected", "test/1:4 1:3"),
        reject(query_file, 4, "no_positive", "test/1:4"),
        reject(query_file, 5, "document_rejected", "test/1:5 1:3"),
    ]
    .into_iter()
    .collect();
    let config = IngestConfig::new(Format::Mbeir, root);
    assert_eq!(ingest(config.clone(), &out, None), expected);
    assert_eq!(
        strings(&out.join("queries"), "qid"),
        ["test/1:1", "test/1:5"]
    );
    assert_eq!(
        qrels(&out.join("qrels")),
        [
            ("test/1:1".to_string(), "1:1".to_string(), 1),
            ("test/1:5".to_string(), "1:2".to_string(), 1)
        ],
        "qrels never name a document the corpus lacks"
    );
    assert_eq!(strings(&out.join("corpus"), "did"), ["1:1", "1:2"]);

    // A job array finds the same rejects, whichever shard owns the rejected document.
    let array = dir.path().join("array");
    let mut union = BTreeSet::new();
    for index in 0..3 {
        union.extend(ingest(
            config.clone(),
            &array,
            Some(Shard { index, count: 3 }),
        ));
    }
    let mut kept = strings(&array.join("queries"), "qid");
    kept.sort();
    assert_eq!(union, expected);
    assert_eq!(kept, ["test/1:1", "test/1:5"]);
}

#[test]
fn content_umrank_does_not_read_rejects_the_record() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("in");
    fs::create_dir_all(&root).unwrap();
    let lines = [
        r#"{"messages": [{"role": "user", "content": "a cat"}], "positive_messages": [[{"role": "user", "content": "a cat photo caption"}]]}"#,
        r#"{"messages": [{"role": "user", "content": "<video>what happens next"}], "videos": ["clip.mp4"], "positive_messages": [[{"role": "user", "content": "a goal"}]]}"#,
        r#"{"messages": [{"role": "user", "content": "a song"}], "positive_messages": [[{"role": "user", "content": "<audio>"}]], "positive_audios": [["song.wav"]]}"#,
    ];
    fs::write(root.join("rerank.jsonl"), lines.join("\n")).unwrap();
    let out = dir.path().join("out");
    let rejects = ingest(IngestConfig::new(Format::Swift, root), &out, None);
    let reasons: Vec<(u64, String)> = rejects
        .into_iter()
        .map(|(_, line, reason, _)| (line, reason))
        .collect();
    assert_eq!(
        reasons,
        [
            (2, "unsupported_media".to_string()),
            (3, "unsupported_media".to_string())
        ]
    );
    assert_eq!(
        column(&out.join("queries"), "text"),
        [Some("a cat".to_string())]
    );
    assert_eq!(
        column(&out.join("corpus"), "text"),
        [Some("a cat photo caption".to_string())]
    );
}
