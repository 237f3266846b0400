//! The dual-encoder trainer (`[embedder]`) on the small demo world: it learns, it writes a model directory the
//! embed stage loads and that embeds exactly as training did, it is deterministic per seed, reruns are no-ops, and
//! bad settings are refused by name.

use std::collections::BTreeMap;
use std::fs;
use std::path::Path;

use arrow::array::AsArray;
use arrow::datatypes::Float32Type;
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use umrank::dataset::Dataset;
use umrank::digest::sha256_file;
use umrank::embedder::{Inputs, PairSet, Pixels};
use umrank::media::preprocess::{ClipProcessor, PreprocessorConfig};
use umrank::models::embedders::clip::{ClipConfig, ClipModel};
use umrank::pipeline::{PipelineConfig, RunOptions, Runner, StageOutcome, StageReport};
use umrank::schema::outputs::embed::QUERY_EMBEDDINGS;
use umrank::schema::outputs::embedder::{MODEL as MODEL_DIR, TRAIN_LOG};

use crate::common::datasets::small_world;

/// Small enough to train in seconds, big enough to learn the small world's training pairs.
const PIPELINE: &str = r#"
[pipeline]
name = "embedder-test"
workdir = "runs"
seed = 5

[ingest]
format = "mbeir"
root = "ROOT"

[embedder]
from = "ingest"
epochs = 12
batch_size = 16
lr = 3e-3

[embedder.architecture]
width = 32
layers = 1
heads = 2
projection_dim = 32

[embed]
from = "ingest"
model_from = "embedder"
model = "model"
"#;

fn run(dir: &Path, root: &Path, pipeline: &str) -> Result<Vec<StageReport>, String> {
    let text = pipeline.replace("ROOT", &root.display().to_string());
    let path = dir.join("pipeline.toml");
    fs::write(&path, &text).unwrap();
    let mut config = PipelineConfig::parse(&path, &text).map_err(|e| e.to_string())?;
    config.workdir = dir.join("runs");
    let runner = Runner::from_config(&config, &umrank::stages::registry(), RunOptions::default())
        .map_err(|e| e.to_string())?;
    runner.run().map_err(|e| e.to_string())
}

fn log_losses(stage: &Path) -> Vec<f64> {
    fs::read_to_string(stage.join(TRAIN_LOG))
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["loss"]
                .as_f64()
                .unwrap()
        })
        .collect()
}

fn query_vectors(embed: &Path) -> BTreeMap<String, Vec<f32>> {
    let mut out = BTreeMap::new();
    for batch in Dataset::open(&embed.join(QUERY_EMBEDDINGS))
        .unwrap()
        .batches()
        .unwrap()
    {
        let batch = batch.unwrap();
        let ids = batch.column_by_name("id").unwrap().as_string::<i32>();
        let vectors = batch.column_by_name("vector").unwrap().as_fixed_size_list();
        for row in 0..batch.num_rows() {
            let v = vectors.value(row);
            out.insert(
                ids.value(row).to_string(),
                v.as_primitive::<Float32Type>().values().to_vec(),
            );
        }
    }
    out
}

#[test]
fn the_embedder_learns_and_the_embed_stage_embeds_as_training_did() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _) = small_world(tmp.path(), 9);
    let reports = run(tmp.path(), &root, PIPELINE).unwrap();
    assert!(reports.iter().all(|r| r.outcome == StageOutcome::Ran));
    let stage = tmp.path().join("runs/embedder");
    let model_dir = stage.join(MODEL_DIR);
    for file in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "preprocessor_config.json",
    ] {
        assert!(model_dir.join(file).is_file(), "{file}");
    }

    let losses = log_losses(&stage);
    assert_eq!(losses.len(), 12);
    println!("loss per epoch: {losses:.3?}");
    assert!(
        losses[11] < 0.6 * losses[0],
        "the loss did not fall: {losses:?}"
    );

    // The saved model, reloaded, embeds the training pairs' queries exactly as the embed stage did.
    let config = ClipConfig::read(&model_dir).unwrap();
    let weights = [model_dir.join("model.safetensors")];
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&weights, DType::F32, &Device::Cpu) }.unwrap();
    let model = ClipModel::new(&config, vb).unwrap();
    let ingest = tmp.path().join("runs/ingest");
    let pairs = PairSet::read(&ingest, "train", None).unwrap();
    let processor = ClipProcessor::from_config(
        &PreprocessorConfig::from_file(&model_dir.join("preprocessor_config.json")).unwrap(),
    )
    .unwrap();
    let pixels = Pixels::read(&ingest.join("images"), &pairs.image_ids(), &processor).unwrap();
    let tokenizer = tokenizers::Tokenizer::from_file(model_dir.join("tokenizer.json")).unwrap();
    let inputs = Inputs::new(&pairs, &tokenizer, 64, &pixels, 56, &Device::Cpu).unwrap();
    let stage_vectors = query_vectors(&tmp.path().join("runs/embed"));
    let mut modalities = std::collections::BTreeSet::new();
    for pair in &pairs.train {
        let ours = inputs
            .embed(&model, &[&pair.query])
            .unwrap()
            .to_vec2::<f32>()
            .unwrap();
        let theirs = &stage_vectors[&pair.qid];
        let diff = ours[0]
            .iter()
            .zip(theirs)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(diff < 1e-5, "{}: {diff}", pair.qid);
        modalities.insert((pair.query.text.is_some(), pair.query.image_id.is_some()));
    }
    assert_eq!(
        modalities.len(),
        3,
        "text, image and fused queries all checked"
    );

    // A rerun is a no-op.
    let again = run(tmp.path(), &root, PIPELINE).unwrap();
    assert!(again.iter().all(|r| r.outcome == StageOutcome::UpToDate));
}

#[test]
fn the_same_seed_trains_the_same_weights_and_another_seed_does_not() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, _) = small_world(tmp.path(), 9);
    let short = PIPELINE.replace("epochs = 12", "epochs = 2");
    let hashes = |seed: u64, run_index: u32| {
        let dir = tmp.path().join(format!("seed-{seed}-run-{run_index}"));
        fs::create_dir_all(&dir).unwrap();
        run(
            &dir,
            &root,
            &short.replace("seed = 5", &format!("seed = {seed}")),
        )
        .unwrap();
        sha256_file(&dir.join("runs/embedder/model/model.safetensors")).unwrap()
    };
    let first = hashes(5, 0);
    assert_eq!(first, hashes(5, 1));
    assert_ne!(first, hashes(6, 0));
}

#[test]
fn settings_that_cannot_train_are_refused_by_name() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("absent");
    for (edit, field) in [
        ("batch_size = 16", "batch_size"),
        ("heads = 2", "architecture.heads"),
        ("lr = 3e-3", "lr"),
    ] {
        let bad = match field {
            "batch_size" => PIPELINE.replace(edit, "batch_size = 1"),
            "architecture.heads" => PIPELINE.replace(edit, "heads = 3"),
            _ => PIPELINE.replace(edit, "lr = -1.0"),
        };
        let err = run(tmp.path(), &root, &bad).unwrap_err();
        assert!(err.contains(field) && err.contains("[embedder]"), "{err}");
    }
}
