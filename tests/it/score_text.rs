//! Reranker scoring through a text-only decoder (the tiny Qwen2 fixture of `tests/fixtures/models`): the yes/no
//! logits at each prompt's last token equal transformers' full logits there, whatever the batching.

use crate::common::reference;

use reference::{get, load, rel_error, Batch};
use umrank::models::qwen2_vl::{score, ScoreInput};
use umrank::models::text::tokenizer::AnswerIds;

#[test]
fn text_decoder_scores_match_transformers_logits() {
    let decoder = load("qwen2");
    let batch = Batch::of("qwen2");
    let ids = batch.input_ids.to_vec2::<i64>().unwrap();
    let last = batch.last_positions();
    let prompts: Vec<Vec<u32>> = batch.valid_positions().iter().fold(
        vec![Vec::new(); ids.len()],
        |mut rows, &(row, pos)| {
            rows[row].push(ids[row][pos] as u32);
            rows
        },
    );
    let answers = AnswerIds { yes: 5, no: 9 };
    let logits = get("qwen2.logits").to_vec3::<f32>().unwrap();
    let want: Vec<f64> = last
        .iter()
        .flat_map(|&(row, pos)| [logits[row][pos][5] as f64, logits[row][pos][9] as f64])
        .collect();
    let inputs: Vec<ScoreInput> = prompts
        .iter()
        .map(|ids| ScoreInput { ids, images: &[] })
        .collect();
    for batch_size in [1, 2, 3] {
        let scores = score(&decoder, &inputs, answers, 0, batch_size).unwrap();
        let got: Vec<f64> = scores
            .iter()
            .flat_map(|s| [s.z_yes as f64, s.z_no as f64])
            .collect();
        let err = rel_error(&got, &want);
        assert!(err < 1e-4, "batch {batch_size}: rel error {err}");
    }
}
