//! Scheduled retraining over two snapshots of a collection (issue 22), run as the README's retraining job runs it:
//! one pipeline file (ingest -> embed -> mine -> shards -> train -> eval), each snapshot's run in a work directory
//! of its own, and one embedding store the runs share (`store` in `[pipeline]`). The collection is the small demo
//! world's M-BEIR files; the second snapshot has about a tenth more documents and queries, some of the first's
//! revised and some removed. The run on the second snapshot embeds exactly the new and changed content, and every stage
//! writes the bytes that a run from nothing on the second snapshot writes.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::Path;

use serde_json::Value;
use umrank::embed::stats_path;
use umrank::shard::Shard;

use crate::common::cli::umrank_ok;
use crate::common::datasets::{column, embed_contents, small_world};
use crate::common::outputs::{records_the_run_itself, tree};
use crate::common::train_data::tokenizer_dir;

/// What becomes of a record of the world from the first snapshot to the second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    Kept,
    /// Only in the second snapshot.
    New,
    /// Only in the first.
    Removed,
    /// In both, its text revised in the second.
    Revised,
}

impl Change {
    /// The change of the `index`-th record of its kind: a tenth new, a twentieth removed, a tenth revised. A
    /// document that a query judges relevant is neither new nor removed, so that every query keeps its positive.
    fn of(index: usize, relevant: bool) -> Self {
        match (index % 20, relevant) {
            (1 | 11, false) => Self::New,
            (2, false) => Self::Removed,
            (3 | 13, _) => Self::Revised,
            _ => Self::Kept,
        }
    }

    fn in_snapshot(self, second: bool) -> bool {
        match self {
            Self::New => second,
            Self::Removed => !second,
            Self::Kept | Self::Revised => true,
        }
    }

    /// Whether the record's text is revised in this snapshot.
    fn revised_in(self, second: bool) -> bool {
        second && self == Self::Revised
    }
}

/// The lines of a JSONL file.
fn json_lines(bytes: &[u8]) -> impl Iterator<Item = Value> + '_ {
    std::str::from_utf8(bytes)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
}

fn to_jsonl(lines: impl Iterator<Item = Value>) -> Vec<u8> {
    lines
        .map(|line| format!("{line}\n"))
        .collect::<String>()
        .into_bytes()
}

fn revise(text: &mut Value) {
    if let Value::String(text) = text {
        text.push_str(" (revised)");
    }
}

/// The change of every document (by did) and query (by qid) of the world's M-BEIR files.
struct Changes {
    docs: HashMap<String, Change>,
    queries: HashMap<String, Change>,
}

impl Changes {
    /// Numbers the documents and the queries of `world` (its files by path, in path order) and gives each its
    /// change.
    fn of(world: &BTreeMap<String, Vec<u8>>) -> Self {
        let lines = |dir: &str| -> Vec<Value> {
            world
                .iter()
                .filter(|(name, _)| name.starts_with(dir))
                .flat_map(|(_, bytes)| json_lines(bytes).collect::<Vec<_>>())
                .collect()
        };
        let (pools, queries) = (lines("cand_pool/"), lines("query/"));
        let relevant: HashSet<&str> = queries
            .iter()
            .flat_map(|query| query["pos_cand_list"].as_array().unwrap())
            .map(|did| did.as_str().unwrap())
            .collect();
        let id = |line: &Value, key: &str| line[key].as_str().unwrap().to_owned();
        Self {
            docs: pools
                .iter()
                .enumerate()
                .map(|(i, doc)| {
                    let did = id(doc, "did");
                    let change = Change::of(i, relevant.contains(did.as_str()));
                    (did, change)
                })
                .collect(),
            queries: queries
                .iter()
                .enumerate()
                .map(|(i, query)| (id(query, "qid"), Change::of(i, false)))
                .collect(),
        }
    }

    fn has_doc(&self, did: &str, second: bool) -> bool {
        self.docs[did].in_snapshot(second)
    }

    fn has_query(&self, qid: &str, second: bool) -> bool {
        self.queries[qid].in_snapshot(second)
    }

    /// A pool file as the snapshot has it.
    fn pool(&self, bytes: &[u8], second: bool) -> Vec<u8> {
        to_jsonl(json_lines(bytes).filter_map(|mut doc| {
            let change = self.docs[doc["did"].as_str().unwrap()];
            if change.revised_in(second) {
                revise(&mut doc["txt"]);
            }
            change.in_snapshot(second).then_some(doc)
        }))
    }

    /// A query file as the snapshot has it: its judgements name only the snapshot's documents.
    fn queries(&self, bytes: &[u8], second: bool) -> Vec<u8> {
        to_jsonl(json_lines(bytes).filter_map(|mut query| {
            let change = self.queries[query["qid"].as_str().unwrap()];
            if change.revised_in(second) {
                revise(&mut query["query_txt"]);
            }
            for list in ["pos_cand_list", "neg_cand_list"] {
                let dids = query[list].as_array_mut().unwrap();
                dids.retain(|did| self.has_doc(did.as_str().unwrap(), second));
            }
            change.in_snapshot(second).then_some(query)
        }))
    }

    /// A qrels file as the snapshot has it: the judgements between its queries and its documents.
    fn qrels(&self, bytes: &[u8], second: bool) -> Vec<u8> {
        let text = std::str::from_utf8(bytes).unwrap();
        let kept = text.lines().filter(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            self.has_query(fields[0], second) && self.has_doc(fields[2], second)
        });
        kept.map(|line| format!("{line}\n"))
            .collect::<String>()
            .into_bytes()
    }

    /// Writes the first or the `second` snapshot of `world` under `root`; images and instructions as they are.
    fn write_snapshot(&self, world: &BTreeMap<String, Vec<u8>>, second: bool, root: &Path) {
        for (name, bytes) in world {
            let bytes = match name.split('/').next() {
                Some("cand_pool") => self.pool(bytes, second),
                Some("query") => self.queries(bytes, second),
                Some("qrels") => self.qrels(bytes, second),
                _ => bytes.clone(),
            };
            let path = root.join(name);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(path, bytes).unwrap();
        }
    }
}

/// A TOML string of a path.
fn toml_path(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}

/// The retraining pipeline, as the retraining job writes it for one snapshot: the snapshot's M-BEIR root in
/// `[ingest]`, and the store every run's embed stage shares (with none, the embed stage keeps its own: a run from
/// nothing). The tiny CLIP fixture embeds; it is untrained, so its positives score anywhere and the relative
/// margin filter is off to leave every training query its negatives. Two training steps of the tiny Qwen2-VL give
/// the eval stage a model of its own.
fn pipeline(snapshot: &Path, store: Option<&Path>) -> String {
    let store = store.map_or(String::new(), |s| format!("store = {}\n", toml_path(s)));
    let clip = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/embedders/clip");
    format!(
        r#"[pipeline]
name = "retrain"
workdir = "runs/retrain"
seed = 7
{store}
[ingest]
format = "mbeir"
root = {root}

[embed]
from = "ingest"
model = {clip}

[mine]
from = "ingest"
embeddings_from = "embed"
k = 20
negatives_per_group = 2
filter = {{ relative_margin = "off" }}

[shards]
ingest = "ingest"
mine = "mine"

[train]
init = "tiny"
tokenizer = {tokenizer}
tune = "full"
train_lm_head = true
groups_per_batch = 4
negatives = 2
max_len = 192
max_steps = 2
checkpoint_every = 0

[eval]
model_from = "train"
score = "p_yes"
k = 20
splits = ["test"]
max_len = 192
"#,
        root = toml_path(snapshot),
        clip = toml_path(&clip),
        tokenizer = toml_path(&tokenizer_dir()),
    )
}

/// Runs the pipeline on the M-BEIR root `snapshot` in the work directory `run`, which also holds the pipeline
/// file, as the retraining job does.
fn run(snapshot: &Path, store: Option<&Path>, run: &Path) {
    fs::create_dir_all(run).unwrap();
    let file = run.join("pipeline.toml");
    fs::write(&file, pipeline(snapshot, store)).unwrap();
    umrank_ok(&[
        "run",
        file.to_str().unwrap(),
        "--workdir",
        run.to_str().unwrap(),
    ]);
}

/// What a run's embed stage says it did, in its statistics file: (distinct inputs, embedded, reused).
fn embed_counts(run: &Path) -> (usize, usize, usize) {
    let path = stats_path(&run.join("embed"), Shard::ALL);
    let stats: Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    let count = |key: &str| stats[key].as_u64().unwrap() as usize;
    (count("inputs"), count("embedded"), count("reused"))
}

/// id -> text of the ingest dataset `name` (`corpus` or `queries`) of a run.
fn texts(run: &Path, name: &str, id: &str) -> BTreeMap<String, Option<String>> {
    let dir = run.join("ingest").join(name);
    let ids = column(&dir, id).into_iter().map(Option::unwrap);
    ids.zip(column(&dir, "text")).collect()
}

/// The files of a stage directory, less those that record the run itself (the manifest: when the stage ran, and
/// its inputs' absolute directories; the trainer's wall-clock timing) and, in the embed stage, those that record
/// the reuse, which differs by design: what the run embedded and what it reused, the store chunks it read, and the
/// store of a run that shares none.
fn outputs(stage: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut files = tree(stage);
    let records_the_reuse = |name: &str| {
        name == "embed_stats.json" || name == "store_refs.txt" || name.starts_with("store/")
    };
    files.retain(|name, _| !records_the_run_itself(name) && !records_the_reuse(name));
    files
}

/// Files every compared stage must have written, so that the comparison covers the data and not an empty tree.
const DATA_FILES: [(&str, &str); 9] = [
    ("embed", "doc_embeddings/part-00000-of-00001.parquet"),
    ("embed", "query_embeddings/part-00000-of-00001.parquet"),
    ("mine", "candidates/part-00000-of-00001.parquet"),
    ("mine", "negatives/part-00000-of-00001.parquet"),
    ("shards", "sft/part-00000-of-00001.parquet"),
    ("shards", "cl/part-00000-of-00001.parquet"),
    ("train", "model/model.safetensors"),
    ("eval", "run/part-00000-of-00001.parquet"),
    ("eval", "metrics.json"),
];

#[test]
fn a_new_snapshot_embeds_only_its_new_and_changed_items_and_writes_what_a_run_from_nothing_writes()
{
    let tmp = tempfile::tempdir().unwrap();
    let (world, _) = small_world(tmp.path(), 3);
    let world = tree(&world);
    let changes = Changes::of(&world);
    let (first, second) = (tmp.path().join("s1/mbeir"), tmp.path().join("s2/mbeir"));
    changes.write_snapshot(&world, false, &first);
    changes.write_snapshot(&world, true, &second);

    let store = tmp.path().join("store");
    let (run1, run2, scratch) = (
        tmp.path().join("runs/1"),
        tmp.path().join("runs/2"),
        tmp.path().join("elsewhere/scratch"),
    );
    run(&first, Some(&store), &run1);
    run(&second, Some(&store), &run2);
    run(&second, None, &scratch);

    // The second snapshot has about a tenth more documents and queries than the first, revised ones and removed
    // ones.
    for (name, id) in [("corpus", "did"), ("queries", "qid")] {
        let (before, after) = (texts(&run1, name, id), texts(&run2, name, id));
        let new = after.keys().filter(|k| !before.contains_key(*k)).count();
        let removed = before.keys().filter(|k| !after.contains_key(*k)).count();
        let revised = after
            .iter()
            .filter(|(k, text)| before.get(*k).is_some_and(|old| old != *text))
            .count();
        assert!(
            after.len() > before.len() && new * 20 > before.len() && removed > 0 && revised > 0,
            "{name}: {} then {} records, {new} new, {removed} removed, {revised} revised",
            before.len(),
            after.len()
        );
    }

    // The first run embeds everything; the second exactly the content the first did not see: what the model sees
    // of a new or revised record, each distinct content once.
    let (before, after) = (
        embed_contents(&run1.join("ingest")),
        embed_contents(&run2.join("ingest")),
    );
    assert_eq!(embed_counts(&run1), (before.len(), before.len(), 0));
    let expected = after.difference(&before).count();
    assert!(expected > 0);
    assert_eq!(
        embed_counts(&run2),
        (after.len(), expected, after.len() - expected)
    );
    assert_eq!(embed_counts(&scratch), (after.len(), after.len(), 0));

    // Every stage's outputs are the run from nothing's bytes, though it ran in another directory: a reused vector
    // is the bits a run from nothing computes (docs/mining.md#batch-invariance), and nothing downstream depends on
    // where a vector came from.
    let mut left_out = Vec::new();
    for stage in ["ingest", "embed", "mine", "shards", "train", "eval"] {
        let (reused, fresh) = (outputs(&run2.join(stage)), outputs(&scratch.join(stage)));
        assert_eq!(
            reused.keys().collect::<Vec<_>>(),
            fresh.keys().collect::<Vec<_>>(),
            "{stage}: the same files"
        );
        for (name, bytes) in &reused {
            assert!(
                bytes == &fresh[name],
                "{stage}/{name} differs from the run from nothing"
            );
        }
        for (_, file) in DATA_FILES.iter().filter(|(s, _)| *s == stage) {
            assert!(reused.contains_key(*file), "{stage} wrote no {file}");
        }
        let all = tree(&run2.join(stage)).into_keys();
        left_out.extend(
            all.filter(|name| !reused.contains_key(name))
                .map(|name| format!("{stage}/{name}")),
        );
    }
    // Nothing else is left out: every other file, statistics and plots included, depends only on the snapshot.
    assert_eq!(
        left_out,
        [
            "ingest/manifest.json",
            "embed/embed_stats.json",
            "embed/manifest.json",
            "embed/store_refs.txt",
            "mine/manifest.json",
            "shards/manifest.json",
            "train/manifest.json",
            "train/train_timing.jsonl",
            "eval/manifest.json",
        ]
    );
}
