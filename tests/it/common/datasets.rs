//! The demo world, the ingest stage run alone, and readers of the datasets the stages write: the scaffolding the
//! stage tests (ingest, formats, shards, pipeline, embed) share instead of each keeping its own copy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, BooleanArray, Int32Array, ListArray, StringArray, UInt64Array};
use arrow::record_batch::RecordBatch;
use umrank::dataset::Dataset;
use umrank::ingest::{IngestConfig, IngestStage};
use umrank::pipeline::{RunOptions, Runner, StageReport};
use umrank::world::{generate, WorldConfig, WorldSize, WorldSummary};

/// A `width` x `height` PNG of one colour: an image input for the ingest tests.
pub fn solid_png(width: u32, height: u32, rgb: [u8; 3]) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(width, height, image::Rgb(rgb));
    let mut bytes = Vec::new();
    img.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .unwrap();
    bytes
}

/// An empty M-BEIR tree `dir/mbeir` for hand-written test inputs: the directories of one local pool, the test
/// split's queries and qrels, the instructions and the images.
pub fn empty_mbeir_tree(dir: &Path) -> PathBuf {
    let root = dir.join("mbeir");
    for sub in [
        "cand_pool/local",
        "query/test",
        "qrels/test",
        "instructions",
        "images",
    ] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    root
}

/// Each ingest dataset that has an id column, with that column.
pub const ID_COLUMNS: [(&str, &str); 3] = [
    ("corpus", "did"),
    ("queries", "qid"),
    ("images", "image_id"),
];

/// Generates the small demo world (56-pixel images, fast to ingest) under `dir/world` and returns its root.
pub fn small_world(dir: &Path, seed: u64) -> (PathBuf, WorldSummary) {
    let root = dir.join("world");
    let config = WorldConfig {
        seed,
        size: WorldSize::Small,
        image_side: 56,
    };
    let summary = generate(&config, &root).unwrap();
    (root, summary)
}

/// Runs the ingest stage alone, writing into `out`, under the runner seed (it picks the queries' instructions)
/// and `options` (shard, reject policy); the error as text so that tests can match on it.
pub fn ingest_alone(
    config: IngestConfig,
    out: &Path,
    seed: u64,
    options: RunOptions,
) -> Result<StageReport, String> {
    let options = RunOptions {
        dirs: [("ingest".to_string(), out.to_path_buf())].into(),
        ..options
    };
    let stage = IngestStage::new(config).map_err(|e| e.to_string())?;
    Runner::new(
        out.to_path_buf(),
        seed,
        vec![("ingest".into(), Box::new(stage))],
        options,
    )
    .run()
    .map(|mut reports| reports.remove(0))
    .map_err(|e| e.to_string())
}

/// Every batch of a dataset, in order.
fn batches(dir: &Path) -> impl Iterator<Item = RecordBatch> {
    Dataset::open(dir)
        .unwrap()
        .batches()
        .unwrap()
        .map(Result::unwrap)
}

/// The column `name` of every batch of a dataset, each read by `read` (a downcast array and a row).
fn read_column<A: Array + 'static, T>(
    dir: &Path,
    name: &str,
    read: impl Fn(&A, usize) -> T,
) -> Vec<T> {
    let mut out = Vec::new();
    for batch in batches(dir) {
        let column = batch.column_by_name(name).unwrap();
        let column = column.as_any().downcast_ref::<A>().unwrap();
        out.extend((0..column.len()).map(|i| read(column, i)));
    }
    out
}

/// The string column `name` of a dataset, nulls as `None`.
pub fn column(dir: &Path, name: &str) -> Vec<Option<String>> {
    read_column(dir, name, |col: &StringArray, i| {
        (!col.is_null(i)).then(|| col.value(i).to_string())
    })
}

/// What an embedding model that takes no instruction (CLIP, SigLIP, BERT) sees of each record of the `corpus` and
/// `queries` datasets under `dir`: (modality, text, image id). Records with equal content embed once, so the
/// embed stage embeds this set's members.
pub fn embed_contents(dir: &Path) -> BTreeSet<(Option<String>, Option<String>, Option<String>)> {
    let mut set = BTreeSet::new();
    for name in ["corpus", "queries"] {
        let data = dir.join(name);
        let (modality, text, image) = (
            column(&data, "modality"),
            column(&data, "text"),
            column(&data, "image_id"),
        );
        set.extend(
            modality
                .into_iter()
                .zip(text)
                .zip(image)
                .map(|((m, t), i)| (m, t, i)),
        );
    }
    set
}

/// The string column `name` of a dataset that has no nulls (a null fails the test).
pub fn strings(dir: &Path, name: &str) -> Vec<String> {
    column(dir, name).into_iter().map(Option::unwrap).collect()
}

/// The `uint64` column `name` of a dataset.
pub fn u64_column(dir: &Path, name: &str) -> Vec<u64> {
    read_column(dir, name, |col: &UInt64Array, i| col.value(i))
}

/// The boolean column `name` of a dataset.
pub fn bool_column(dir: &Path, name: &str) -> Vec<bool> {
    read_column(dir, name, |col: &BooleanArray, i| col.value(i))
}

/// The `list<utf8>` column `name` of a dataset.
pub fn list_column(dir: &Path, name: &str) -> Vec<Vec<String>> {
    read_column(dir, name, |col: &ListArray, i| {
        col.value(i)
            .as_string::<i32>()
            .iter()
            .map(|s| s.unwrap().to_string())
            .collect()
    })
}

/// The `did` field of a `list<struct>` column (a negatives or candidates list), per row.
pub fn struct_dids(dir: &Path, name: &str) -> Vec<Vec<String>> {
    read_column(dir, name, |col: &ListArray, i| {
        let items = col.value(i);
        let dids = items
            .as_struct()
            .column_by_name("did")
            .unwrap()
            .as_string::<i32>()
            .clone();
        dids.iter().map(|s| s.unwrap().to_string()).collect()
    })
}

/// The `uint32` column `name` of a dataset.
pub fn u32_column(dir: &Path, name: &str) -> Vec<u32> {
    read_column(dir, name, |col: &arrow::array::UInt32Array, i| col.value(i))
}

/// The rows of a dataset in the qrels schema as (qid, did, relevance), in stored order.
pub fn qrels(dir: &Path) -> Vec<(String, String, i32)> {
    let qid = strings(dir, "qid");
    let did = strings(dir, "did");
    let relevance = read_column(dir, "relevance", |col: &Int32Array, i| col.value(i));
    qid.into_iter()
        .zip(did)
        .zip(relevance)
        .map(|((q, d), r)| (q, d, r))
        .collect()
}
