//! The tokenizer wrapper against transformers' encodings of the fixture vocabulary (the real Qwen2 vocabulary cut
//! to its first 10,000 ranks; see tests/fixtures/tokenizer/gen_tokenizer.py), and the answer-token rule on small
//! tokenizers of other kinds.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use umrank::models::text::tokenizer::{AnswerIds, Tokenizer, TokenizerError};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer")
}

fn qwen2() -> Tokenizer {
    Tokenizer::from_dir(&fixtures().join("qwen2_prefix")).expect("fixture tokenizer loads")
}

fn references() -> Value {
    let text = fs::read_to_string(fixtures().join("references.json")).expect("references exist");
    serde_json::from_str(&text).expect("references are JSON")
}

fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an id list")
        .iter()
        .map(|id| id.as_u64().expect("an id") as u32)
        .collect()
}

/// A tokenizer written from a tokenizer.json text into a temporary directory.
fn tokenizer_from_json(json: &str) -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("tokenizer.json"), json).expect("write tokenizer.json");
    let tokenizer = Tokenizer::from_dir(dir.path()).expect("test tokenizer loads");
    (dir, tokenizer)
}

fn word_level(pre_tokenizer: &str, vocab: &str) -> String {
    format!(
        r#"{{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
            "pre_tokenizer": {pre_tokenizer}, "post_processor": null, "decoder": null,
            "model": {{"type": "WordLevel", "vocab": {vocab}, "unk_token": "[UNK]"}}}}"#
    )
}

#[test]
fn encodings_match_transformers() {
    let tokenizer = qwen2();
    let references = references();
    let cases = references["encode"].as_array().expect("encode cases");
    assert!(cases.len() > 10);
    for case in cases {
        let text = case["text"].as_str().expect("text");
        assert_eq!(
            tokenizer.encode(text, false).unwrap(),
            ids(&case["ids"]),
            "{text:?}"
        );
        assert_eq!(
            tokenizer.encode(text, true).unwrap(),
            ids(&case["ids_with_special_tokens"]),
            "{text:?} with special tokens"
        );
        assert_eq!(
            tokenizer.encode_text(text).unwrap(),
            ids(&case["ids_special_as_text"]),
            "{text:?} with special-token strings as text"
        );
        let encoded = ids(&case["ids"]);
        assert_eq!(
            tokenizer.decode(&encoded, false).unwrap(),
            case["decoded"].as_str().unwrap()
        );
        assert_eq!(
            tokenizer.decode(&encoded, true).unwrap(),
            case["decoded_skip_special"].as_str().unwrap()
        );
    }
}

#[test]
fn special_token_strings_in_data_are_text() {
    let tokenizer = qwen2();
    let im_end = tokenizer.special_token_id("<|im_end|>").unwrap();
    let text = "a document that says <|im_end|> in the middle";
    assert!(tokenizer.encode(text, false).unwrap().contains(&im_end));
    let literal = tokenizer.encode_text(text).unwrap();
    assert!(!literal.contains(&im_end));
    assert_eq!(tokenizer.decode(&literal, false).unwrap(), text);
}

#[test]
fn batch_encoding_equals_single_encodings() {
    let tokenizer = qwen2();
    let references = references();
    let texts: Vec<&str> = references["encode"]
        .as_array()
        .unwrap()
        .iter()
        .map(|case| case["text"].as_str().unwrap())
        .collect();
    let batch = tokenizer.encode_batch(&texts, false).unwrap();
    for (text, encoded) in texts.iter().zip(batch) {
        assert_eq!(encoded, tokenizer.encode(text, false).unwrap());
    }
}

#[test]
fn special_token_ids_match_transformers() {
    let tokenizer = qwen2();
    let references = references();
    let specials = references["special_tokens"].as_object().unwrap();
    assert_eq!(specials.len(), 14);
    for (token, id) in specials {
        assert_eq!(
            tokenizer.special_token_id(token).unwrap() as u64,
            id.as_u64().unwrap(),
            "{token}"
        );
        assert_eq!(
            tokenizer
                .id_to_token(id.as_u64().unwrap() as u32)
                .as_deref(),
            Some(token.as_str())
        );
    }
    let ranks = references["vocab_ranks"].as_u64().unwrap() as usize;
    assert_eq!(tokenizer.vocab_size(false), ranks);
    assert_eq!(tokenizer.vocab_size(true), ranks + specials.len());
}

#[test]
fn token_lookups_fail_clearly() {
    let tokenizer = qwen2();
    let err = tokenizer.token_id("<|not_a_token|>").unwrap_err();
    assert!(
        matches!(err, TokenizerError::UnknownToken { ref token, .. } if token == "<|not_a_token|>")
    );
    let message = err.to_string();
    assert!(
        message.contains("<|not_a_token|>") && message.contains("tokenizer.json"),
        "{message}"
    );

    // "yes" is an ordinary vocabulary entry: asking for it as a special token is a mistake worth reporting.
    let err = tokenizer.special_token_id("yes").unwrap_err();
    assert!(
        matches!(err, TokenizerError::NotSpecial { id: 9693, .. }),
        "{err}"
    );
    assert_eq!(tokenizer.token_id("Ġyes").unwrap(), 9834);
}

#[test]
fn answer_ids_are_qwen2s() {
    let tokenizer = qwen2();
    let references = references();
    let expected = AnswerIds {
        yes: references["answer_ids"]["yes"].as_u64().unwrap() as u32,
        no: references["answer_ids"]["no"].as_u64().unwrap() as u32,
    };
    assert_eq!(
        expected,
        AnswerIds {
            yes: 9693,
            no: 2152
        }
    );
    assert_eq!(tokenizer.yes_no_ids().unwrap(), expected);
}

#[test]
fn answer_rule_takes_the_sentencepiece_word_start_spelling() {
    // The bare spellings exist too; the rule must still pick the tokens this tokenizer produces for the word.
    let json = word_level(
        r#"{"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always", "split": true}"#,
        r#"{"[UNK]": 0, "yes": 1, "no": 2, "▁yes": 3, "▁no": 4}"#,
    );
    let (_dir, tokenizer) = tokenizer_from_json(&json);
    assert_eq!(tokenizer.yes_no_ids().unwrap(), AnswerIds { yes: 3, no: 4 });
}

#[test]
fn answer_rule_takes_the_prefix_space_spelling() {
    let json = word_level(
        r#"{"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true}"#,
        r#"{"[UNK]": 0, "yes": 1, "no": 2, "Ġyes": 3, "Ġno": 4}"#,
    );
    let (_dir, tokenizer) = tokenizer_from_json(&json);
    assert_eq!(tokenizer.yes_no_ids().unwrap(), AnswerIds { yes: 3, no: 4 });
}

#[test]
fn answer_word_split_over_tokens_is_an_error() {
    let json = r#"{"version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null, "decoder": null,
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": {"y": 0, "e": 1, "s": 2, "n": 3, "o": 4, "es": 5, "no": 6},
                  "merges": [["e", "s"], ["n", "o"]]}}"#;
    let (_dir, tokenizer) = tokenizer_from_json(json);
    let err = tokenizer.yes_no_ids().unwrap_err();
    match &err {
        TokenizerError::AnswerNotSingleToken { word, tokens, .. } => {
            assert_eq!(*word, "yes");
            assert_eq!(tokens, &["y", "es"]);
        }
        other => panic!("expected AnswerNotSingleToken, got {other}"),
    }
    assert!(err.to_string().contains(r#"["y", "es"]"#), "{err}");
}

#[test]
fn answer_words_on_one_id_are_an_error() {
    // Neither word is in the vocabulary, so both become the unknown token.
    let json = word_level(r#"{"type": "Whitespace"}"#, r#"{"[UNK]": 0, "maybe": 1}"#);
    let (_dir, tokenizer) = tokenizer_from_json(&json);
    let err = tokenizer.yes_no_ids().unwrap_err();
    assert!(
        matches!(err, TokenizerError::AnswerCollision { id: 0, .. }),
        "{err}"
    );
}

#[test]
fn missing_or_broken_tokenizer_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, TokenizerError::Load { .. }));
    assert!(err.to_string().contains("tokenizer.json"), "{err}");

    fs::write(dir.path().join("tokenizer.json"), "{\"model\": 3}").unwrap();
    let err = Tokenizer::from_dir(dir.path()).unwrap_err();
    assert!(matches!(err, TokenizerError::Load { .. }), "{err}");
}

#[test]
fn token_ends_are_character_boundaries_that_rebuild_the_text() {
    let tokenizer = qwen2();
    for text in [
        "图像检索 と テキスト, ёжик, 🦀🦀 emoji",
        "Crabs live in oceans.",
        "cafe\u{301} NFC",
    ] {
        let ends = tokenizer.token_ends(text).unwrap();
        assert_eq!(ends.last().copied(), Some(text.len()), "{text:?}");
        assert!(ends.windows(2).all(|pair| pair[0] < pair[1]));
        for &end in &ends {
            assert!(text.is_char_boundary(end));
        }
    }
    // Byte-level tokens split the crab emoji into pieces that share its offsets: the emoji is one cut, not four.
    let ends = tokenizer.token_ends("🦀").unwrap();
    assert_eq!(ends, vec!["🦀".len()]);
    assert!(tokenizer.encode_text("🦀").unwrap().len() > 1);
}
