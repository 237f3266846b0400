//! `umrank score` on the tiny Qwen2-VL fixture (`tests/fixtures/models/vlm`): its output lines are the library's
//! scores (and so transformers'), in input order, and a malformed pairs line is an error naming file and line.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::common::cli::umrank;
use umrank::models::qwen2_vl::{
    score, ImageGrid, ImagePatches, PairScore, Qwen2VlModel, ScoreInput,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/vlm")
        .join(name)
}

/// `umrank score` of a pairs file with the tiny Qwen2-VL and `extra` options: success, stdout, stderr.
fn score_cli(pairs: &Path, extra: &[&str]) -> (bool, String, String) {
    let model = fixture("qwen2_vl");
    let mut args = vec![
        "score",
        "--model",
        model.to_str().unwrap(),
        "--pairs",
        pairs.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    umrank(&args)
}

/// A pairs file in `dir` (with the fixture images copied next to it, so their paths are relative) holding the
/// reference.json pairs, in reverse order to check that output follows input.
fn write_pairs(dir: &Path, lines: &[&str]) -> PathBuf {
    std::fs::create_dir(dir.join("img")).unwrap();
    for i in 0..3 {
        let name = format!("image_{i}.png");
        std::fs::copy(fixture(&name), dir.join("img").join(&name)).unwrap();
    }
    let path = dir.join("pairs.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

const PAIR_0: &str = r#"{"instruction": "Find a matching photo.", "query_text": "a red square", "query_image": null, "doc_text": "a photo", "doc_image": "img/image_0.png"}"#;
const PAIR_1: &str = r#"{"instruction": "Match.", "query_text": "what is this?", "query_image": "img/image_1.png", "doc_image": "img/image_2.png"}"#;

/// The library's scores for the two reference pairs, from the processor's pixel values.
fn library_scores() -> Vec<PairScore> {
    let reference =
        candle_core::safetensors::load(fixture("reference.safetensors"), &Device::Cpu).unwrap();
    let grids: Vec<ImageGrid> = reference["image_grid_thw"]
        .to_vec2::<i64>()
        .unwrap()
        .into_iter()
        .map(|g| ImageGrid::new(g[0] as usize, g[1] as usize, g[2] as usize))
        .collect();
    let mut start = 0;
    let images: Vec<ImagePatches> = grids
        .into_iter()
        .map(|grid| {
            let pixels: Tensor = reference["pixel_values"]
                .narrow(0, start, grid.patches())
                .unwrap();
            start += grid.patches();
            ImagePatches { pixels, grid }
        })
        .collect();
    let ids: Vec<Vec<u32>> = {
        let ids = reference["rerank.input_ids"].to_vec2::<i64>().unwrap();
        let mask = reference["rerank.attention_mask"].to_vec2::<i64>().unwrap();
        ids.iter()
            .zip(&mask)
            .map(|(ids, mask)| {
                ids.iter()
                    .zip(mask)
                    .filter(|(_, &m)| m != 0)
                    .map(|(&id, _)| id as u32)
                    .collect()
            })
            .collect()
    };
    let row_images = [
        vec![images[0].clone()],
        vec![images[1].clone(), images[2].clone()],
    ];
    let inputs: Vec<ScoreInput> = ids
        .iter()
        .zip(&row_images)
        .map(|(ids, images)| ScoreInput { ids, images })
        .collect();
    let model =
        Qwen2VlModel::from_model_dir(&fixture("qwen2_vl"), DType::F32, &Device::Cpu).unwrap();
    let tokenizer =
        umrank::models::text::tokenizer::Tokenizer::from_dir(&fixture("qwen2_vl")).unwrap();
    score(&model, &inputs, tokenizer.yes_no_ids().unwrap(), 0, 2).unwrap()
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-5 * b.abs().max(1.0)
}

#[test]
fn score_prints_the_library_scores_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = write_pairs(dir.path(), &[PAIR_1, "", PAIR_0]);
    let (ok, stdout, stderr) = score_cli(&pairs, &["--batch", "1"]);
    assert!(ok, "umrank score failed: {stderr}");
    let got: Vec<PairScore> = stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let want = library_scores();
    assert_eq!(got.len(), 2);
    for (got, want) in got.iter().zip([want[1], want[0]]) {
        assert!(
            close(got.z_yes, want.z_yes)
                && close(got.z_no, want.z_no)
                && close(got.p_yes, want.p_yes),
            "{got:?} != {want:?}"
        );
    }
}

#[test]
fn malformed_line_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = write_pairs(dir.path(), &[PAIR_0, r#"{"instruction": 3}"#]);
    let (ok, _, stderr) = score_cli(&pairs, &[]);
    assert!(!ok);
    let at = format!("{}:2", pairs.display());
    assert!(stderr.contains(&at), "stderr does not name {at}: {stderr}");
}

#[test]
fn missing_image_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = r#"{"query_text": "q", "doc_image": "img/nope.png"}"#;
    let pairs = write_pairs(dir.path(), &[PAIR_0, PAIR_1, missing]);
    let (ok, _, stderr) = score_cli(&pairs, &[]);
    assert!(!ok);
    let at = format!("{}:3", pairs.display());
    assert!(
        stderr.contains(&at) && stderr.contains("nope.png"),
        "{stderr}"
    );
}
