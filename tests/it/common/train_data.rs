//! Training inputs for the train tests: the demo world, ingested by the real ingest stage, and sft / cl datasets
//! in the shards stage's layout (`<dir>/sft`, `<dir>/cl`).
//!
//! The mine and shards stages are not part of this branch, so the groups are built here: each train query's
//! positive from the qrels and N negatives drawn at random from its task's pool (never a positive). These are
//! the paper's "random negatives"; no hard negatives are mined. The datasets are written through the dataset
//! writer, so they pass the same schema checks as the shards stage's.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, ListBuilder, RecordBatch, StringArray, StringBuilder, UInt64Array,
};
use arrow::datatypes::{DataType, Field};
use rand::seq::IndexedRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use umrank::ingest::{IngestConfig, IngestStage};
use umrank::pipeline::{Input, Output, RunOptions, Runner, Stage, StageContext, StageError};
use umrank::schema;
use umrank::world::stage::{WorldStage, WorldStageConfig};
use umrank::world::WorldSize;

use super::datasets::{column, qrels};

/// A query as the groups need it.
#[derive(Debug, Clone)]
pub struct Query {
    pub qid: String,
    pub text: Option<String>,
    pub image_id: Option<String>,
    pub instruction: Option<String>,
    pub dataset: String,
    pub split: String,
}

/// A corpus document.
#[derive(Debug, Clone)]
pub struct Doc {
    pub did: String,
    pub text: Option<String>,
    pub image_id: Option<String>,
    pub dataset: String,
}

pub fn read_queries(ingest: &Path) -> Vec<Query> {
    let dir = ingest.join("queries");
    let [qid, text, image, instruction, dataset, split] =
        ["qid", "text", "image_id", "instruction", "dataset", "split"].map(|c| column(&dir, c));
    let mut out: Vec<Query> = (0..qid.len())
        .map(|i| Query {
            qid: qid[i].clone().unwrap(),
            text: text[i].clone(),
            image_id: image[i].clone(),
            instruction: instruction[i].clone(),
            dataset: dataset[i].clone().unwrap(),
            split: split[i].clone().unwrap(),
        })
        .collect();
    out.sort_by(|a, b| a.qid.cmp(&b.qid));
    out
}

pub fn read_corpus(ingest: &Path) -> Vec<Doc> {
    let dir = ingest.join("corpus");
    let [did, text, image, dataset] =
        ["did", "text", "image_id", "dataset"].map(|c| column(&dir, c));
    let mut out: Vec<Doc> = (0..did.len())
        .map(|i| Doc {
            did: did[i].clone().unwrap(),
            text: text[i].clone(),
            image_id: image[i].clone(),
            dataset: dataset[i].clone().unwrap(),
        })
        .collect();
    out.sort_by(|a, b| a.did.cmp(&b.did));
    out
}

/// qid -> relevant dids, sorted.
pub fn read_qrels(ingest: &Path) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (qid, did, relevance) in qrels(&ingest.join("qrels")) {
        if relevance > 0 {
            out.entry(qid).or_default().push(did);
        }
    }
    for dids in out.values_mut() {
        dids.sort();
    }
    out
}

/// `n` documents of `pool` drawn without replacement, none of them in `exclude`.
pub fn random_docs<'a>(
    pool: &'a [&'a Doc],
    exclude: &[String],
    n: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<&'a Doc> {
    let eligible: Vec<&Doc> = pool
        .iter()
        .copied()
        .filter(|d| !exclude.contains(&d.did))
        .collect();
    eligible.choose_multiple(rng, n).copied().collect()
}

/// The `[groups]` table of the test stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GroupsConfig {
    /// Query datasets (task pools) to build groups for, by a part of their name; all when empty.
    pub datasets: Vec<String>,
    pub negatives: usize,
    /// Queries of this split become groups.
    pub split: String,
}

/// Writes `sft/` and `cl/` with random negatives, like a shards stage without mining.
pub struct RandomGroups {
    pub config: GroupsConfig,
    pub ingest: String,
}

impl Stage for RandomGroups {
    fn name(&self) -> &'static str {
        "random_groups"
    }

    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(&self.config)
    }

    fn inputs(&self) -> Vec<Input> {
        vec![Input::Stage(self.ingest.clone())]
    }

    fn outputs(&self) -> Vec<Output> {
        vec![Output::dataset("sft", "sft"), Output::dataset("cl", "cl")]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let ingest = ctx.upstream_dir(&self.ingest)?.to_path_buf();
        let queries = read_queries(&ingest);
        let corpus = read_corpus(&ingest);
        let qrels = read_qrels(&ingest);
        let mut pools: HashMap<&str, Vec<&Doc>> = HashMap::new();
        for doc in &corpus {
            pools.entry(doc.dataset.as_str()).or_default().push(doc);
        }
        let by_did: HashMap<&str, &Doc> = corpus.iter().map(|d| (d.did.as_str(), d)).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(ctx.seed());
        let mut sft = SftRows::default();
        let mut cl = ClRows::default();
        let mut group_id = 0u64;
        for query in &queries {
            let wanted = self.config.datasets.is_empty()
                || self
                    .config
                    .datasets
                    .iter()
                    .any(|d| query.dataset.contains(d.as_str()));
            if !wanted || query.split != self.config.split {
                continue;
            }
            let Some(positives) = qrels.get(&query.qid) else {
                continue;
            };
            let pool = &pools[query.dataset.as_str()];
            for positive in positives {
                let negatives = random_docs(pool, positives, self.config.negatives, &mut rng);
                let positive = by_did[positive.as_str()];
                sft.push(group_id, query, positive, true);
                for negative in &negatives {
                    sft.push(group_id, query, negative, false);
                }
                cl.push(group_id, query, positive, &negatives);
                group_id += 1;
            }
        }
        ctx.add_records(group_id);
        let mut writer = ctx.create_dataset("sft", "sft")?;
        writer.write(&sft.batch())?;
        writer.finish()?;
        let mut writer = ctx.create_dataset("cl", "cl")?;
        writer.write(&cl.batch())?;
        writer.finish()?;
        Ok(())
    }
}

#[derive(Default)]
struct SftRows {
    group_id: Vec<u64>,
    qid: Vec<String>,
    did: Vec<String>,
    label: Vec<bool>,
    kind: Vec<String>,
    instruction: Vec<Option<String>>,
    query_text: Vec<Option<String>>,
    query_image: Vec<Option<String>>,
    doc_text: Vec<Option<String>>,
    doc_image: Vec<Option<String>>,
}

impl SftRows {
    fn push(&mut self, group_id: u64, query: &Query, doc: &Doc, positive: bool) {
        self.group_id.push(group_id);
        self.qid.push(query.qid.clone());
        self.did.push(doc.did.clone());
        self.label.push(positive);
        self.kind
            .push(if positive { "none" } else { "random" }.into());
        self.instruction.push(query.instruction.clone());
        self.query_text.push(query.text.clone());
        self.query_image.push(query.image_id.clone());
        self.doc_text.push(doc.text.clone());
        self.doc_image.push(doc.image_id.clone());
    }

    fn batch(&self) -> RecordBatch {
        let s = |v: &Vec<String>| Arc::new(StringArray::from(v.clone())) as ArrayRef;
        let o = |v: &Vec<Option<String>>| Arc::new(StringArray::from(v.clone())) as ArrayRef;
        RecordBatch::try_new(
            schema::get("sft").unwrap().arrow(),
            vec![
                Arc::new(UInt64Array::from(self.group_id.clone())),
                s(&self.qid),
                s(&self.did),
                Arc::new(BooleanArray::from(self.label.clone())),
                s(&self.kind),
                o(&self.instruction),
                o(&self.query_text),
                o(&self.query_image),
                o(&self.doc_text),
                o(&self.doc_image),
            ],
        )
        .unwrap()
    }
}

#[derive(Default)]
struct ClRows {
    group_id: Vec<u64>,
    qid: Vec<String>,
    positive: Vec<String>,
    negatives: Vec<Vec<String>>,
    instruction: Vec<Option<String>>,
    query_text: Vec<Option<String>>,
    query_image: Vec<Option<String>>,
}

impl ClRows {
    fn push(&mut self, group_id: u64, query: &Query, positive: &Doc, negatives: &[&Doc]) {
        self.group_id.push(group_id);
        self.qid.push(query.qid.clone());
        self.positive.push(positive.did.clone());
        self.negatives
            .push(negatives.iter().map(|d| d.did.clone()).collect());
        self.instruction.push(query.instruction.clone());
        self.query_text.push(query.text.clone());
        self.query_image.push(query.image_id.clone());
    }

    fn batch(&self) -> RecordBatch {
        let list = |rows: Vec<Vec<String>>| -> ArrayRef {
            let mut builder = ListBuilder::new(StringBuilder::new()).with_field(Field::new(
                "item",
                DataType::Utf8,
                false,
            ));
            for row in rows {
                for item in row {
                    builder.values().append_value(item);
                }
                builder.append(true);
            }
            Arc::new(builder.finish())
        };
        let kinds = self
            .negatives
            .iter()
            .map(|n| vec!["random".to_string(); n.len()])
            .collect();
        let o = |v: &Vec<Option<String>>| Arc::new(StringArray::from(v.clone())) as ArrayRef;
        RecordBatch::try_new(
            schema::get("cl").unwrap().arrow(),
            vec![
                Arc::new(UInt64Array::from(self.group_id.clone())),
                Arc::new(StringArray::from(self.qid.clone())),
                Arc::new(StringArray::from(self.positive.clone())),
                list(self.negatives.clone()),
                list(kinds),
                o(&self.instruction),
                o(&self.query_text),
                o(&self.query_image),
            ],
        )
        .unwrap()
    }
}

/// Stage directories of a prepared world.
pub struct DemoData {
    pub workdir: PathBuf,
    pub ingest: PathBuf,
    pub shards: PathBuf,
}

/// The demo world (`size`, images `side` px) through world -> ingest -> random groups, under `dir`.
pub fn demo_data(
    dir: &Path,
    size: WorldSize,
    side: u32,
    groups: GroupsConfig,
    seed: u64,
) -> DemoData {
    let world = WorldStage::new(WorldStageConfig {
        size,
        image_side: side,
    })
    .unwrap();
    let mut ingest = IngestConfig::new(umrank::ingest::Format::Mbeir, PathBuf::from("mbeir"));
    ingest.root = None;
    ingest.from = Some("world".into());
    let ingest = IngestStage::new(ingest).unwrap();
    let stages: Vec<(String, Box<dyn Stage>)> = vec![
        ("world".into(), Box::new(world)),
        ("ingest".into(), Box::new(ingest)),
        (
            "shards".into(),
            Box::new(RandomGroups {
                config: groups,
                ingest: "ingest".into(),
            }),
        ),
    ];
    Runner::new(dir.to_path_buf(), seed, stages, RunOptions::default())
        .run()
        .unwrap();
    DemoData {
        workdir: dir.to_path_buf(),
        ingest: dir.join("ingest"),
        shards: dir.join("shards"),
    }
}

/// The small demo world with 28-px images, seed 7, and groups of `negatives` random negatives for the train
/// queries of `datasets` (all when empty): the quick corpus of the train tests.
pub fn small_demo_data(dir: &Path, datasets: &[&str], negatives: usize) -> DemoData {
    demo_data(
        dir,
        WorldSize::Small,
        28,
        GroupsConfig {
            datasets: datasets.iter().map(|s| s.to_string()).collect(),
            negatives,
            split: "train".into(),
        },
        7,
    )
}

/// The path of the qwen2-prefix tokenizer fixture (yes/no, chat and vision special tokens).
pub fn tokenizer_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer/qwen2_prefix")
}

/// A train config for the tiny VL model with the tokenizer fixture: `base` keys, then `extra` keys overriding them.
pub fn tiny_train_config(base: &str, extra: &str) -> umrank::train::TrainConfig {
    let mut table: toml::Table = toml::from_str(&format!(
        "init = 'tiny'\ntokenizer = '{}'\n{base}",
        tokenizer_dir().display()
    ))
    .unwrap();
    table.extend(toml::from_str::<toml::Table>(extra).unwrap());
    toml::Value::Table(table).try_into().unwrap()
}

/// The train stage's inputs over `data`: its groups in `format`, the corpus and the images.
pub fn train_inputs(
    data: &DemoData,
    format: umrank::train::config::DataFormat,
) -> umrank::train::TrainInputs {
    use umrank::dataset::Dataset;
    umrank::train::TrainInputs {
        groups: Dataset::open(&data.shards.join(format.dir_name())).unwrap(),
        corpus: Some(Dataset::open(&data.ingest.join("corpus")).unwrap()),
        images: Some(Dataset::open(&data.ingest.join("images")).unwrap()),
    }
}

/// Run settings on the CPU writing to `out`, stopping after `stop_after` steps if given.
pub fn cpu_run_settings(
    out: &Path,
    seed: u64,
    run_key: &str,
    stop_after: Option<u64>,
) -> umrank::train::RunSettings {
    umrank::train::RunSettings {
        seed,
        device: candle_core::Device::Cpu,
        out_dir: out.to_path_buf(),
        run_key: run_key.into(),
        stop_after,
    }
}

/// Run options that give a pipeline's `shards` and `ingest` inputs `data`'s directories.
pub fn upstream_dirs(data: &DemoData) -> RunOptions {
    RunOptions {
        dirs: [
            ("shards".to_string(), data.shards.clone()),
            ("ingest".to_string(), data.ingest.clone()),
        ]
        .into(),
        ..Default::default()
    }
}
