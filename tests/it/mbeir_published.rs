//! The shipped M-BEIR pipelines' data stages (ingest -> embed -> mine -> shards) on a miniature of the M-BEIR
//! download as it is published (tests/fixtures/mbeir_published, written by gen_fixture.py beside it): train
//! files that mix a dataset's tasks, qids that restart in every split, MSCOCO's test-only local pools and its
//! train and val candidates in the global pools, and the upsampled union file.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use umrank::pipeline::{PipelineConfig, RunOptions, Runner};
use umrank::shard::Shard;

use crate::common::datasets::{column, list_column, qrels, strings, struct_dids, u32_column};

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/mbeir_published")
}

fn tiny_clip() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/embedders/clip")
}

/// Every json line of the fixture files under `dir` (relative to the fixture), with the file's split.
fn fixture_lines(dir: &str) -> Vec<(String, serde_json::Value)> {
    let mut files: Vec<PathBuf> = fs::read_dir(fixture().join(dir))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let split = dir.rsplit('/').next().unwrap().to_string();
    files
        .iter()
        .flat_map(|file| {
            fs::read_to_string(file)
                .unwrap()
                .lines()
                .map(|line| serde_json::from_str(line).unwrap())
                .collect::<Vec<serde_json::Value>>()
        })
        .map(|value| (split.clone(), value))
        .collect()
}

/// The candidates of every pool file, by file name: (did, modality).
fn pool_files() -> BTreeMap<String, Vec<(String, String)>> {
    let mut pools = BTreeMap::new();
    for dir in ["cand_pool/local", "cand_pool/global"] {
        for entry in fs::read_dir(fixture().join(dir)).unwrap() {
            let path = entry.unwrap().path();
            let records = fs::read_to_string(&path)
                .unwrap()
                .lines()
                .map(|line| {
                    let value: serde_json::Value = serde_json::from_str(line).unwrap();
                    (
                        value["did"].as_str().unwrap().to_string(),
                        value["modality"].as_str().unwrap().to_string(),
                    )
                })
                .collect();
            pools.insert(
                path.file_name().unwrap().to_string_lossy().into_owned(),
                records,
            );
        }
    }
    pools
}

/// The candidate modality of the M-BEIR tasks the fixture uses.
fn candidate_modality(task: i64) -> &'static str {
    match task {
        0 | 7 => "image",
        1 | 3 => "text",
        2 => "image,text",
        other => panic!("task {other} is not in the fixture"),
    }
}

/// The shipped pipeline's tables up to `shards`, pointed at the fixture: the tiny CLIP embedder instead of GME,
/// groups of 1 + 4 from the top 10 (the fixture's pools hold 12 candidates), and no false-negative filter (a
/// random embedder's scores say nothing about false negatives). The ingest tables are the shipped ones.
fn data_pipeline(file: &str, work: &Path) -> PipelineConfig {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("pipelines")
        .join(file);
    let mut config = PipelineConfig::load(&path).unwrap();
    config.workdir = work.to_path_buf();
    let last = config
        .stages
        .iter()
        .position(|s| s.name == "shards")
        .unwrap();
    config.stages.truncate(last + 1);
    for spec in &mut config.stages {
        let table = &mut spec.table;
        let set = |table: &mut toml::Table, key: &str, value: toml::Value| {
            table.insert(key.to_string(), value);
        };
        match spec.kind.as_str() {
            "ingest" => set(table, "root", fixture().display().to_string().into()),
            "embed" => {
                set(table, "model", tiny_clip().display().to_string().into());
                set(table, "dtype", "f32".into());
                set(table, "batch_size", 8.into());
            }
            "mine" => {
                set(table, "k", 10.into());
                set(table, "mining_k", 10.into());
                set(table, "negatives_per_group", 4.into());
                let mut off = toml::Table::new();
                off.insert("relative_margin".into(), false.into());
                set(table, "filter", off.into());
            }
            _ => {}
        }
    }
    config
}

fn run(config: &PipelineConfig, options: RunOptions) {
    Runner::from_config(config, &umrank::stages::registry(), options)
        .unwrap()
        .run()
        .unwrap();
}

#[test]
fn the_published_layout_mines_every_train_query_in_its_own_task_pool_and_keeps_every_split_apart() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let config = data_pipeline("mbeir-gme-qwen25vl.toml", &work);
    run(&config, RunOptions::default());
    let ingest = work.join("ingest");

    // Every query of every split, under its split: none lost to a qid that repeats across splits.
    let queries: Vec<(String, serde_json::Value)> = ["query/train", "query/val", "query/test"]
        .iter()
        .flat_map(|dir| fixture_lines(dir))
        .collect();
    let expected_qids: BTreeSet<String> = queries
        .iter()
        .map(|(split, q)| format!("{split}/{}", q["qid"].as_str().unwrap()))
        .collect();
    assert_eq!(
        expected_qids.len(),
        32,
        "16 train, 6 val and 10 test queries, qids restarting per split"
    );
    let qids = strings(&ingest.join("queries"), "qid");
    assert_eq!(qids.iter().cloned().collect::<BTreeSet<_>>(), expected_qids);
    assert_eq!(qids.len(), 32);
    let splits = strings(&ingest.join("queries"), "split");
    for (split, count) in [("train", 16), ("val", 6), ("test", 10)] {
        assert_eq!(
            splits.iter().filter(|s| *s == split).count(),
            count,
            "{split}"
        );
    }
    assert!(
        !ingest.join("rejects.parquet").exists()
            || column(&ingest.join("rejects.parquet"), "reason").is_empty()
    );

    // Every judgement of the qrels files, on the query of its own split, and nothing else.
    let mut expected_qrels = BTreeSet::new();
    for split in ["train", "val", "test"] {
        for entry in fs::read_dir(fixture().join("qrels").join(split)).unwrap() {
            for line in fs::read_to_string(entry.unwrap().path()).unwrap().lines() {
                let cols: Vec<&str> = line.split_whitespace().collect();
                expected_qrels.insert((format!("{split}/{}", cols[0]), cols[2].to_string(), 1));
            }
        }
    }
    let found: Vec<(String, String, i32)> = qrels(&ingest.join("qrels"));
    assert_eq!(found.len(), expected_qrels.len(), "each judgement once");
    assert_eq!(found.into_iter().collect::<BTreeSet<_>>(), expected_qrels);

    // The corpus: every local pool, and the global pools' MSCOCO candidates; the other global lines repeat local
    // ones and are kept once.
    let pools = pool_files();
    let all_dids: BTreeSet<&String> = pools.values().flatten().map(|(did, _)| did).collect();
    let corpus = strings(&ingest.join("corpus"), "did");
    assert_eq!(corpus.len(), all_dids.len());
    assert_eq!(corpus.len(), 60 + 24 + 12);

    // Train queries: full 1:1 hard:random groups from their own task's candidates (same dataset, the task's
    // candidate modality), never a positive.
    let modality_of: BTreeMap<&String, &String> = pools
        .values()
        .flatten()
        .map(|(did, modality)| (did, modality))
        .collect();
    let train: BTreeMap<String, &serde_json::Value> = queries
        .iter()
        .filter(|(split, _)| split == "train")
        .map(|(_, q)| (format!("train/{}", q["qid"].as_str().unwrap()), q))
        .collect();
    let negatives = work.join("mine/negatives");
    let neg_qids = strings(&negatives, "qid");
    assert_eq!(
        neg_qids.iter().cloned().collect::<BTreeSet<_>>(),
        train.keys().cloned().collect()
    );
    let (hard, random, short) = (
        struct_dids(&negatives, "hard"),
        struct_dids(&negatives, "random"),
        u32_column(&negatives, "short"),
    );
    for (i, qid) in neg_qids.iter().enumerate() {
        let query = train[qid];
        assert_eq!(
            (hard[i].len(), random[i].len(), short[i]),
            (2, 2, 0),
            "{qid}"
        );
        let prefix = format!(
            "{}:",
            query["qid"].as_str().unwrap().split(':').next().unwrap()
        );
        let want = candidate_modality(query["task_id"].as_i64().unwrap());
        let positive = query["pos_cand_list"][0].as_str().unwrap();
        for did in hard[i].iter().chain(&random[i]) {
            assert!(
                did.starts_with(&prefix),
                "{qid}: {did} is from another dataset"
            );
            assert_eq!(
                modality_of[did], want,
                "{qid}: {did} is another task's candidate"
            );
            assert_ne!(did, positive);
        }
    }

    // Test queries: their first-stage list comes from the pool file that holds their positive.
    let candidates = work.join("mine/candidates");
    let test: BTreeMap<String, &serde_json::Value> = queries
        .iter()
        .filter(|(split, _)| split == "test")
        .map(|(_, q)| (format!("test/{}", q["qid"].as_str().unwrap()), q))
        .collect();
    let listed = struct_dids(&candidates, "ranked");
    let cand_qids = strings(&candidates, "qid");
    assert_eq!(
        cand_qids.iter().cloned().collect::<BTreeSet<_>>(),
        test.keys().cloned().collect()
    );
    for (qid, dids) in cand_qids.iter().zip(&listed) {
        let positive = test[qid]["pos_cand_list"][0].as_str().unwrap();
        let (file, pool) = pools
            .iter()
            .filter(|(_, records)| records.iter().any(|(d, _)| d == positive))
            .min_by_key(|(file, _)| file.contains("union"))
            .unwrap();
        let members: BTreeSet<&String> = pool.iter().map(|(did, _)| did).collect();
        assert_eq!(dids.len(), 10, "{qid}");
        assert!(
            dids.iter().all(|d| members.contains(d)),
            "{qid}: a candidate outside {file}"
        );
    }

    // Shards: one group per train query and positive.
    let groups = list_column(&negatives, "positives")
        .iter()
        .map(Vec::len)
        .sum::<usize>();
    assert_eq!(groups, 16);
    let index: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(work.join("shards/index.json")).unwrap()).unwrap();
    assert_eq!(index["groups"], 16, "{index}");
}

#[test]
fn the_union_file_repeats_the_train_queries_and_reads_as_them() {
    let dir = tempfile::tempdir().unwrap();
    let ingest_with = |name: &str, queries: &[&str]| -> PathBuf {
        let work = dir.path().join(name);
        let mut config = data_pipeline("mbeir-gme-qwen25vl.toml", &work);
        config.stages.truncate(1);
        let globs: Vec<toml::Value> = queries.iter().map(|g| toml::Value::from(*g)).collect();
        let table = &mut config.stages[0].table;
        table.insert("queries".into(), globs.into());
        table.insert("qrels".into(), "qrels/train/*.txt".into());
        run(&config, RunOptions::default());
        work.join("ingest")
    };
    let per_dataset = ingest_with("per_dataset", &["query/train/*.jsonl"]);
    let both = ingest_with(
        "both",
        &["query/train/*.jsonl", "query/union_train/*.jsonl"],
    );
    let union = ingest_with("union", &["query/union_train/*.jsonl"]);
    for dataset in ["queries", "qrels", "corpus"] {
        assert_eq!(
            read_parts(&per_dataset.join(dataset)),
            read_parts(&both.join(dataset)),
            "{dataset}: the union file's lines are repeats, kept once"
        );
    }
    let sorted = |dir: &Path| {
        let mut qids = strings(&dir.join("queries"), "qid");
        qids.sort();
        qids
    };
    assert_eq!(
        sorted(&union),
        sorted(&per_dataset),
        "the union file alone reads as the train files"
    );
    assert_eq!(sorted(&union).len(), 16);
    let mut from_union = qrels(&union.join("qrels"));
    let mut from_files = qrels(&per_dataset.join("qrels"));
    from_union.sort();
    from_files.sort();
    assert_eq!(from_union, from_files);
}

#[test]
fn a_job_array_of_mine_merges_into_the_statistics_of_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path().join("work");
    let config = data_pipeline("mbeir-gme-qwen25vl.toml", &work);
    let until = |stage: &str| RunOptions {
        until: Some(stage.into()),
        ..RunOptions::default()
    };
    run(&config, until("mine"));
    let single = fs::read_to_string(work.join("mine/stats.json")).unwrap();

    for index in 0..2 {
        run(
            &config,
            RunOptions {
                from: Some("mine".into()),
                until: Some("mine".into()),
                force: true,
                shard: Some(Shard { index, count: 2 }),
                ..RunOptions::default()
            },
        );
    }
    assert!(
        !work.join("mine/stats.json").exists(),
        "each part writes its own statistics"
    );
    let part = fs::read_to_string(work.join("mine/stats.part-00000-of-00002.json")).unwrap();
    assert_ne!(part, single, "a part's table covers its own queries only");
    run(&config, until("mine"));
    assert_eq!(
        fs::read_to_string(work.join("mine/stats.json")).unwrap(),
        single,
        "the merged table is the single run's"
    );
}

/// The bytes of every part file of a dataset, by name.
fn read_parts(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                fs::read(&p).unwrap(),
            )
        })
        .collect()
}
