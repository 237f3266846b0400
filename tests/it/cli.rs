//! The command line as a user meets it: help, inspect, and errors that name the file.

use crate::common::cli::umrank;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int32Array, RecordBatch, StringArray};
use umrank::dataset::DatasetWriter;
use umrank::pipeline::{Input, Output, RunOptions, Runner, Stage, StageContext, StageError};
use umrank::schema;
use umrank::shard::Shard;

fn judgements() -> RecordBatch {
    RecordBatch::try_new(
        schema::get("qrels").unwrap().arrow(),
        vec![
            Arc::new(StringArray::from(vec!["9:1", "9:2", "9:3"])),
            Arc::new(StringArray::from(vec!["9:10", "9:20", "9:30"])),
            Arc::new(Int32Array::from(vec![1, 2, 0])),
        ],
    )
    .unwrap()
}

struct Judge;

impl Stage for Judge {
    fn name(&self) -> &'static str {
        "judge"
    }

    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        Ok(serde_json::json!({"level": 2}))
    }

    fn inputs(&self) -> Vec<Input> {
        Vec::new()
    }

    fn outputs(&self) -> Vec<Output> {
        vec![Output::dataset("qrels", "qrels")]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        ctx.add_records(3);
        let mut w = ctx.create_dataset("qrels", "qrels")?;
        w.write(&judgements())?;
        w.finish()?;
        Ok(())
    }
}

#[test]
fn help_explains_commands_and_options() {
    let (ok, out, _) = umrank(&["--help"]);
    assert!(ok);
    for word in [
        "run",
        "demo",
        "inspect",
        "--max-reject-fraction",
        "--strict",
        "--verbose",
        "--quiet",
    ] {
        assert!(out.contains(word), "--help lacks {word}:\n{out}");
    }
    let (ok, out, _) = umrank(&["run", "--help"]);
    assert!(ok);
    for word in [
        "--from",
        "--until",
        "--force",
        "--shard",
        "--device",
        "job arrays",
    ] {
        assert!(out.contains(word), "run --help lacks {word}:\n{out}");
    }
}

#[test]
fn inspect_shows_a_dataset_legibly_and_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DatasetWriter::create(dir.path(), "qrels", Shard::ALL).unwrap();
    w.write(&judgements()).unwrap();
    w.finish().unwrap();
    let path = dir.path().to_str().unwrap();

    let (ok, out, err) = umrank(&["inspect", path]);
    assert!(ok, "{err}");
    assert!(
        out.contains("kind      qrels: Relevance judgements"),
        "{out}"
    );
    assert!(out.contains("rows      3"), "{out}");
    assert!(
        out.contains("relevance  Int32  not null  Graded relevance"),
        "{out}"
    );
    assert!(out.contains("qid  did   relevance"), "{out}");
    assert!(out.contains("9:2  9:20  2"), "{out}");

    let (ok, out, err) = umrank(&["inspect", path, "--json", "-n", "2"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["rows"], 3);
    assert_eq!(json["kind"], "qrels");
    assert_eq!(json["schema"][2]["name"], "relevance");
    assert_eq!(json["first_rows"].as_array().unwrap().len(), 2);
    assert_eq!(json["first_rows"][1]["did"], "9:20");
}

/// An images dataset: `umrank inspect` shows how many vision tokens its images become within the pixel bounds
/// (Qwen2-VL's by default, or the ones given), from the stored sizes.
#[test]
fn inspect_shows_an_images_datasets_token_counts_within_the_pixel_bounds() {
    use arrow::array::{LargeBinaryArray, UInt32Array};
    let dir = tempfile::tempdir().unwrap();
    let mut w = DatasetWriter::create(dir.path(), "images", Shard::ALL).unwrap();
    let sizes = [(28u32, 28u32), (2800, 2800), (640, 480)];
    let batch = RecordBatch::try_new(
        w.arrow_schema(),
        vec![
            Arc::new(StringArray::from(vec!["a", "b", "c"])),
            Arc::new(LargeBinaryArray::from(vec![&b"x"[..], b"y", b"z"])),
            Arc::new(UInt32Array::from(sizes.map(|(w, _)| w).to_vec())),
            Arc::new(UInt32Array::from(sizes.map(|(_, h)| h).to_vec())),
            Arc::new(StringArray::from(vec!["png"; 3])),
        ],
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    let path = dir.path().to_str().unwrap();

    // 28 x 28 is resized up to the 4 tokens of min_pixels, 2800 x 2800 down to 35 x 35 tokens within
    // max_pixels (1280 tokens of 28 x 28 pixels), 640 x 480 to 644 x 476 pixels: 23 x 17 tokens.
    let (ok, out, err) = umrank(&["inspect", path]);
    assert!(ok, "{err}");
    assert!(
        out.contains("tokens    3 images of 4 to 1225 tokens (median 391, 1620 in all), at 3136 to 1003520 pixels"),
        "{out}"
    );
    let (ok, out, err) = umrank(&["inspect", path, "--json", "--max-pixels", "200704"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let tokens = &json["image_tokens"];
    assert_eq!(tokens["max_pixels"], 200704, "{tokens}");
    assert_eq!(tokens["counts"]["max"], 256, "{tokens}");
    assert_eq!(tokens["counts"]["min"], 4, "{tokens}");
}

#[test]
fn inspect_shows_a_manifest_legibly_and_as_json() {
    let dir = tempfile::tempdir().unwrap();
    let runner = Runner::new(
        dir.path().to_path_buf(),
        42,
        vec![("judge".into(), Box::new(Judge) as Box<dyn Stage>)],
        RunOptions::default(),
    );
    runner.run().unwrap();
    let stage = dir.path().join("judge");

    let (ok, out, err) = umrank(&["inspect", stage.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(
        out.contains("stage     judge (kind judge), shard 0/1"),
        "{out}"
    );
    assert!(out.contains("config    {\"level\":2}"), "{out}");
    assert!(out.contains("records   3 read, 0 rejected"), "{out}");
    assert!(out.contains("qrels/part-00000-of-00001.parquet"), "{out}");
    assert!(out.contains("3 rows"), "{out}");
    assert!(out.contains("rejects.parquet"), "{out}");

    let manifest = stage.join("manifest.json");
    let (ok, out, err) = umrank(&["inspect", manifest.to_str().unwrap(), "--json"]);
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(json["stage"], "judge");
    assert_eq!(json["seed"], 42);
    assert_eq!(json["outputs"][0]["rows"], 3);
}

#[test]
fn errors_name_the_file() {
    let (ok, _, err) = umrank(&["run", "no/such/pipeline.toml"]);
    assert!(!ok);
    assert!(err.contains("no/such/pipeline.toml"), "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.toml");
    std::fs::write(
        &file,
        "[pipeline]\nname = \"x\"\nworkdir = \"w\"\n\n[frobnicate]\n",
    )
    .unwrap();
    let (ok, _, err) = umrank(&["run", file.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        err.contains("p.toml: [frobnicate]: unknown stage kind `frobnicate`"),
        "{err}"
    );

    let (ok, _, err) = umrank(&["inspect", Path::new("nowhere").to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("nowhere"), "{err}");

    let (ok, _, err) = umrank(&["run", file.to_str().unwrap(), "--shard", "3/2"]);
    assert!(!ok);
    assert!(err.contains("out of range"), "{err}");
}
