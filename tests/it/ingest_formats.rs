//! The other trainers' formats come in through the same door: FlagEmbedding jsonl, ms-swift reranker jsonl, and
//! Parquet in umrank's own schema.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use umrank::dataset::Dataset;
use umrank::ingest::{Format, IngestConfig};
use umrank::pipeline::{RejectPolicy, RunOptions, StageReport};

use crate::common::datasets::{column, ingest_alone, qrels, solid_png, ID_COLUMNS};

/// The ingest stage alone under runner seed 1, accepting up to half the records as rejects.
fn ingest(config: IngestConfig, out: &Path) -> StageReport {
    let options = RunOptions {
        policy: RejectPolicy {
            max_fraction: 0.5,
            strict: false,
        },
        ..Default::default()
    };
    ingest_alone(config, out, 1, options).unwrap()
}

/// (qid, did) -> relevance
fn judgements(dir: &Path) -> BTreeMap<(String, String), i32> {
    qrels(dir)
        .into_iter()
        .map(|(qid, did, relevance)| ((qid, did), relevance))
        .collect()
}

/// An ms-swift input directory `<dir>/in`: the jsonl file `name` of `lines`, and the images `img/q.png` and
/// `img/d.png` they may point at.
fn swift_input(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let root = dir.join("in");
    fs::create_dir_all(root.join("img")).unwrap();
    fs::write(root.join("img/q.png"), solid_png(6, 6, [1, 0, 0])).unwrap();
    fs::write(root.join("img/d.png"), solid_png(6, 6, [2, 0, 0])).unwrap();
    fs::write(root.join(name), lines.join("\n")).unwrap();
    root
}

#[test]
fn flag_embedding_jsonl_shares_documents_and_keeps_listed_negatives() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("in");
    fs::create_dir_all(&root).unwrap();
    let lines = [
        r#"{"query": "what is rust", "pos": ["Rust is a language."], "neg": ["Rust is iron oxide.", "A crab."], "prompt": "Represent this query."}"#,
        r#"{"query": "iron corrosion", "pos": ["Rust is iron oxide."], "neg": ["Rust is a language."]}"#,
        r#"{"query": "", "pos": ["x"], "neg": []}"#,
        r#"{"query": "broken"#,
    ];
    fs::write(root.join("train.jsonl"), lines.join("\n")).unwrap();
    let out = dir.path().join("out");
    let report = ingest(IngestConfig::new(Format::Flag, root), &out);
    assert_eq!(report.rejects, 2, "the empty query and the broken line");

    let texts = column(&out.join("corpus"), "text");
    assert_eq!(
        texts.len(),
        3,
        "three distinct documents; a rejected line adds none: {texts:?}"
    );
    assert_eq!(
        column(&out.join("queries"), "qid"),
        [Some("train:1".into()), Some("train:2".into())]
    );
    assert_eq!(
        column(&out.join("queries"), "instruction"),
        [Some("Represent this query.".into()), None]
    );
    let judged = judgements(&out.join("qrels"));
    assert_eq!(judged.len(), 5);
    let dids = column(&out.join("corpus"), "did");
    let did_of = |text: &str| {
        dids[texts
            .iter()
            .position(|t| t.as_deref() == Some(text))
            .unwrap()]
        .clone()
        .unwrap()
    };
    assert_eq!(
        judged[&("train:1".into(), did_of("Rust is a language."))],
        1
    );
    assert_eq!(
        judged[&("train:1".into(), did_of("Rust is iron oxide."))],
        0
    );
    assert_eq!(
        judged[&("train:2".into(), did_of("Rust is iron oxide."))],
        1
    );
}

#[test]
fn ms_swift_jsonl_with_images() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"messages": [{"role": "system", "content": "Find the matching photo."}, {"role": "user", "content": "<image>a red square"}], "images": ["img/q.png"], "positive_messages": [[{"role": "user", "content": "<image>"}]], "positive_images": [["img/d.png"]], "negative_messages": [[{"role": "user", "content": "a blue circle"}], [{"role": "user", "content": "<image>"}]], "negative_images": [[], ["img/missing.png"]]}"#,
    ];
    let root = swift_input(dir.path(), "rerank.jsonl", &lines);
    let out = dir.path().join("out");
    let report = ingest(IngestConfig::new(Format::Swift, root), &out);
    assert_eq!(
        report.rejects, 2,
        "the negative whose image is missing, and the judgement that names it"
    );

    assert_eq!(
        column(&out.join("queries"), "modality"),
        [Some("image,text".into())]
    );
    assert_eq!(
        column(&out.join("queries"), "instruction"),
        [Some("Find the matching photo.".into())]
    );
    assert_eq!(
        column(&out.join("queries"), "task"),
        [Some("image,text->image".into())]
    );
    let modalities = column(&out.join("corpus"), "modality");
    assert_eq!(modalities, [Some("image".into()), Some("text".into())]);
    assert_eq!(
        Dataset::open(&out.join("images"))
            .unwrap()
            .num_rows()
            .unwrap(),
        2
    );
    let judged = judgements(&out.join("qrels"));
    assert_eq!(
        judged
            .values()
            .copied()
            .collect::<Vec<_>>()
            .iter()
            .sum::<i32>(),
        1
    );
}

#[test]
fn parquet_in_our_schema_round_trips_and_revalidates_images() {
    let dir = tempfile::tempdir().unwrap();
    let lines = [
        r#"{"messages": [{"role": "user", "content": "<image>"}], "images": ["img/q.png"], "positive_messages": [[{"role": "user", "content": "<image>red"}]], "positive_images": [["img/d.png"]], "negative_messages": [[{"role": "user", "content": "blue"}]]}"#,
        r#"{"messages": [{"role": "user", "content": "green"}], "positive_messages": [[{"role": "user", "content": "blue"}]]}"#,
    ];
    let root = swift_input(dir.path(), "a.jsonl", &lines);
    let first = dir.path().join("first");
    ingest(IngestConfig::new(Format::Swift, root), &first);

    let second = dir.path().join("second");
    let report = ingest(IngestConfig::new(Format::Parquet, first.clone()), &second);
    assert_eq!(report.rejects, 0);
    for (dataset, col) in ID_COLUMNS {
        assert_eq!(
            column(&first.join(dataset), col),
            column(&second.join(dataset), col),
            "{dataset}"
        );
    }
    assert_eq!(
        judgements(&first.join("qrels")),
        judgements(&second.join("qrels"))
    );
}
