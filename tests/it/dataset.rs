//! Parquet datasets: zstd, bounded row groups, atomic part files, streaming reads, shards read back as one.

use std::fs::{self, File};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, Int32Array, RecordBatch, StringArray};
use parquet::basic::Compression;
use parquet::file::reader::{FileReader, SerializedFileReader};
use umrank::dataset::{Dataset, DatasetError, DatasetWriter, WriteOptions};
use umrank::schema;
use umrank::shard::Shard;

fn qrels(from: usize, to: usize) -> RecordBatch {
    let q: Vec<String> = (from..to).map(|i| format!("q{i}")).collect();
    let d: Vec<String> = (from..to).map(|i| format!("d{}", i % 17)).collect();
    let r: Vec<i32> = (from..to).map(|i| (i % 3) as i32).collect();
    RecordBatch::try_new(
        schema::get("qrels").unwrap().arrow(),
        vec![
            Arc::new(StringArray::from(q)),
            Arc::new(StringArray::from(d)),
            Arc::new(Int32Array::from(r)),
        ],
    )
    .unwrap()
}

fn write(dir: &Path, shard: Shard, batches: &[RecordBatch], options: WriteOptions) {
    let kind = schema::get("qrels").unwrap();
    let mut w = DatasetWriter::create_with(dir, kind, kind.arrow(), shard, options).unwrap();
    for b in batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
}

#[test]
fn parts_are_zstd_with_bounded_row_groups_and_stream_back() {
    let dir = tempfile::tempdir().unwrap();
    let options = WriteOptions {
        max_row_group_rows: 1000,
        ..Default::default()
    };
    let batches: Vec<_> = (0..10).map(|i| qrels(i * 500, (i + 1) * 500)).collect();
    write(dir.path(), Shard::ALL, &batches, options);

    let file = dir.path().join("part-00000-of-00001.parquet");
    let reader = SerializedFileReader::new(File::open(&file).unwrap()).unwrap();
    let meta = reader.metadata();
    assert_eq!(meta.num_row_groups(), 5);
    for rg in meta.row_groups() {
        assert!(rg.num_rows() <= 1000);
        for col in rg.columns() {
            assert!(matches!(col.compression(), Compression::ZSTD(_)));
        }
    }
    let kv = meta.file_metadata().key_value_metadata().unwrap();
    assert!(kv
        .iter()
        .any(|kv| kv.key == "umrank.schema" && kv.value.as_deref() == Some("qrels")));

    let dataset = Dataset::open(dir.path()).unwrap();
    assert_eq!(dataset.num_rows().unwrap(), 5000);
    assert_eq!(dataset.kind().unwrap().as_deref(), Some("qrels"));
    let mut seen = 0;
    for batch in dataset.batches_of(300).unwrap() {
        let batch = batch.unwrap();
        assert!(
            batch.num_rows() <= 300,
            "batches are bounded, not the whole dataset"
        );
        let q = batch
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .unwrap();
        assert_eq!(q.value(0), format!("q{seen}"), "rows come back in order");
        seen += batch.num_rows();
    }
    assert_eq!(seen, 5000);
}

#[test]
fn a_part_is_invisible_until_finished() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DatasetWriter::create(dir.path(), "qrels", Shard::ALL).unwrap();
    w.write(&qrels(0, 10)).unwrap();
    assert!(matches!(
        Dataset::open(dir.path()),
        Err(DatasetError::Empty { .. })
    ));
    let part = w.finish().unwrap();
    assert_eq!(part.rows, 10);
    assert_eq!(part.bytes, fs::metadata(&part.path).unwrap().len());
    assert_eq!(
        part.sha256,
        umrank::digest::sha256_file(&part.path).unwrap()
    );
    assert_eq!(Dataset::open(dir.path()).unwrap().num_rows().unwrap(), 10);
    let leftovers: Vec<_> = fs::read_dir(dir.path())
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(
        leftovers.len(),
        1,
        "no temporary file remains: {leftovers:?}"
    );
}

#[test]
fn shards_read_back_as_one_dataset_and_incomplete_sets_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    write(
        dir.path(),
        Shard::new(0, 3).unwrap(),
        &[qrels(0, 10)],
        WriteOptions::default(),
    );
    write(
        dir.path(),
        Shard::new(2, 3).unwrap(),
        &[qrels(20, 30)],
        WriteOptions::default(),
    );
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("2 of 3 parts present, missing part(s) 1"),
        "{err}"
    );

    write(
        dir.path(),
        Shard::new(1, 3).unwrap(),
        &[qrels(10, 20)],
        WriteOptions::default(),
    );
    let dataset = Dataset::open(dir.path()).unwrap();
    assert_eq!(dataset.parts().len(), 3);
    let ids: Vec<String> = dataset
        .batches()
        .unwrap()
        .flat_map(|b| {
            let b = b.unwrap();
            let q = b
                .column(0)
                .as_any()
                .downcast_ref::<StringArray>()
                .unwrap()
                .clone();
            (0..q.len()).map(move |i| q.value(i).to_string())
        })
        .collect();
    let expected: Vec<String> = (0..30).map(|i| format!("q{i}")).collect();
    assert_eq!(ids, expected, "parts are read in part order");

    write(
        dir.path(),
        Shard::ALL,
        &[qrels(0, 1)],
        WriteOptions::default(),
    );
    let err = Dataset::open(dir.path()).unwrap_err().to_string();
    assert!(
        err.contains("parts from different shard counts (1, 3)"),
        "{err}"
    );
}

#[test]
fn identical_batches_give_identical_bytes() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let batches = [qrels(0, 700), qrels(700, 1000)];
    write(a.path(), Shard::ALL, &batches, WriteOptions::default());
    write(b.path(), Shard::ALL, &batches, WriteOptions::default());
    let name = "part-00000-of-00001.parquet";
    assert_eq!(
        fs::read(a.path().join(name)).unwrap(),
        fs::read(b.path().join(name)).unwrap()
    );
}

#[test]
fn an_off_schema_batch_is_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DatasetWriter::create(dir.path(), "qrels", Shard::ALL).unwrap();
    let swapped = RecordBatch::try_from_iter(vec![
        (
            "did",
            Arc::new(StringArray::from(vec!["d"])) as Arc<dyn Array>,
        ),
        (
            "qid",
            Arc::new(StringArray::from(vec!["q"])) as Arc<dyn Array>,
        ),
        (
            "relevance",
            Arc::new(Int32Array::from(vec![1])) as Arc<dyn Array>,
        ),
    ])
    .unwrap();
    let err = w.write(&swapped).unwrap_err().to_string();
    assert!(
        err.contains("field `qid` is at column 1, expected at column 0"),
        "{err}"
    );
    let missing = RecordBatch::try_from_iter(vec![
        (
            "qid",
            Arc::new(StringArray::from(vec!["q"])) as Arc<dyn Array>,
        ),
        (
            "did",
            Arc::new(StringArray::from(vec!["d"])) as Arc<dyn Array>,
        ),
    ])
    .unwrap();
    let err = w.write(&missing).unwrap_err().to_string();
    assert!(err.contains("field `relevance` is missing"), "{err}");
    assert_eq!(w.rows(), 0);
}
