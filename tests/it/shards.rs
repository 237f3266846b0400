//! The shards stage and the exporters, on the ingested demo world with a negatives dataset written by a fixture
//! stage: group ids and counts agree across negatives, sft and cl; shards respect their bounds and the index;
//! every export parses back (FlagEmbedding and ms-swift through umrank's own ingest, sentence-transformers through
//! the dataset reader) with matching rows; reruns are byte-identical.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float32Array, ListArray, RecordBatch, StringArray, StructArray, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields};
use umrank::dataset::Dataset;
use umrank::digest::sha256_file;
use umrank::ingest::{Format, IngestConfig};
use umrank::pipeline::{
    Input, Output, RejectPolicy, RunOptions, Runner, Stage, StageContext, StageError,
};
use umrank::schema;
use umrank::shards::export::{export, for_each_group, ExportFormat, ExportGroup, ExportOptions};
use umrank::shards::{group_id, ShardIndex, ShardsConfig, ShardsStage};

use crate::common::datasets::{
    bool_column, column, ingest_alone, list_column, qrels, small_world, strings, u64_column,
};

/// One row of the fixture's negatives dataset.
#[derive(Debug, Clone)]
struct NegRow {
    qid: String,
    positives: Vec<String>,
    hard: Vec<String>,
    random: Vec<String>,
}

/// A stand-in for the mine stage: writes the given rows as its `negatives` dataset.
struct FixtureMine {
    rows: Vec<NegRow>,
}

impl Stage for FixtureMine {
    fn name(&self) -> &'static str {
        "mine"
    }

    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        Ok(serde_json::json!({ "rows": format!("{:?}", self.rows) }))
    }

    fn inputs(&self) -> Vec<Input> {
        Vec::new()
    }

    fn outputs(&self) -> Vec<Output> {
        vec![Output::dataset("negatives", "negatives")]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let mut writer = ctx.create_dataset("negatives", "negatives")?;
        writer.write(&negatives_batch(&self.rows))?;
        writer.finish()?;
        Ok(())
    }
}

/// `list<struct<did, score[, rank]>>` with the fields the negatives schema declares.
fn struct_list(item: &Field, rows: &[&Vec<String>]) -> ListArray {
    let DataType::Struct(fields) = item.data_type() else {
        panic!("negatives lists hold structs")
    };
    let dids: Vec<&str> = rows
        .iter()
        .flat_map(|r| r.iter().map(String::as_str))
        .collect();
    let n = dids.len();
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(dids)),
        Arc::new(Float32Array::from(
            (0..n).map(|i| 0.9 - i as f32 * 1e-3).collect::<Vec<_>>(),
        )),
    ];
    if fields.len() == 3 {
        let ranks = rows
            .iter()
            .flat_map(|r| 1..=r.len() as u32)
            .collect::<Vec<_>>();
        columns.push(Arc::new(UInt32Array::from(ranks)));
    }
    let values = StructArray::new(
        Fields::from(fields.iter().cloned().collect::<Vec<_>>()),
        columns,
        None,
    );
    ListArray::new(
        Arc::new(item.clone()),
        OffsetBuffer::from_lengths(rows.iter().map(|r| r.len())),
        Arc::new(values),
        None,
    )
}

fn negatives_batch(rows: &[NegRow]) -> RecordBatch {
    let arrow = schema::get("negatives").unwrap().arrow();
    let item = |name: &str| match arrow.field_with_name(name).unwrap().data_type() {
        DataType::List(item) => item.as_ref().clone(),
        other => panic!("{name} is {other}"),
    };
    let positives = string_list(
        &rows.iter().map(|r| &r.positives).collect::<Vec<_>>(),
        item("positives"),
    );
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(
            rows.iter().map(|r| r.qid.clone()).collect::<Vec<_>>(),
        )),
        Arc::new(positives),
        Arc::new(struct_list(
            &item("hard"),
            &rows.iter().map(|r| &r.hard).collect::<Vec<_>>(),
        )),
        Arc::new(struct_list(
            &item("random"),
            &rows.iter().map(|r| &r.random).collect::<Vec<_>>(),
        )),
        Arc::new(UInt32Array::from(vec![0u32; rows.len()])),
        Arc::new(StringArray::from(vec!["fixture"; rows.len()])),
        Arc::new(StringArray::from(vec!["fixture"; rows.len()])),
    ];
    RecordBatch::try_new(arrow, columns).unwrap()
}

/// A `list<utf8>` column with the item field the schema declares.
fn string_list(rows: &[&Vec<String>], item: Field) -> ListArray {
    let values: Vec<&str> = rows
        .iter()
        .flat_map(|r| r.iter().map(String::as_str))
        .collect();
    ListArray::new(
        Arc::new(item),
        OffsetBuffer::from_lengths(rows.iter().map(|r| r.len())),
        Arc::new(StringArray::from(values)),
        None,
    )
}

/// A document's (text, image_id).
type DocParts = (Option<String>, Option<String>);
/// A query's (instruction, text, image_id).
type QueryParts = (Option<String>, Option<String>, Option<String>);
/// Judged documents of a query: parts and relevance.
type Judged = BTreeSet<(DocParts, i32)>;
/// A group read from sft rows: id, (qid, positive), negatives as (did, kind).
type SftGroup = (u64, (String, String), Vec<(String, String)>);

/// (text, image_id) of every document, by did.
fn corpus(ingest: &Path) -> BTreeMap<String, DocParts> {
    let dir = ingest.join("corpus");
    strings(&dir, "did")
        .into_iter()
        .zip(
            column(&dir, "text")
                .into_iter()
                .zip(column(&dir, "image_id")),
        )
        .collect()
}

/// (instruction, text, image_id) of every query, by qid.
fn queries(ingest: &Path) -> BTreeMap<String, QueryParts> {
    let dir = ingest.join("queries");
    let instruction = column(&dir, "instruction");
    let text = column(&dir, "text");
    let image = column(&dir, "image_id");
    strings(&dir, "qid")
        .into_iter()
        .enumerate()
        .map(|(i, qid)| {
            (
                qid,
                (instruction[i].clone(), text[i].clone(), image[i].clone()),
            )
        })
        .collect()
}

/// The ingest stage alone under runner seed 0; its reject count.
fn run_ingest(config: IngestConfig, out: &Path) -> u64 {
    ingest_alone(config, out, 0, RunOptions::default())
        .unwrap()
        .rejects
}

/// The demo world, ingested, and negatives for 30 of its queries: one query with two positives, one short of
/// negatives, and four rows that must be rejected.
struct Setup {
    _dir: tempfile::TempDir,
    work: PathBuf,
    valid: Vec<NegRow>,
}

impl Setup {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let work = dir.path().to_path_buf();
        let (root, _) = small_world(&work, 5);
        assert_eq!(
            run_ingest(IngestConfig::new(Format::Mbeir, root), &work.join("ingest")),
            0
        );

        let ingest = work.join("ingest");
        let dids: Vec<String> = corpus(&ingest).into_keys().collect();
        let pool_of = |dataset: &str, id: &str| -> BTreeMap<String, String> {
            let dir = ingest.join(dataset);
            strings(&dir, id)
                .into_iter()
                .zip(strings(&dir, "pool"))
                .collect()
        };
        let (doc_pool, query_pool) = (pool_of("corpus", "did"), pool_of("queries", "qid"));
        let mut positives: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (qid, did, relevance) in qrels(&ingest.join("qrels")) {
            if relevance > 0 {
                positives.entry(qid).or_default().push(did);
            }
        }
        let mut valid = Vec::new();
        for (n, (qid, pos)) in positives.into_iter().take(30).enumerate() {
            let mut pos = pos;
            // Negatives from the query's own pool, as mining draws them: a text task's groups are all text.
            let pool: Vec<&String> = dids
                .iter()
                .filter(|d| doc_pool[*d] == query_pool[&qid])
                .collect();
            let mut free = pool
                .into_iter()
                .cycle()
                .skip(n * 7)
                .filter(|d| !pos.contains(d));
            let mut take = |k: usize| {
                (0..k)
                    .map(|_| free.next().unwrap().clone())
                    .collect::<Vec<_>>()
            };
            let (hard, random) = if n == 3 {
                (take(1), Vec::new())
            } else {
                (take(3), take(2))
            };
            if n == 5 {
                let extra = dids
                    .iter()
                    .find(|d| !pos.contains(d) && !hard.contains(d) && !random.contains(d));
                pos.push(extra.unwrap().clone());
            }
            valid.push(NegRow {
                qid,
                positives: pos,
                hard,
                random,
            });
        }
        // Four rows to reject: an unknown qid, a second row for a qid (after its first), an unknown did, and a
        // positive listed as a negative. The last two replace their valid originals.
        let mut unknown_did = valid[2].clone();
        unknown_did.random.push("nowhere:1".into());
        let mut both = valid[4].clone();
        both.hard.push(both.positives[0].clone());
        let bad = [
            NegRow {
                qid: "no-such-query".into(),
                ..valid[0].clone()
            },
            NegRow {
                qid: valid[1].qid.clone(),
                ..valid[0].clone()
            },
            unknown_did,
            both,
        ];
        valid.remove(4);
        valid.remove(2);
        let rows: Vec<NegRow> = valid.iter().cloned().chain(bad).collect();

        let options = RunOptions {
            dirs: [("mine".to_string(), work.join("mine"))].into(),
            ..Default::default()
        };
        Runner::new(
            work.clone(),
            0,
            vec![("mine".into(), Box::new(FixtureMine { rows }))],
            options,
        )
        .run()
        .unwrap();
        Setup {
            _dir: dir,
            work,
            valid,
        }
    }

    fn ingest(&self) -> PathBuf {
        self.work.join("ingest")
    }

    /// Runs the shards stage into `out`; returns its reject count.
    /// The shards stage with [`small_shards`] into `<work>/shards`, for the exporters to read.
    fn small_shards(&self) -> PathBuf {
        let shards = self.work.join("shards");
        self.shards(&shards, small_shards());
        shards
    }

    fn shards(&self, out: &Path, config: ShardsConfig) -> u64 {
        self.shards_with_seed(out, config, 42)
    }

    /// The shards stage alone into `out` under runner seed `seed`, accepting up to half the rows as rejects; its
    /// reject count.
    fn shards_with_seed(&self, out: &Path, config: ShardsConfig, seed: u64) -> u64 {
        let options = RunOptions {
            dirs: [("shards".to_string(), out.to_path_buf())].into(),
            policy: RejectPolicy {
                max_fraction: 0.5,
                strict: false,
            },
            ..Default::default()
        };
        let stage = ShardsStage::new(config).unwrap();
        let reports = Runner::new(
            self.work.clone(),
            seed,
            vec![("shards".into(), Box::new(stage))],
            options,
        )
        .run()
        .unwrap();
        reports[0].rejects
    }

    /// (qid, positive) -> negatives with kinds, from the valid rows.
    fn expected_groups(&self) -> BTreeMap<(String, String), Vec<(String, &'static str)>> {
        let mut groups = BTreeMap::new();
        for row in &self.valid {
            let negatives: Vec<(String, &'static str)> = row
                .hard
                .iter()
                .map(|d| (d.clone(), "hard"))
                .chain(row.random.iter().map(|d| (d.clone(), "random")))
                .collect();
            for p in &row.positives {
                groups.insert((row.qid.clone(), p.clone()), negatives.clone());
            }
        }
        groups
    }
}

fn small_shards() -> ShardsConfig {
    ShardsConfig {
        max_rows_per_shard: 40,
        ..ShardsConfig::default()
    }
}

#[test]
fn groups_and_counts_agree_across_negatives_sft_and_cl() {
    let setup = Setup::new();
    let out = setup.work.join("shards");
    let rejects = setup.shards(&out, small_shards());
    assert_eq!(
        rejects, 4,
        "unknown qid, duplicate qid, unknown did, negative that is a positive"
    );
    let reasons: BTreeSet<String> = strings(&out.join("rejects.parquet"), "reason")
        .into_iter()
        .collect();
    let want: BTreeSet<String> = [
        "unknown_qid",
        "duplicate_qid",
        "unknown_did",
        "negative_is_positive",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(reasons, want);

    let expected = setup.expected_groups();
    assert_eq!(setup.valid.len(), 28);
    assert_eq!(
        expected.len(),
        29,
        "the query with two positives makes two groups"
    );
    let queries = queries(&setup.ingest());
    let corpus = corpus(&setup.ingest());

    // sft: contiguous groups, positive first, negatives in group order, parts from queries and corpus.
    let sft = out.join("sft");
    let ids = u64_column(&sft, "group_id");
    let qid = strings(&sft, "qid");
    let did = strings(&sft, "did");
    let label = bool_column(&sft, "label");
    let kind = strings(&sft, "negative_kind");
    let instruction = column(&sft, "instruction");
    let query_text = column(&sft, "query_text");
    let query_image = column(&sft, "query_image_id");
    let doc_text = column(&sft, "doc_text");
    let doc_image = column(&sft, "doc_image_id");
    let mut sft_groups: Vec<SftGroup> = Vec::new();
    for i in 0..ids.len() {
        let (want_instruction, want_text, want_image) = &queries[&qid[i]];
        assert_eq!(
            (&instruction[i], &query_text[i], &query_image[i]),
            (want_instruction, want_text, want_image)
        );
        let (want_doc_text, want_doc_image) = &corpus[&did[i]];
        assert_eq!(
            (&doc_text[i], &doc_image[i]),
            (want_doc_text, want_doc_image)
        );
        if label[i] {
            assert_eq!(kind[i], "none");
            assert_eq!(ids[i], group_id(&qid[i], &did[i]));
            sft_groups.push((ids[i], (qid[i].clone(), did[i].clone()), Vec::new()));
        } else {
            let current = sft_groups
                .last_mut()
                .expect("a group starts with its positive");
            assert_eq!(current.0, ids[i], "rows of a group are contiguous");
            current.2.push((did[i].clone(), kind[i].clone()));
        }
    }
    assert_eq!(sft_groups.len(), expected.len());
    let distinct: BTreeSet<u64> = sft_groups.iter().map(|g| g.0).collect();
    assert_eq!(distinct.len(), sft_groups.len(), "group ids are unique");
    for (_, key, negatives) in &sft_groups {
        let want: Vec<(String, String)> = expected[key]
            .iter()
            .map(|(d, k)| (d.clone(), k.to_string()))
            .collect();
        assert_eq!(negatives, &want, "group {key:?}");
    }
    let sft_rows: usize = expected.values().map(|n| 1 + n.len()).sum();
    assert_eq!(ids.len(), sft_rows);

    // cl: one row per group, same ids, same order, same negatives and kinds.
    let cl = out.join("cl");
    let cl_ids = u64_column(&cl, "group_id");
    let cl_negatives = list_column(&cl, "negatives");
    let cl_kinds = list_column(&cl, "negative_kinds");
    let cl_positive = strings(&cl, "positive");
    let cl_qid = strings(&cl, "qid");
    assert_eq!(cl_ids, sft_groups.iter().map(|g| g.0).collect::<Vec<_>>());
    for (i, (_, key, negatives)) in sft_groups.iter().enumerate() {
        assert_eq!((&cl_qid[i], &cl_positive[i]), (&key.0, &key.1));
        let dids: Vec<String> = negatives.iter().map(|n| n.0.clone()).collect();
        let kinds: Vec<String> = negatives.iter().map(|n| n.1.clone()).collect();
        assert_eq!((&cl_negatives[i], &cl_kinds[i]), (&dids, &kinds));
    }

    // Shuffled: not the order of the negatives rows.
    let input_order: Vec<(String, String)> = setup
        .valid
        .iter()
        .flat_map(|r| r.positives.iter().map(|p| (r.qid.clone(), p.clone())))
        .collect();
    let shard_order: Vec<(String, String)> = sft_groups.iter().map(|g| g.1.clone()).collect();
    assert_ne!(shard_order, input_order);

    // The index: counts, bounds, files and their hashes; sft shard i and cl shard i hold the same groups.
    let index = ShardIndex::read(&out).unwrap();
    assert_eq!(index.prompt, "parts");
    assert_eq!(
        (index.groups, index.cl_rows, index.sft_rows),
        (29, 29, sft_rows as u64)
    );
    assert_eq!((index.min_negatives, index.max_negatives), (1, 5));
    assert!(index.shards.len() >= 4, "{} shards", index.shards.len());
    let mut start = 0usize;
    for shard in &index.shards {
        assert!(shard.sft.rows <= 40);
        for file in [&shard.sft, &shard.cl] {
            assert_eq!(sha256_file(&out.join(&file.file)).unwrap(), file.sha256);
            assert_eq!(
                Dataset::open(&out.join(&file.file))
                    .unwrap()
                    .num_rows()
                    .unwrap(),
                file.rows
            );
        }
        let cl_in_shard = u64_column(&out.join(&shard.cl.file), "group_id");
        let sft_in_shard: Vec<u64> = u64_column(&out.join(&shard.sft.file), "group_id");
        let mut sft_distinct = sft_in_shard.clone();
        sft_distinct.dedup();
        assert_eq!(cl_in_shard, sft_distinct);
        assert_eq!(cl_in_shard, cl_ids[start..start + shard.groups as usize]);
        start += shard.groups as usize;
    }
    assert_eq!(
        fs::canonicalize(index.images_path(&out)).unwrap(),
        fs::canonicalize(setup.ingest().join("images")).unwrap()
    );
    assert_eq!(index.corpus, "../ingest/corpus");

    // Unshuffled: the negatives' order.
    let plain = setup.work.join("plain");
    setup.shards(
        &plain,
        ShardsConfig {
            shuffle: false,
            ..ShardsConfig::default()
        },
    );
    let plain_qid = strings(&plain.join("cl"), "qid");
    let plain_pos = strings(&plain.join("cl"), "positive");
    let plain_order: Vec<(String, String)> = plain_qid.into_iter().zip(plain_pos).collect();
    assert_eq!(plain_order, input_order);
    assert_eq!(ShardIndex::read(&plain).unwrap().shards.len(), 1);
}

/// Every file under `dir` (relative path -> bytes), the manifest aside (it records times).
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.file_name().unwrap() != "manifest.json" {
                out.insert(
                    path.strip_prefix(dir).unwrap().to_path_buf(),
                    fs::read(&path).unwrap(),
                );
            }
        }
    }
    out
}

fn export_to(
    shards: &Path,
    format: ExportFormat,
    out: &Path,
) -> umrank::shards::export::ExportSummary {
    export(&ExportOptions {
        format,
        shards: shards.to_path_buf(),
        out: out.to_path_buf(),
        images: None,
        negatives: None,
    })
    .unwrap()
}

#[test]
fn reruns_into_other_directories_are_byte_identical() {
    let setup = Setup::new();
    let a = setup.work.join("a");
    let b = setup.work.join("b");
    setup.shards(&a, small_shards());
    setup.shards(&b, small_shards());
    let first = files(&a);
    assert!(first.len() >= 10, "{:?}", first.keys().collect::<Vec<_>>());
    assert_eq!(first, files(&b));
    for format in [
        ExportFormat::Swift,
        ExportFormat::Flag,
        ExportFormat::SentenceTransformers,
    ] {
        let name = format!("{format:?}.out");
        export_to(&a, format, &setup.work.join("export-a").join(&name));
        export_to(&b, format, &setup.work.join("export-b").join(&name));
    }
    let exported = files(&setup.work.join("export-a"));
    assert!(exported.keys().any(|p| p.starts_with("images")));
    assert_eq!(exported, files(&setup.work.join("export-b")));

    // Another seed, another order, the same groups.
    setup.shards_with_seed(&setup.work.join("c"), small_shards(), 43);
    let ids_a = u64_column(&a.join("cl"), "group_id");
    let ids_c = u64_column(&setup.work.join("c").join("cl"), "group_id");
    assert_ne!(ids_a, ids_c);
    assert_eq!(
        ids_a.iter().collect::<BTreeSet<_>>(),
        ids_c.iter().collect::<BTreeSet<_>>()
    );
}

/// The groups of a shards directory, in order.
fn read_groups(shards: &Path) -> Vec<ExportGroup> {
    let index = ShardIndex::read(shards).unwrap();
    let mut groups = Vec::new();
    for_each_group(&index.sft(shards).unwrap(), |g| {
        groups.push(g);
        Ok(())
    })
    .unwrap();
    groups
}

/// What ingest read back from an export: per query (by line), its text, image, instruction, and its judged
/// documents as (text, image_id) with relevance.
struct ReadBack {
    queries: BTreeMap<u64, QueryParts>,
    judged: BTreeMap<u64, Judged>,
    qrels: usize,
}

fn read_back(format: Format, dir: &Path, stem: &str) -> ReadBack {
    let ingest = dir.join("ingest");
    let rejects = run_ingest(IngestConfig::new(format, dir.to_path_buf()), &ingest);
    assert_eq!(rejects, 0);
    let line_of = |qid: &str| -> u64 {
        let (file, line) = qid.rsplit_once(':').unwrap();
        assert_eq!(file, stem);
        line.parse().unwrap()
    };
    let queries = queries(&ingest)
        .into_iter()
        .map(|(qid, parts)| (line_of(&qid), parts))
        .collect();
    let corpus = corpus(&ingest);
    let qrels = qrels(&ingest.join("qrels"));
    let mut judged: BTreeMap<u64, BTreeSet<_>> = BTreeMap::new();
    for (qid, did, relevance) in &qrels {
        judged
            .entry(line_of(qid))
            .or_default()
            .insert((corpus[did].clone(), *relevance));
    }
    ReadBack {
        queries,
        judged,
        qrels: qrels.len(),
    }
}

/// The documents of a group as (text, image) with relevance, as ingest records them.
fn judged(group: &ExportGroup, with_images: bool) -> Judged {
    let parts = |r: &umrank::shards::export::Record| {
        (
            r.text.clone(),
            if with_images {
                r.image_id.clone()
            } else {
                None
            },
        )
    };
    std::iter::once((parts(&group.positive), 1))
        .chain(group.negatives.iter().map(|(r, _)| (parts(r), 0)))
        .collect()
}

/// Every record of a group: its query, positive and negatives.
fn records(group: &ExportGroup) -> impl Iterator<Item = &umrank::shards::export::Record> {
    [&group.query, &group.positive]
        .into_iter()
        .chain(group.negatives.iter().map(|(r, _)| r))
}

/// What ingest read back is `groups`, one per line: each query's instruction, text and (when the format carries
/// images) image, and its judged documents; and no other judgement.
fn assert_read_back(back: &ReadBack, groups: &[&ExportGroup], with_images: bool) {
    assert_eq!(back.queries.len(), groups.len());
    let mut expected_qrels = 0;
    for (line, group) in (1u64..).zip(groups) {
        let (instruction, text, image) = &back.queries[&line];
        let want_image = if with_images {
            &group.query.image_id
        } else {
            &None
        };
        assert_eq!(
            (instruction, text, image),
            (&group.instruction, &group.query.text, want_image),
            "line {line}"
        );
        let want = judged(group, with_images);
        expected_qrels += want.len();
        assert_eq!(back.judged[&line], want, "line {line}");
    }
    assert_eq!(back.qrels, expected_qrels);
}

#[test]
fn flag_export_round_trips_through_the_flag_ingest() {
    let setup = Setup::new();
    let shards = setup.small_shards();
    let dir = setup.work.join("flag");
    let summary = export_to(&shards, ExportFormat::Flag, &dir.join("train.jsonl"));
    let groups = read_groups(&shards);
    let text_only: Vec<&ExportGroup> = groups
        .iter()
        .filter(|g| records(g).all(|r| r.text.is_some()))
        .collect();
    assert!(
        !text_only.is_empty() && text_only.len() < groups.len(),
        "the world mixes text and image groups"
    );
    assert_eq!(summary.groups, groups.len() as u64);
    assert_eq!(summary.written, text_only.len() as u64);
    assert_eq!(
        summary.skipped["image_only_record"],
        (groups.len() - text_only.len()) as u64
    );

    let back = read_back(Format::Flag, &dir, "train");
    assert_read_back(&back, &text_only, false);
}

#[test]
fn swift_export_round_trips_with_its_images_through_the_swift_ingest() {
    let setup = Setup::new();
    let shards = setup.small_shards();
    let dir = setup.work.join("swift");
    let summary = export_to(&shards, ExportFormat::Swift, &dir.join("train.jsonl"));
    let groups = read_groups(&shards);
    assert_eq!(
        (summary.groups, summary.written),
        (groups.len() as u64, groups.len() as u64)
    );
    let image_ids: BTreeSet<String> = groups
        .iter()
        .flat_map(|g| records(g).filter_map(|r| r.image_id.clone()))
        .collect();
    assert!(!image_ids.is_empty());
    assert_eq!(summary.images, image_ids.len() as u64);

    let first_line = fs::read_to_string(dir.join("train.jsonl")).unwrap();
    let first_line: serde_json::Value =
        serde_json::from_str(first_line.lines().next().unwrap()).unwrap();
    for key in ["messages", "positive_messages", "negative_messages"] {
        assert!(first_line.get(key).is_some(), "{key} in {first_line}");
    }

    // Ingest hashes the image files it reads: equal ids mean the very bytes came back.
    let back = read_back(Format::Swift, &dir, "train");
    assert_read_back(&back, &groups.iter().collect::<Vec<_>>(), true);
}

#[test]
fn sentence_transformers_export_reads_back_with_the_dataset_reader() {
    let setup = Setup::new();
    let shards = setup.small_shards();
    let dir = setup.work.join("st");
    let file = dir.join("train.parquet");
    let summary = export_to(&shards, ExportFormat::SentenceTransformers, &file);
    let groups = read_groups(&shards);
    let full: Vec<&ExportGroup> = groups.iter().filter(|g| g.negatives.len() == 5).collect();
    assert_eq!(summary.written, full.len() as u64);
    assert_eq!(
        summary.skipped["short_group"],
        (groups.len() - full.len()) as u64
    );

    let image_only: BTreeSet<&String> = full
        .iter()
        .flat_map(|g| {
            [&g.query, &g.positive]
                .into_iter()
                .chain(g.negatives.iter().map(|(r, _)| r))
        })
        .filter(|r| r.text.is_none())
        .filter_map(|r| r.image_id.as_ref())
        .collect();
    assert!(!image_only.is_empty());
    assert_eq!(
        summary.images,
        image_only.len() as u64,
        "only the images a cell names"
    );
    assert_eq!(
        fs::read_dir(dir.join("images")).unwrap().count(),
        image_only.len()
    );

    let dataset = Dataset::open(&file).unwrap();
    assert_eq!(dataset.num_rows().unwrap(), full.len() as u64);
    let names: Vec<String> = dataset
        .schema()
        .unwrap()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "anchor",
            "positive",
            "negative_1",
            "negative_2",
            "negative_3",
            "negative_4",
            "negative_5"
        ]
    );
    let cells: Vec<Vec<String>> = names.iter().map(|n| strings(&file, n)).collect();
    let cell = |record: &umrank::shards::export::Record, value: &str| match &record.text {
        Some(text) => assert_eq!(value, text),
        None => {
            let path = dir.join(value);
            assert!(value.starts_with("images/"), "{value}");
            assert_eq!(
                &sha256_file(&path).unwrap(),
                record.image_id.as_ref().unwrap()
            );
        }
    };
    for (row, group) in full.iter().enumerate() {
        cell(&group.query, &cells[0][row]);
        cell(&group.positive, &cells[1][row]);
        for (n, (record, _)) in group.negatives.iter().enumerate() {
            cell(record, &cells[2 + n][row]);
        }
    }

    // Fewer columns: every group qualifies, and keeps its first negatives.
    let two = dir.join("two.parquet");
    let summary = export(&ExportOptions {
        format: ExportFormat::SentenceTransformers,
        shards: shards.clone(),
        out: two.clone(),
        images: None,
        negatives: Some(1),
    })
    .unwrap();
    assert_eq!(summary.written, groups.len() as u64);
    assert_eq!(
        Dataset::open(&two)
            .unwrap()
            .schema()
            .unwrap()
            .fields()
            .len(),
        3
    );
}

#[test]
fn an_export_refuses_shards_changed_after_their_index() {
    let setup = Setup::new();
    let shards = setup.work.join("shards");
    setup.shards(&shards, ShardsConfig::default());
    let part = shards.join("sft/part-00000-of-00001.parquet");
    let mut bytes = fs::read(&part).unwrap();
    bytes.push(0);
    fs::write(&part, bytes).unwrap();
    let err = export(&ExportOptions {
        format: ExportFormat::Flag,
        shards: shards.clone(),
        out: setup.work.join("x.jsonl"),
        images: None,
        negatives: None,
    })
    .unwrap_err()
    .to_string();
    assert!(err.contains("changed after the index was written"), "{err}");
    assert!(!setup.work.join("x.jsonl").exists());
}

#[test]
fn the_cli_builds_shards_and_exports_them() {
    let setup = Setup::new();
    let out = setup.work.join("cli-shards");
    let bin = env!("CARGO_BIN_EXE_umrank");
    let status = Command::new(bin)
        .args([
            "-q",
            "--max-reject-fraction",
            "0.5",
            "shards",
            "--seed",
            "42",
            "--max-rows-per-shard",
            "40",
        ])
        .arg("--out")
        .arg(&out)
        .arg("--ingest")
        .arg(setup.ingest())
        .arg("--mine")
        .arg(setup.work.join("mine"))
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let library = setup.work.join("lib-shards");
    setup.shards(&library, small_shards());
    let (cli_files, lib_files) = (files(&out), files(&library));
    assert_eq!(cli_files, lib_files, "the subcommand is the stage");

    let jsonl = setup.work.join("cli-export/train.jsonl");
    let status = Command::new(bin)
        .args(["export", "--format", "flag", "--shards"])
        .arg(&out)
        .arg("--out")
        .arg(&jsonl)
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(stdout.contains("groups written"), "{stdout}");
    let lines = fs::read_to_string(&jsonl).unwrap().lines().count();
    let flag: HashMap<String, serde_json::Value> =
        serde_json::from_str(fs::read_to_string(&jsonl).unwrap().lines().next().unwrap()).unwrap();
    assert!(flag.contains_key("query") && flag.contains_key("pos") && flag.contains_key("neg"));
    assert!(lines > 0);
}
