//! Multimodal position ids against transformers' `get_rope_index` (`tests/fixtures/models/vision/reference.json`,
//! written by `gen_vision.py`): left- and right-padded batches mixing text-only rows and rows with one or two
//! images, and the same sequences packed into one row.

use candle_core::Device;
use serde_json::Value;
use umrank::models::qwen2_vl::{
    packed_rope_index, rope_index, ImageGrid, MropePositions, MropeTokens, RopeIndexError,
};

const TOKENS: MropeTokens = MropeTokens {
    image_token_id: 60,
    vision_start_token_id: 58,
    spatial_merge_size: 2,
};
const IMAGE: u32 = 60;
const START: u32 = 58;
const END: u32 = 59;

/// One padded batch from the fixture with transformers' answer.
struct Case {
    input_ids: Vec<Vec<u32>>,
    attention_mask: Vec<Vec<u32>>,
    grids: Vec<ImageGrid>,
    /// `(3, batch, seq)`.
    position_ids: Vec<Vec<Vec<i64>>>,
    deltas: Vec<i64>,
}

fn cases() -> Vec<Case> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/models/vision/reference.json"
    );
    let json: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let field = |case: &Value, name: &str| case[name].clone();
    json["rope_index"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| Case {
            input_ids: serde_json::from_value(field(case, "input_ids")).unwrap(),
            attention_mask: serde_json::from_value(field(case, "attention_mask")).unwrap(),
            grids: serde_json::from_value::<Vec<[usize; 3]>>(field(case, "grids"))
                .unwrap()
                .into_iter()
                .map(|[t, h, w]| ImageGrid::new(t, h, w))
                .collect(),
            position_ids: serde_json::from_value(field(case, "position_ids")).unwrap(),
            deltas: serde_json::from_value(field(case, "deltas")).unwrap(),
        })
        .collect()
}

#[test]
fn padded_batches_match_transformers() {
    let cases = cases();
    assert!(
        cases.iter().any(|c| c.attention_mask[0][0] == 0),
        "a left-padded case"
    );
    assert!(
        cases.iter().any(|c| c.attention_mask[0].last() == Some(&0)),
        "a right-padded case"
    );
    for (index, case) in cases.iter().enumerate() {
        let positions = rope_index(
            &case.input_ids,
            Some(&case.attention_mask),
            &case.grids,
            &TOKENS,
        )
        .unwrap();
        let (_, rows, len) = positions.dims();
        assert_eq!((rows, len), (case.input_ids.len(), case.input_ids[0].len()));
        for axis in 0..3 {
            for row in 0..rows {
                assert_eq!(
                    positions.row(axis, row),
                    case.position_ids[axis][row].as_slice(),
                    "case {index}, axis {axis}, row {row}"
                );
            }
        }
        assert_eq!(positions.deltas(), case.deltas.as_slice(), "case {index}");

        let tensor = positions.to_tensor(&Device::Cpu).unwrap();
        assert_eq!(tensor.to_vec3::<i64>().unwrap(), case.position_ids);
    }
}

/// Without a mask every token is real: a batch of one unpadded row matches the masked computation.
#[test]
fn no_mask_means_no_padding() {
    let case = &cases()[2];
    assert!(case.attention_mask[0].iter().all(|&m| m == 1));
    let positions = rope_index(&case.input_ids, None, &case.grids, &TOKENS).unwrap();
    assert_eq!(positions.row(1, 0), case.position_ids[1][0].as_slice());
    assert_eq!(positions.deltas(), case.deltas.as_slice());
}

/// Each batch's real tokens packed into one row: every sequence restarts at 0 and gets the positions and delta
/// transformers gave its padded row.
#[test]
fn packed_sequences_match_their_padded_rows() {
    for (index, case) in cases().iter().enumerate() {
        let mut packed = Vec::new();
        let mut cu_seqlens = vec![0];
        let mut expected: [Vec<i64>; 3] = Default::default();
        for (row, ids) in case.input_ids.iter().enumerate() {
            for (column, &id) in ids.iter().enumerate() {
                if case.attention_mask[row][column] != 0 {
                    packed.push(id);
                    for (axis, values) in expected.iter_mut().enumerate() {
                        values.push(case.position_ids[axis][row][column]);
                    }
                }
            }
            cu_seqlens.push(packed.len());
        }
        let positions = packed_rope_index(&packed, &cu_seqlens, &case.grids, &TOKENS).unwrap();
        assert_eq!(positions.dims(), (3, 1, packed.len()));
        for (axis, values) in expected.iter().enumerate() {
            assert_eq!(
                positions.row(axis, 0),
                values.as_slice(),
                "case {index}, axis {axis}"
            );
        }
        assert_eq!(positions.deltas(), case.deltas.as_slice(), "case {index}");
    }
}

fn one_row(ids: Vec<u32>, grids: &[ImageGrid]) -> Result<MropePositions, RopeIndexError> {
    rope_index(&[ids], None, grids, &TOKENS)
}

#[test]
fn malformed_prompts_are_clear_errors() {
    let grid = ImageGrid::new(1, 4, 4);
    let image = |count| std::iter::repeat_n(IMAGE, count);
    let prompt = |count| -> Vec<u32> {
        [1, START]
            .into_iter()
            .chain(image(count))
            .chain([END, 2])
            .collect()
    };
    assert!(one_row(prompt(4), &[grid]).is_ok());
    assert!(matches!(
        one_row(prompt(3), &[grid]),
        Err(RopeIndexError::PlaceholderCount {
            expected: 4,
            found: 3,
            ..
        })
    ));
    assert!(matches!(
        one_row(prompt(5), &[grid]),
        Err(RopeIndexError::PlaceholderCount {
            expected: 4,
            found: 5,
            ..
        })
    ));
    assert!(matches!(
        one_row(prompt(4), &[]),
        Err(RopeIndexError::MissingGrid { image: 0, .. })
    ));
    assert!(matches!(
        one_row(prompt(4), &[grid, grid]),
        Err(RopeIndexError::UnusedGrids {
            grids: 2,
            images: 1
        })
    ));
    assert!(matches!(
        one_row(vec![1, IMAGE, IMAGE, IMAGE, IMAGE], &[grid]),
        Err(RopeIndexError::NoVisionStart { token: 1, .. })
    ));
    assert!(matches!(
        one_row(prompt(4), &[ImageGrid::new(1, 4, 3)]),
        Err(RopeIndexError::Grid(_))
    ));
    assert!(matches!(
        rope_index(&[vec![1, 2], vec![3]], None, &[], &TOKENS),
        Err(RopeIndexError::RaggedBatch { row: 1, .. })
    ));
    assert!(matches!(
        rope_index(&[vec![1, 2]], Some(&[vec![0, 0]]), &[], &TOKENS),
        Err(RopeIndexError::EmptySequence { row: 0 })
    ));
    assert!(matches!(
        rope_index(&[vec![1, 2]], Some(&[vec![1]]), &[], &TOKENS),
        Err(RopeIndexError::MaskShape { .. })
    ));
    assert!(matches!(
        packed_rope_index(&[1, 2, 3], &[0, 2], &[], &TOKENS),
        Err(RopeIndexError::CuSeqlens { .. })
    ));
    let message = one_row(prompt(3), &[grid]).unwrap_err().to_string();
    assert!(
        message.contains("needs 4 placeholder tokens, found 3"),
        "{message}"
    );
}
