//! The mine stage end to end: candidates equal a brute-force sort (ties included) whatever the chunking and
//! sharding, the filters keep and drop exactly as configured, no positive is ever a negative, sharded parts read
//! back as the unsharded output, reruns are byte-identical, unusable records become rejects, and the demo world
//! mines hard negatives that score measurably above random ones.
//!
//! Inputs are written directly with the dataset writer (an ingest-shaped directory and the embed stage's two
//! embeddings datasets with vectors chosen here), so every score is known; the demo-world tests run the real
//! chain world -> ingest -> embed (a tiny CLIP) -> mine.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, FixedSizeListArray, Float32Array, Int32Array, RecordBatch,
    StringArray, UInt64Array,
};
use arrow::datatypes::{DataType, Field, Float32Type, UInt32Type};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use umrank::dataset::{Dataset, DatasetWriter, WriteOptions};
use umrank::digest::sha256_file;
use umrank::mine::{FilterConfig, MineConfig, MineStage, Scope};
use umrank::pipeline::{RejectPolicy, RunOptions, Runner};
use umrank::schema;
use umrank::shard::Shard;

use crate::common::cli::umrank_ok;

// ---------------------------------------------------------------------------------------------------------------
// Inputs

struct Doc {
    did: String,
    dataset: String,
}

struct Query {
    qid: String,
    dataset: String,
    split: String,
}

/// An ingest stage directory's worth of records, plus one vector per id.
#[derive(Default)]
struct Instance {
    docs: Vec<Doc>,
    queries: Vec<Query>,
    qrels: Vec<(String, String, i32)>,
    dim: usize,
    vectors: BTreeMap<(String, &'static str), Vec<f32>>,
}

impl Instance {
    fn doc(&mut self, did: &str, dataset: &str, vector: Vec<f32>) {
        self.docs.push(Doc {
            did: did.into(),
            dataset: dataset.into(),
        });
        self.vectors.insert((did.into(), "doc"), vector);
    }

    fn query(&mut self, qid: &str, dataset: &str, split: &str, vector: Vec<f32>) {
        self.queries.push(Query {
            qid: qid.into(),
            dataset: dataset.into(),
            split: split.into(),
        });
        self.vectors.insert((qid.into(), "query"), vector);
    }

    fn qrel(&mut self, qid: &str, did: &str, relevance: i32) {
        self.qrels.push((qid.into(), did.into(), relevance));
    }

    fn vector(&self, id: &str, kind: &'static str) -> Option<&Vec<f32>> {
        self.vectors.get(&(id.to_string(), kind))
    }

    /// Writes `dir/ingest/{corpus,queries,qrels}` and `dir/embed/embeddings`; returns the two stage dirs.
    fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (ingest, embed) = (dir.join("ingest"), dir.join("embed"));
        write_batch(
            &ingest.join("corpus"),
            "corpus",
            vec![
                strings(self.docs.iter().map(|d| d.did.as_str())),
                strings(self.docs.iter().map(|_| "text")),
                strings(self.docs.iter().map(|d| d.did.as_str())),
                Arc::new(StringArray::from(vec![None::<&str>; self.docs.len()])),
                strings(self.docs.iter().map(|d| d.dataset.as_str())),
                strings(self.docs.iter().map(|d| d.dataset.as_str())),
                strings(self.docs.iter().map(|_| "pool.jsonl")),
                Arc::new(UInt64Array::from_iter_values(1..=self.docs.len() as u64)),
            ],
        );
        let n = self.queries.len();
        write_batch(
            &ingest.join("queries"),
            "queries",
            vec![
                strings(self.queries.iter().map(|q| q.qid.as_str())),
                strings(self.queries.iter().map(|_| "text")),
                strings(self.queries.iter().map(|q| q.qid.as_str())),
                Arc::new(StringArray::from(vec![None::<&str>; n])),
                Arc::new(StringArray::from(vec![None::<&str>; n])),
                Arc::new(Int32Array::from(vec![None; n])),
                Arc::new(StringArray::from(vec![None::<&str>; n])),
                strings(self.queries.iter().map(|q| q.dataset.as_str())),
                strings(self.queries.iter().map(|q| q.dataset.as_str())),
                strings(self.queries.iter().map(|q| q.split.as_str())),
                strings(self.queries.iter().map(|_| "queries.jsonl")),
                Arc::new(UInt64Array::from_iter_values(1..=n as u64)),
            ],
        );
        write_batch(
            &ingest.join("qrels"),
            "qrels",
            vec![
                strings(self.qrels.iter().map(|(q, _, _)| q.as_str())),
                strings(self.qrels.iter().map(|(_, d, _)| d.as_str())),
                Arc::new(Int32Array::from_iter_values(
                    self.qrels.iter().map(|(_, _, r)| *r),
                )),
            ],
        );
        let rows: Vec<EmbeddingRow> = self
            .vectors
            .iter()
            .map(|((id, kind), vector)| (id.as_str(), *kind, vector.as_slice()))
            .collect();
        write_embeddings(&embed, self.dim, &rows, "fixture-model");
        (ingest, embed)
    }
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn write_batch(dir: &Path, kind: &str, columns: Vec<ArrayRef>) {
    let mut writer = DatasetWriter::create(dir, kind, Shard::ALL).unwrap();
    let batch = RecordBatch::try_new(writer.arrow_schema(), columns).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
}

/// (id, kind, vector) of one embeddings row.
type EmbeddingRow<'a> = (&'a str, &'a str, &'a [f32]);

/// The embed stage's two datasets under `embed_dir`: rows of kind `query` go to `query_embeddings`, all others to
/// `doc_embeddings`, in the order given.
fn write_embeddings(embed_dir: &Path, dim: usize, rows: &[EmbeddingRow], model: &str) {
    let (queries, docs): (Vec<EmbeddingRow>, Vec<EmbeddingRow>) =
        rows.iter().partition(|(_, kind, _)| *kind == "query");
    write_embedding_dataset(&embed_dir.join("doc_embeddings"), dim, &docs, model);
    write_embedding_dataset(&embed_dir.join("query_embeddings"), dim, &queries, model);
}

/// One dataset of kind `embeddings` (schemas/embeddings.json).
fn write_embedding_dataset(dir: &Path, dim: usize, rows: &[EmbeddingRow], model: &str) {
    let schema = schema::get("embeddings").unwrap();
    let arrow = schema.arrow_with_width(dim as i32);
    let mut writer = DatasetWriter::create_with(
        dir,
        schema,
        arrow.clone(),
        Shard::ALL,
        WriteOptions::default(),
    )
    .unwrap();
    let values: Vec<f32> = rows
        .iter()
        .flat_map(|(_, _, v)| v.iter().copied())
        .collect();
    let item = Arc::new(Field::new("item", DataType::Float32, false));
    let vectors =
        FixedSizeListArray::try_new(item, dim as i32, Arc::new(Float32Array::from(values)), None)
            .unwrap();
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|(id, _, _)| *id)),
        strings(rows.iter().map(|(_, kind, _)| *kind)),
        Arc::new(vectors),
        strings(rows.iter().map(|_| model)),
    ];
    writer
        .write(&RecordBatch::try_new(arrow, columns).unwrap())
        .unwrap();
    writer.finish().unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// Running the stage and reading its outputs

fn run_mine(
    ingest: &Path,
    embed: &Path,
    out: &Path,
    config: MineConfig,
    shard: Option<Shard>,
    seed: u64,
) -> Result<(), String> {
    let config = MineConfig {
        ingest_dir: Some(ingest.to_path_buf()),
        embeddings_dir: Some(embed.to_path_buf()),
        ..config
    };
    let stage = MineStage::new(config).map_err(|e| e.to_string())?;
    let options = RunOptions {
        shard,
        force: true,
        policy: RejectPolicy {
            max_fraction: 1.0,
            strict: false,
        },
        dirs: [("mine".to_string(), out.to_path_buf())].into(),
        ..Default::default()
    };
    Runner::new(
        out.to_path_buf(),
        seed,
        vec![("mine".into(), Box::new(stage))],
        options,
    )
    .run()
    .map(|_| ())
    .map_err(|e| {
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(&format!(": {cause}"));
            source = cause.source();
        }
        message
    })
}

/// Runs the stage as `parts` shards into `out` (or unsharded for `parts == 1`).
fn run_parts(ingest: &Path, embed: &Path, out: &Path, config: &MineConfig, parts: u32, seed: u64) {
    for index in 0..parts {
        let shard = (parts > 1).then(|| Shard::new(index, parts).unwrap());
        run_mine(ingest, embed, out, config.clone(), shard, seed).unwrap();
    }
}

#[derive(Debug, Clone, PartialEq)]
struct CandidateRow {
    qid: String,
    /// (did, score bits, rank)
    ranked: Vec<(String, u32, u32)>,
    retriever: String,
    k: u32,
}

#[derive(Debug, Clone, PartialEq)]
struct NegativeRow {
    qid: String,
    positives: Vec<String>,
    hard: Vec<(String, f32, u32)>,
    random: Vec<(String, f32)>,
    short: u32,
    filter: serde_json::Value,
    retriever: String,
}

fn batches(dir: &Path) -> Vec<RecordBatch> {
    Dataset::open(dir)
        .unwrap()
        .batches()
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn column<'a>(batch: &'a RecordBatch, name: &str) -> &'a ArrayRef {
    batch.column_by_name(name).unwrap()
}

/// The (did, score, rank?) structs of list `name` in row `row`.
fn structs(batch: &RecordBatch, name: &str, row: usize) -> Vec<(String, f32, Option<u32>)> {
    let list = column(batch, name).as_list::<i32>().value(row);
    let items = list.as_struct();
    let dids = items.column(0).as_string::<i32>();
    let scores = items.column(1).as_primitive::<Float32Type>();
    let ranks = (items.num_columns() > 2).then(|| items.column(2).as_primitive::<UInt32Type>());
    (0..items.len())
        .map(|i| {
            (
                dids.value(i).to_string(),
                scores.value(i),
                ranks.map(|r| r.value(i)),
            )
        })
        .collect()
}

fn read_candidates(dir: &Path) -> Vec<CandidateRow> {
    let mut rows = Vec::new();
    for batch in batches(&dir.join("candidates")) {
        let qids = column(&batch, "qid").as_string::<i32>();
        let retrievers = column(&batch, "retriever").as_string::<i32>();
        let ks = column(&batch, "k").as_primitive::<UInt32Type>();
        for row in 0..batch.num_rows() {
            rows.push(CandidateRow {
                qid: qids.value(row).to_string(),
                ranked: structs(&batch, "ranked", row)
                    .into_iter()
                    .map(|(did, score, rank)| (did, score.to_bits(), rank.unwrap()))
                    .collect(),
                retriever: retrievers.value(row).to_string(),
                k: ks.value(row),
            });
        }
    }
    rows.sort_by(|a, b| a.qid.cmp(&b.qid));
    rows
}

fn read_negatives(dir: &Path) -> Vec<NegativeRow> {
    let mut rows = Vec::new();
    for batch in batches(&dir.join("negatives")) {
        let qids = column(&batch, "qid").as_string::<i32>();
        let positives = column(&batch, "positives").as_list::<i32>();
        let shorts = column(&batch, "short").as_primitive::<UInt32Type>();
        let filters = column(&batch, "filter").as_string::<i32>();
        let retrievers = column(&batch, "retriever").as_string::<i32>();
        for row in 0..batch.num_rows() {
            let list = positives.value(row);
            let list = list.as_string::<i32>();
            rows.push(NegativeRow {
                qid: qids.value(row).to_string(),
                positives: (0..list.len()).map(|i| list.value(i).to_string()).collect(),
                hard: structs(&batch, "hard", row)
                    .into_iter()
                    .map(|(did, score, rank)| (did, score, rank.unwrap()))
                    .collect(),
                random: structs(&batch, "random", row)
                    .into_iter()
                    .map(|(did, score, _)| (did, score))
                    .collect(),
                short: shorts.value(row),
                filter: serde_json::from_str(filters.value(row)).unwrap(),
                retriever: retrievers.value(row).to_string(),
            });
        }
    }
    rows.sort_by(|a, b| a.qid.cmp(&b.qid));
    rows
}

fn read_stats(dir: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(dir.join("stats.json")).unwrap()).unwrap()
}

/// (reason, record id) of every reject row, sorted.
fn read_rejects(dir: &Path) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for batch in batches(&dir.join("rejects.parquet")) {
        let reasons = column(&batch, "reason").as_string::<i32>();
        let ids = column(&batch, "record_id").as_string::<i32>();
        for row in 0..batch.num_rows() {
            rows.push((reasons.value(row).to_string(), ids.value(row).to_string()));
        }
    }
    rows.sort();
    rows
}

// ---------------------------------------------------------------------------------------------------------------
// References

/// The kernel's score: one FMA chain over the dimensions in ascending order, from +0.
fn fma_chain(a: &[f32], b: &[f32]) -> f32 {
    a.iter()
        .zip(b)
        .fold(0.0f32, |acc, (&x, &y)| x.mul_add(y, acc))
}

/// The exact first-stage lists by sorting every score: score descending, then did descending (trec_eval).
fn brute_force_candidates(instance: &Instance, config: &MineConfig) -> Vec<CandidateRow> {
    let mut rows = Vec::new();
    for query in &instance.queries {
        let wanted = match &config.candidate_splits {
            Some(splits) => splits.contains(&query.split),
            None => !config.negative_splits.contains(&query.split),
        };
        let Some(vector) = instance.vector(&query.qid, "query").filter(|_| wanted) else {
            continue;
        };
        let mut scored: Vec<(f32, &str)> = instance
            .docs
            .iter()
            .filter(|doc| config.scope == Scope::Corpus || doc.dataset == query.dataset)
            .filter_map(|doc| {
                let doc_vector = instance.vector(&doc.did, "doc")?;
                Some((fma_chain(doc_vector, vector), doc.did.as_str()))
            })
            .collect();
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then_with(|| b.1.cmp(a.1)));
        scored.truncate(config.k);
        rows.push(CandidateRow {
            qid: query.qid.clone(),
            ranked: scored
                .iter()
                .enumerate()
                .map(|(i, (score, did))| (did.to_string(), score.to_bits(), i as u32 + 1))
                .collect(),
            retriever: "fixture-model".into(),
            k: config.k as u32,
        });
    }
    rows.sort_by(|a, b| a.qid.cmp(&b.qid));
    rows
}

/// A random instance with many exact ties: vector entries are multiples of 1/2 in [-1, 1], ids shuffled so that
/// id order and insertion order differ, 1 to 3 positives per query (some queries none, some judged
/// non-relevant), two datasets, three splits.
fn random_instance(rng: &mut ChaCha8Rng, docs: usize, queries: usize, dim: usize) -> Instance {
    let mut instance = Instance {
        dim,
        ..Instance::default()
    };
    let vector = |rng: &mut ChaCha8Rng| -> Vec<f32> {
        (0..dim)
            .map(|_| rng.random_range(-2i32..=2) as f32 / 2.0)
            .collect()
    };
    let mut numbers: Vec<usize> = (0..docs).collect();
    numbers.shuffle(rng);
    for number in numbers {
        let dataset = ["alpha", "beta"][rng.random_range(0..2)];
        let v = vector(rng);
        instance.doc(&format!("d{number}"), dataset, v);
    }
    for q in 0..queries {
        let dataset = ["alpha", "beta"][rng.random_range(0..2)];
        let split = ["train", "train", "val", "test"][rng.random_range(0..4)];
        let qid = format!("q{q}");
        let v = vector(rng);
        instance.query(&qid, dataset, split, v);
        let same: Vec<String> = instance
            .docs
            .iter()
            .filter(|d| d.dataset == dataset)
            .map(|d| d.did.clone())
            .collect();
        if same.is_empty() || rng.random_range(0..8) == 0 {
            continue;
        }
        for _ in 0..rng.random_range(1..=3) {
            let did = same[rng.random_range(0..same.len())].clone();
            instance.qrel(&qid, &did, 1);
        }
        let judged_negative = same[rng.random_range(0..same.len())].clone();
        instance.qrel(&qid, &judged_negative, 0);
    }
    instance
}

/// Relevant dids per qid, as the stage reads them.
fn positives_of(instance: &Instance) -> BTreeMap<String, BTreeSet<String>> {
    let mut positives: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (qid, did, relevance) in &instance.qrels {
        if *relevance > 0 {
            positives
                .entry(qid.clone())
                .or_default()
                .insert(did.clone());
        }
    }
    positives
}

fn small_config(k: usize, chunk_docs: usize, scope: Scope) -> MineConfig {
    MineConfig {
        k,
        mining_k: k,
        scope,
        chunk_docs,
        query_block: 48,
        negatives_per_group: 6,
        ..MineConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Tests

#[test]
fn candidates_equal_a_brute_force_sort_on_every_path_ties_included() {
    for seed in 0..4u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let instance = random_instance(&mut rng, 70, 40, 3);
        let dir = tempfile::tempdir().unwrap();
        let (ingest, embed) = instance.write(dir.path());
        for scope in [Scope::Pool, Scope::Corpus] {
            let k = [5, 12, 100][seed as usize % 3];
            let expected = brute_force_candidates(&instance, &small_config(k, 1, scope));
            let ties = expected
                .iter()
                .flat_map(|row| row.ranked.windows(2))
                .filter(|pair| pair[0].1 == pair[1].1)
                .count();
            assert!(ties > 10, "the instance must exercise ties ({ties})");
            for (chunk_docs, parts) in [(1, 1), (7, 3), (1024, 1), (4, 2)] {
                let out = dir
                    .path()
                    .join(format!("mine-{scope:?}-{chunk_docs}-{parts}"));
                let config = small_config(k, chunk_docs, scope);
                run_parts(&ingest, &embed, &out, &config, parts, 3);
                let got = read_candidates(&out);
                assert_eq!(
                    got, expected,
                    "seed {seed}, {scope:?}, chunk {chunk_docs}, {parts} parts"
                );
            }
        }
    }
}

#[test]
fn sharded_parts_read_back_as_the_unsharded_output() {
    let mut rng = ChaCha8Rng::seed_from_u64(31);
    let instance = random_instance(&mut rng, 120, 60, 4);
    let dir = tempfile::tempdir().unwrap();
    let (ingest, embed) = instance.write(dir.path());
    let config = small_config(20, 16, Scope::Pool);
    let whole = dir.path().join("whole");
    run_parts(&ingest, &embed, &whole, &config, 1, 9);
    let (candidates, negatives) = (read_candidates(&whole), read_negatives(&whole));
    assert!(!candidates.is_empty() && !negatives.is_empty());
    for parts in [2, 5] {
        let out = dir.path().join(format!("parts-{parts}"));
        run_parts(&ingest, &embed, &out, &config, parts, 9);
        assert_eq!(
            Dataset::open(&out.join("negatives")).unwrap().parts().len(),
            parts as usize
        );
        assert_eq!(read_candidates(&out), candidates, "{parts} parts");
        assert_eq!(read_negatives(&out), negatives, "{parts} parts");
        // Each part saves the statistics of its own queries; together they count every query once.
        let total: u64 = (0..parts)
            .map(|index| {
                let shard = Shard::new(index, parts).unwrap();
                let text =
                    fs::read_to_string(umrank::mine::stage::stats_path(&out, shard)).unwrap();
                let stats: serde_json::Value = serde_json::from_str(&text).unwrap();
                stats["queries"].as_u64().unwrap()
            })
            .sum();
        assert_eq!(total, negatives.len() as u64);
    }
}

#[test]
fn no_positive_is_ever_a_negative() {
    let dir = tempfile::tempdir().unwrap();
    for seed in 0..25u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(100 + seed);
        let (docs, queries, dim) = (
            rng.random_range(3..60),
            rng.random_range(1..25),
            rng.random_range(1..5),
        );
        let instance = random_instance(&mut rng, docs, queries, dim);
        let root = dir.path().join(format!("case-{seed}"));
        let (ingest, embed) = instance.write(&root);
        let n = rng.random_range(1..20);
        let config = MineConfig {
            mining_k: rng.random_range(1..40),
            scope: [Scope::Pool, Scope::Corpus][rng.random_range(0..2)],
            negatives_per_group: n,
            hard_ratio: rng.random_range(0..3),
            random_ratio: rng.random_range(1..3),
            chunk_docs: rng.random_range(1..20),
            filter: FilterConfig {
                relative_margin: [None, Some(0.05), Some(0.5)][rng.random_range(0..3)],
                max_rank: [None, Some(5)][rng.random_range(0..2)],
                ..FilterConfig::default()
            },
            ..MineConfig::default()
        };
        let out = root.join("mine");
        run_mine(&ingest, &embed, &out, config.clone(), None, seed).unwrap();
        let positives = positives_of(&instance);
        let rows = read_negatives(&out);
        let train_with_positives = instance
            .queries
            .iter()
            .filter(|q| q.split == "train" && positives.contains_key(&q.qid))
            .count();
        assert_eq!(rows.len(), train_with_positives, "seed {seed}");
        for row in rows {
            let gold = &positives[&row.qid];
            assert_eq!(row.positives, gold.iter().cloned().collect::<Vec<_>>());
            let mut negatives: Vec<&str> = row
                .hard
                .iter()
                .map(|(did, _, _)| did.as_str())
                .chain(row.random.iter().map(|(did, _)| did.as_str()))
                .collect();
            assert!(
                negatives.iter().all(|did| !gold.contains(*did)),
                "seed {seed}: {} has a positive among its negatives",
                row.qid
            );
            negatives.sort_unstable();
            negatives.dedup();
            assert_eq!(
                negatives.len(),
                row.hard.len() + row.random.len(),
                "seed {seed}: duplicate negative"
            );
            assert_eq!(
                row.hard.len() + row.random.len() + row.short as usize,
                n,
                "seed {seed}: found + short = N"
            );
            assert!(row
                .hard
                .iter()
                .all(|(_, _, rank)| *rank as usize <= config.mining_k));
        }
    }
}

/// One query, two positives scoring 0.75 and 0.5, and nine other documents at known scores (all exact in f32).
/// Hard negatives are everything the filter keeps (N is large, all hard), so the `hard` list IS the kept set.
fn crafted() -> Instance {
    let mut instance = Instance {
        dim: 2,
        ..Instance::default()
    };
    let others = [0.875, 0.625, 0.4375, 0.375, 0.3125, 0.25, 0.125, 0.0, -0.25];
    for (i, score) in others.iter().enumerate() {
        instance.doc(&format!("n{i}"), "set", vec![*score, 1.0]);
    }
    instance.doc("p-high", "set", vec![0.75, 1.0]);
    instance.doc("p-low", "set", vec![0.5, 1.0]);
    // The query's second coordinate is 0: score = the document's first coordinate.
    instance.query("train-q", "set", "train", vec![1.0, 0.0]);
    instance.query("test-q", "set", "test", vec![1.0, 0.0]);
    for qid in ["train-q", "test-q"] {
        instance.qrel(qid, "p-high", 1);
        instance.qrel(qid, "p-low", 2);
    }
    instance
}

/// A filter setting, the documents it keeps (n0..n8 by index), its drop counts (rank window, max score,
/// relative, absolute) and the score ceiling it implies.
struct FilterCase {
    name: &'static str,
    filter: FilterConfig,
    kept: &'static [usize],
    dropped: [u64; 4],
    ceiling: Option<f32>,
}

fn case(
    name: &'static str,
    filter: FilterConfig,
    kept: &'static [usize],
    dropped: [u64; 4],
    ceiling: Option<f32>,
) -> FilterCase {
    FilterCase {
        name,
        filter,
        kept,
        dropped,
        ceiling,
    }
}

#[test]
fn filters_keep_and_drop_exactly_as_configured() {
    let instance = crafted();
    let dir = tempfile::tempdir().unwrap();
    let (ingest, embed) = instance.write(dir.path());
    // Ranks among the non-positive documents: n0 (0.875) is 1, ..., n8 (-0.25) is 9.
    let off = FilterConfig {
        relative_margin: None,
        ..FilterConfig::default()
    };
    let cases: [FilterCase; 6] = [
        // Ceiling 0.5 - 0.5 x 0.25 = 0.375: a score equal to it is dropped.
        case(
            "relative",
            FilterConfig {
                relative_margin: Some(0.25),
                ..off
            },
            &[4, 5, 6, 7, 8],
            [0, 0, 4, 0],
            Some(0.375),
        ),
        case(
            "absolute",
            FilterConfig {
                absolute_margin: Some(0.0625),
                ..off
            },
            &[3, 4, 5, 6, 7, 8],
            [0, 0, 0, 3],
            Some(0.4375),
        ),
        case(
            "max score",
            FilterConfig {
                max_score: Some(0.3125),
                ..off
            },
            &[5, 6, 7, 8],
            [0, 5, 0, 0],
            Some(0.3125),
        ),
        case(
            "rank window",
            FilterConfig {
                min_rank: 2,
                max_rank: Some(4),
                ..off
            },
            &[1, 2, 3],
            [6, 0, 0, 0],
            None,
        ),
        // The window is checked first, then max score, relative, absolute: each drop is counted once.
        case(
            "combined",
            FilterConfig {
                relative_margin: Some(0.25),
                absolute_margin: Some(0.0625),
                max_score: Some(0.5),
                min_rank: 1,
                max_rank: Some(6),
            },
            &[4, 5],
            [3, 2, 2, 0],
            Some(0.375),
        ),
        // The default (0.05): ceiling 0.5 - 0.025 = 0.475.
        case(
            "default",
            FilterConfig::default(),
            &[2, 3, 4, 5, 6, 7, 8],
            [0, 0, 2, 0],
            Some(0.5 - 0.5 * 0.05),
        ),
    ];
    for FilterCase {
        name,
        filter,
        kept,
        dropped,
        ceiling,
    } in cases
    {
        let out = dir.path().join(name.replace(' ', "-"));
        let config = MineConfig {
            k: 20,
            mining_k: 20,
            negatives_per_group: 50,
            hard_ratio: 1,
            random_ratio: 0,
            filter,
            ..MineConfig::default()
        };
        run_mine(&ingest, &embed, &out, config, None, 0).unwrap();
        let rows = read_negatives(&out);
        assert_eq!(rows.len(), 1, "{name}");
        let row = &rows[0];
        let expected: Vec<(String, u32)> = kept
            .iter()
            .map(|&i| (format!("n{i}"), i as u32 + 1))
            .collect();
        let got: Vec<(String, u32)> = row
            .hard
            .iter()
            .map(|(did, _, rank)| (did.clone(), *rank))
            .collect();
        assert_eq!(got, expected, "{name}: kept set");
        assert!(row.random.is_empty());
        assert_eq!(row.short as usize, 50 - kept.len(), "{name}");
        assert_eq!(row.positives, ["p-high", "p-low"]);
        assert_eq!(row.filter["min_positive"], 0.5, "{name}");
        match ceiling {
            Some(c) => assert_eq!(row.filter["ceiling"].as_f64().unwrap() as f32, c, "{name}"),
            None => assert!(row.filter["ceiling"].is_null(), "{name}"),
        }
        assert_eq!(
            row.filter["relative_margin"].as_f64().map(|m| m as f32),
            filter.relative_margin
        );
        let stats = read_stats(&out);
        let counts = [
            "rank_window",
            "max_score",
            "relative_margin",
            "absolute_margin",
        ]
        .map(|key| stats["dropped"][key].as_u64().unwrap());
        assert_eq!(counts, dropped, "{name}: drop counts");

        // The test split's candidates keep the gold documents in their places.
        let candidates = read_candidates(&out);
        assert_eq!(candidates.len(), 1);
        let order: Vec<&str> = candidates[0]
            .ranked
            .iter()
            .map(|(did, _, _)| did.as_str())
            .collect();
        assert_eq!(&order[..4], ["n0", "p-high", "n1", "p-low"]);
    }
}

#[test]
fn hard_and_random_negatives_follow_the_ratio_and_avoid_suspects() {
    let instance = crafted();
    let dir = tempfile::tempdir().unwrap();
    let (ingest, embed) = instance.write(dir.path());
    let out = dir.path().join("mine");
    let config = MineConfig {
        negatives_per_group: 4,
        filter: FilterConfig {
            relative_margin: Some(0.25),
            ..FilterConfig::default()
        },
        ..MineConfig::default()
    };
    run_mine(&ingest, &embed, &out, config, None, 5).unwrap();
    let row = &read_negatives(&out)[0];
    assert_eq!((row.hard.len(), row.random.len(), row.short), (2, 2, 0));
    // Random negatives come from the pool minus the positives, the hard picks and the suspected false
    // negatives (n0..n3, at or above the ceiling).
    for (did, score) in &row.random {
        assert!(
            ["n4", "n5", "n6", "n7", "n8"].contains(&did.as_str()),
            "{did}"
        );
        assert!(row.hard.iter().all(|(hard, _, _)| hard != did));
        assert!(*score < 0.375);
    }
    assert!(row.hard.windows(2).all(|pair| pair[0].2 < pair[1].2));
}

#[test]
fn a_rerun_is_byte_identical_and_the_seed_matters() {
    let mut rng = ChaCha8Rng::seed_from_u64(77);
    let instance = random_instance(&mut rng, 200, 60, 4);
    let dir = tempfile::tempdir().unwrap();
    let (ingest, embed) = instance.write(dir.path());
    let config = small_config(30, 32, Scope::Corpus);
    let files = |out: &Path| -> Vec<String> {
        [
            "candidates/part-00000-of-00001.parquet",
            "negatives/part-00000-of-00001.parquet",
            "rejects.parquet",
            "stats.json",
        ]
        .iter()
        .map(|file| sha256_file(&out.join(file)).unwrap())
        .collect()
    };
    let (first, second, reseeded) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    run_mine(&ingest, &embed, &first, config.clone(), None, 1).unwrap();
    run_mine(&ingest, &embed, &second, config.clone(), None, 1).unwrap();
    assert_eq!(files(&first), files(&second));
    run_mine(&ingest, &embed, &second, config.clone(), None, 1).unwrap();
    assert_eq!(files(&first), files(&second), "forced rerun in place");
    run_mine(&ingest, &embed, &reseeded, config, None, 2).unwrap();
    assert_eq!(
        files(&first)[0],
        files(&reseeded)[0],
        "candidates do not depend on the seed"
    );
    assert_ne!(
        files(&first)[1],
        files(&reseeded)[1],
        "another seed samples other negatives"
    );
}

#[test]
fn unusable_queries_and_documents_become_rejects() {
    let mut instance = Instance {
        dim: 2,
        ..Instance::default()
    };
    for i in 0..6 {
        instance.doc(&format!("d{i}"), "set", vec![i as f32, 1.0]);
    }
    instance.query("q-ok", "set", "train", vec![1.0, 0.0]);
    instance.query("q-no-qrels", "set", "train", vec![1.0, 0.0]);
    instance.query("q-judged-irrelevant", "set", "train", vec![1.0, 0.0]);
    instance.query("q-test-no-qrels", "set", "test", vec![1.0, 0.0]);
    instance.query("q-positive-unembedded", "set", "train", vec![0.0, 1.0]);
    instance.qrel("q-ok", "d1", 1);
    instance.qrel("q-judged-irrelevant", "d2", 0);
    instance.qrel("q-positive-unembedded", "d-missing", 1);
    instance.doc("d-missing", "set", vec![0.0, 0.0]);
    instance.vectors.remove(&("d-missing".to_string(), "doc"));
    instance.query("q-unembedded", "set", "test", vec![0.0, 0.0]);
    instance
        .vectors
        .remove(&("q-unembedded".to_string(), "query"));
    let dir = tempfile::tempdir().unwrap();
    let (ingest, embed) = instance.write(dir.path());
    let out = dir.path().join("mine");
    run_mine(&ingest, &embed, &out, MineConfig::default(), None, 0).unwrap();

    let rejects = read_rejects(&out);
    let expected: Vec<(String, String)> = [
        ("no_embedding", "d-missing"),
        ("no_embedding", "q-unembedded"),
        ("no_positives", "q-judged-irrelevant"),
        ("no_positives", "q-no-qrels"),
        ("no_positives", "q-positive-unembedded"),
    ]
    .iter()
    .map(|(reason, id)| (reason.to_string(), id.to_string()))
    .collect();
    assert_eq!(rejects, expected);
    let negatives = read_negatives(&out);
    assert_eq!(
        negatives.iter().map(|r| r.qid.as_str()).collect::<Vec<_>>(),
        ["q-ok"]
    );
    let candidates = read_candidates(&out);
    assert_eq!(
        candidates
            .iter()
            .map(|r| r.qid.as_str())
            .collect::<Vec<_>>(),
        ["q-test-no-qrels"],
        "a test query needs no qrels to get candidates"
    );
    assert_eq!(candidates[0].ranked.len(), 6);
    let stats = read_stats(&out);
    assert_eq!(stats["queries_without_positives"], 3);
    assert_eq!(stats["queries"], 1);
    assert_eq!(stats["candidate_queries"], 1);
    assert_eq!(stats["retriever"], "fixture-model");
}

#[test]
fn inconsistent_embeddings_are_errors_that_name_the_dataset() {
    let instance = crafted();
    let dir = tempfile::tempdir().unwrap();
    let (ingest, _) = instance.write(dir.path());
    let query: &[f32] = &[1.0, 0.0];
    let cases: [(&str, Vec<EmbeddingRow>, &str); 4] = [
        (
            "twice",
            vec![("n0", "doc", &[1.0, 0.0]), ("n0", "doc", &[0.0, 1.0])],
            "doc_embeddings: row 2: a second vector for doc \"n0\"",
        ),
        (
            "kind",
            vec![("n0", "document", &[1.0, 0.0])],
            "doc_embeddings: row 1: kind must be `doc` in this dataset",
        ),
        ("empty", vec![], "no embeddings"),
        (
            "mixed",
            vec![("n0", "doc", &[1.0, 0.0]), ("train-q", "query", query)],
            "query_embeddings: embeddings from more than one model",
        ),
    ];
    for (name, rows, message) in cases {
        let embed = dir.path().join(name);
        if name == "mixed" {
            write_embedding_dataset(&embed.join("doc_embeddings"), 2, &rows[..1], "model-a");
            write_embedding_dataset(&embed.join("query_embeddings"), 2, &rows[1..], "model-b");
        } else {
            write_embeddings(&embed, 2, &rows, "model");
        }
        let error = run_mine(
            &ingest,
            &embed,
            &dir.path().join(format!("out-{name}")),
            MineConfig::default(),
            None,
            0,
        )
        .unwrap_err();
        assert!(error.contains(message), "{name}: {error}");
    }
    // Vectors of two widths cannot be scored against each other.
    let embed = dir.path().join("widths");
    write_embedding_dataset(
        &embed.join("doc_embeddings"),
        2,
        &[("n0", "doc", &[1.0, 0.0])],
        "m",
    );
    write_embedding_dataset(
        &embed.join("query_embeddings"),
        3,
        &[("train-q", "query", &[1.0, 0.0, 0.0])],
        "m",
    );
    let error = run_mine(
        &ingest,
        &embed,
        &dir.path().join("out-widths"),
        MineConfig::default(),
        None,
        0,
    )
    .unwrap_err();
    assert!(error.contains("dimension mismatch"), "{error}");
    let bad = MineConfig {
        k: 0,
        ..MineConfig::default()
    };
    assert!(MineStage::new(bad).is_err());
    let both = MineConfig {
        from: Some("ingest".into()),
        ingest_dir: Some(PathBuf::from("x")),
        ..MineConfig::default()
    };
    let error = MineStage::new(both).err().unwrap().to_string();
    assert!(error.contains("not both"), "{error}");
}

// ---------------------------------------------------------------------------------------------------------------
// The demo world, through the command line

/// The tiny CLIP the embed stage's tests use (random weights: a weak retriever, but a real one).
fn clip_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/embedders/clip")
}

/// How much harder the hard negatives of a mining run are than its random ones, measured within each query
/// (queries differ in how high everything scores, so pooled means mix easy and hard queries).
#[derive(Debug)]
struct Hardness {
    /// Queries with both kinds of negatives.
    queries: usize,
    /// (hard, random) pairs within those queries.
    pairs: usize,
    /// Share of the pairs whose hard negative scores above the random one (ties count half): 0.5 when hard
    /// negatives are drawn like random ones, 1.0 when every hard negative outscores its query's random ones.
    hard_wins: f64,
    /// Mean over the queries of (mean hard score - mean random score).
    mean_gap: f64,
    /// Standard error of `mean_gap`.
    gap_error: f64,
}

fn hardness(rows: &[NegativeRow]) -> Hardness {
    let (mut pairs, mut wins, mut gaps) = (0usize, 0.0f64, Vec::new());
    for row in rows
        .iter()
        .filter(|r| !r.hard.is_empty() && !r.random.is_empty())
    {
        for (_, hard, _) in &row.hard {
            for (_, random) in &row.random {
                pairs += 1;
                wins += match hard.partial_cmp(random) {
                    Some(std::cmp::Ordering::Greater) => 1.0,
                    Some(std::cmp::Ordering::Equal) => 0.5,
                    _ => 0.0,
                };
            }
        }
        let mean = |scores: &mut dyn Iterator<Item = f32>| {
            let scores: Vec<f64> = scores.map(f64::from).collect();
            scores.iter().sum::<f64>() / scores.len() as f64
        };
        gaps.push(
            mean(&mut row.hard.iter().map(|h| h.1)) - mean(&mut row.random.iter().map(|r| r.1)),
        );
    }
    let n = gaps.len() as f64;
    let mean_gap = gaps.iter().sum::<f64>() / n;
    let variance = gaps.iter().map(|g| (g - mean_gap).powi(2)).sum::<f64>() / (n - 1.0);
    Hardness {
        queries: gaps.len(),
        pairs,
        hard_wins: wins / pairs as f64,
        mean_gap,
        gap_error: (variance / n).sqrt(),
    }
}

/// `umrank mine` into `dir/out` on the demo world stages in `dir`, with extra options; returns its stdout (the
/// statistics table).
fn mine_demo(dir: &Path, out: &str, extra: &[&str]) -> String {
    let path = |name: &str| dir.join(name).display().to_string();
    let (ingest, embed, out) = (path("ingest"), path("embed"), path(out));
    let mut args = vec![
        "mine",
        "--out",
        &out,
        "--from",
        &ingest,
        "--embeddings",
        &embed,
        "--k",
        "20",
        // The small world's pools hold 60 documents: hard negatives come from the top 16 of the 59 others.
        // Mining all of them (the default top-100) would make "hard" a uniform draw from the whole pool, the
        // same draw as "random".
        "--mining-k",
        "16",
    ];
    args.extend_from_slice(extra);
    umrank_ok(&args)
}

#[test]
fn mining_the_demo_world_prints_statistics_and_hard_negatives_are_harder() {
    // The real chain, through the command line: world -> ingest -> embed (tiny CLIP) -> mine.
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).display().to_string();
    umrank_ok(&["-q", "world", "--out", &path("world"), "--size", "small"]);
    umrank_ok(&[
        "-q",
        "ingest",
        "--out",
        &path("ingest"),
        "--root",
        &path("world/mbeir"),
    ]);
    let clip = clip_dir().display().to_string();
    umrank_ok(&[
        "-q",
        "embed",
        "--out",
        &path("embed"),
        "--from",
        &path("ingest"),
        "--model",
        &clip,
    ]);
    let stdout = mine_demo(dir.path(), "mine", &[]);
    println!("{stdout}");
    for line in [
        "mine statistics",
        "positives",
        "hard negatives",
        "random negatives",
        "dropped by filter:",
        "queries short of negatives:",
        "mean score gap",
    ] {
        assert!(stdout.contains(line), "the table has `{line}`:\n{stdout}");
    }
    let mine = dir.path().join("mine");
    let stats = read_stats(&mine);
    // Small world: 5 tasks x 8 train queries, one positive each; val + test get candidates.
    assert_eq!(stats["queries"], 40);
    assert_eq!(stats["groups"], 40);
    assert_eq!(stats["candidate_queries"], 5 * (3 + 4));
    let retriever = stats["retriever"].as_str().unwrap();
    let candidates = read_candidates(&mine);
    assert!(candidates
        .iter()
        .all(|row| row.k == 20 && row.ranked.len() == 20 && row.retriever == retriever));
    let negatives = read_negatives(&mine);
    assert!(negatives.iter().all(|row| row.retriever == retriever));

    // The random CLIP ranks many positives low, so the positive-aware filter (default relative margin 0.05)
    // rightly calls most of their top candidates suspected false negatives: few queries keep hard negatives.
    // Mined without it, every query gets its hard negatives straight from the ranking. Either way hard negatives
    // must outscore random ones within their query: a draw that ignored the ranking would win about half the
    // pairs, and its mean gap would lie within a few standard errors of 0.
    let unfiltered = mine_demo(dir.path(), "mine-unfiltered", &["--no-relative-margin"]);
    println!("{unfiltered}");
    let measure = |name: &str, out: &str| {
        let stats = read_stats(&dir.path().join(out));
        let (hard, random) = (
            stats["hard_negatives"]["mean"].as_f64().unwrap(),
            stats["random_negatives"]["mean"].as_f64().unwrap(),
        );
        let measured = hardness(&read_negatives(&dir.path().join(out)));
        println!(
            "demo world, {name}: mean score gap hard - random (per query) {:.4} +- {:.4} over {} queries; \
             hard beats random in {:.1}% of {} pairs; pooled means hard {hard:.4}, random {random:.4}",
            measured.mean_gap,
            measured.gap_error,
            measured.queries,
            100.0 * measured.hard_wins,
            measured.pairs,
        );
        let reported = stats["mean_gap"].as_f64().unwrap();
        assert!(
            (reported - measured.mean_gap).abs() < 1e-6,
            "{name}: stats.json's mean gap {reported} is the per-query gap of the negatives dataset"
        );
        assert!(
            measured.pairs >= 100 && measured.hard_wins > 0.85 && measured.mean_gap > 0.02,
            "{name}: hard negatives must score clearly above random ones: {measured:?}"
        );
        measured
    };
    measure("default filter", "mine");
    let unfiltered = measure("no relative margin", "mine-unfiltered");
    assert_eq!(unfiltered.queries, 40);
    assert!(
        unfiltered.mean_gap > 4.0 * unfiltered.gap_error,
        "{unfiltered:?}"
    );
}

#[test]
fn the_mine_command_documents_every_option() {
    let help = umrank_ok(&["mine", "--help"]);
    for option in [
        "--out",
        "--from",
        "--embeddings",
        "--k",
        "--mining-k",
        "--scope",
        "--candidate-splits",
        "--negative-splits",
        "--negatives",
        "--ratio",
        "--relative-margin",
        "--no-relative-margin",
        "--absolute-margin",
        "--max-score",
        "--min-rank",
        "--max-rank",
        "--chunk-docs",
        "--shard",
        "--seed",
        "--device",
    ] {
        assert!(help.contains(option), "--help lists {option}");
    }
}

#[test]
fn runs_in_a_pipeline_after_ingest_and_embed_and_is_then_up_to_date() {
    use umrank::pipeline::{PipelineConfig, StageOutcome};
    let dir = tempfile::tempdir().unwrap();
    let clip = clip_dir();
    let text = format!(
        r#"
        [pipeline]
        name = "mine-test"
        workdir = "{workdir}"
        seed = 3
        [world]
        size = "small"
        [ingest]
        from = "world"
        [embed]
        from = "ingest"
        model = "{model}"
        [mine]
        k = 10
        mining_k = 16
        "#,
        workdir = dir.path().display(),
        model = clip.display()
    );
    let config = PipelineConfig::parse(Path::new("mine-test.toml"), &text).unwrap();
    let options = RunOptions {
        policy: RejectPolicy {
            max_fraction: 1.0,
            strict: false,
        },
        ..Default::default()
    };
    let run = || {
        Runner::from_config(&config, &umrank::stages::registry(), options.clone())
            .unwrap()
            .run()
            .unwrap()
    };
    let first = run();
    assert_eq!(first[3].name, "mine");
    assert_eq!(first[3].outcome, StageOutcome::Ran);
    let mine = dir.path().join("mine");
    let stats = read_stats(&mine);
    assert_eq!(stats["queries"], 40);
    assert_eq!(stats["candidate_queries"], 35);
    assert!(stats["retriever"].as_str().unwrap().len() > 8);
    let candidates = read_candidates(&mine);
    assert!(candidates.iter().all(|row| row.ranked.len() == 10));
    let second = run();
    assert!(second
        .iter()
        .all(|report| report.outcome == StageOutcome::UpToDate));
}
