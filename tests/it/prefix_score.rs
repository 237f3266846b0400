//! Scoring with prompts' common heads run once equals scoring them as padded batches, for every text decoder
//! family (Qwen2, Qwen3, Llama and the Qwen2-VL text model with its M-RoPE), at any batch size.

use crate::common::reference::load;

use umrank::models::prefix_score::{score_text, PrefixRow};
use umrank::models::qwen2_vl::{score, PairScore, ScoreInput};
use umrank::models::text::tokenizer::AnswerIds;

const ANSWERS: AnswerIds = AnswerIds { yes: 3, no: 7 };
const PAD: u32 = 0;

/// Three queries' lists as eval builds them: a head shared by all (the system turn), then the query's own part,
/// then each document's tokens, of varied lengths (one document twice, so two prompts are equal).
fn prompts() -> Vec<Vec<u32>> {
    let system = [1, 5, 9, 13, 17, 21];
    let mut prompts = Vec::new();
    for query in 0..3u32 {
        let head: Vec<u32> = system
            .iter()
            .copied()
            .chain((0..4 + query).map(|t| 30 + (t * 7 + query) % 40))
            .collect();
        for doc in [0u32, 1, 2, 2, 3] {
            let tail = (0..2 + (doc * 3 + query) % 6).map(|t| 2 + (t * 11 + doc * 5) % 60);
            prompts.push(head.iter().copied().chain(tail).collect());
        }
    }
    prompts
}

fn max_difference(a: &[PairScore], b: &[PairScore]) -> f32 {
    a.iter()
        .zip(b)
        .flat_map(|(a, b)| [(a.z_yes - b.z_yes).abs(), (a.z_no - b.z_no).abs()])
        .fold(0.0, f32::max)
}

#[test]
fn shared_heads_score_like_padded_batches_for_every_text_decoder() {
    let prompts = prompts();
    let slices: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let inputs: Vec<ScoreInput> = slices
        .iter()
        .map(|ids| ScoreInput { ids, images: &[] })
        .collect();
    for family in ["qwen2", "qwen3", "llama", "qwen2_vl"] {
        let decoder = load(family);
        let padded = score(&decoder, &inputs, ANSWERS, PAD, inputs.len()).unwrap();
        assert!(padded.iter().any(|s| s.z_yes != padded[0].z_yes));
        for batch in [1, 4, 5, 7, prompts.len()] {
            let shared = score_text(&decoder, &slices, ANSWERS, batch).unwrap();
            assert_eq!(shared.len(), padded.len());
            let difference = max_difference(&shared, &padded);
            assert!(difference < 1e-4, "{family}, batch {batch}: {difference:e}");
        }
    }
}

#[test]
fn a_batch_runs_each_querys_head_once() {
    let prompts = prompts();
    let slices: Vec<&[u32]> = prompts.iter().map(Vec::as_slice).collect();
    let row = PrefixRow::new(&slices).unwrap();
    assert_eq!(row.groups().len(), 3);
    for (group, query) in row.groups().iter().zip(0..) {
        assert_eq!(group.prefix.len(), 10 + query);
        assert_eq!(group.suffixes.len(), 5);
    }
    let whole: usize = prompts.iter().map(Vec::len).sum();
    assert!(row.len() < whole);
    // A batch that holds the end of one list and the start of the next still groups by query.
    let row = PrefixRow::new(&slices[3..7]).unwrap();
    let sizes: Vec<usize> = row.groups().iter().map(|g| g.suffixes.len()).collect();
    assert_eq!(sizes, [2, 2]);
}

#[test]
fn empty_prompts_are_an_error() {
    let decoder = load("qwen2");
    let error = score_text(&decoder, &[&[1, 2], &[3], &[4], &[]], ANSWERS, 2).unwrap_err();
    assert!(
        format!("{error:#}").contains("prompt 1 is empty"),
        "{error:#}"
    );
    assert!(format!("{error:#}").contains("batch 1"), "{error:#}");
    assert!(PrefixRow::new(&[&[]]).is_err());
}
