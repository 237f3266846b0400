//! A word-level tokenizer built from the training texts.
//!
//! A from-scratch model needs no subword vocabulary learned elsewhere: the demo world's language is a few hundred
//! words, and a word-level tokenizer over the texts the model will see keeps every word one token. It is written
//! as an ordinary tokenizer.json (lowercase, split on whitespace and punctuation, end-of-text appended), so the
//! embed stage and transformers load it like any other.

use std::collections::HashMap;

use serde_json::{json, Value};
use tokenizers::pre_tokenizers::whitespace::Whitespace;
use tokenizers::{OffsetReferential, OffsetType, PreTokenizedString, PreTokenizer, Tokenizer};

use super::error::DualEncoderError;

pub const UNK: &str = "<unk>";
pub const END_OF_TEXT: &str = "<|endoftext|>";
pub const PAD: &str = "<pad>";
/// Ids of [`UNK`], [`END_OF_TEXT`] and [`PAD`]; words follow. The end-of-text id is not 2, which transformers'
/// CLIP would read as a legacy config and pool at the largest id instead.
pub const UNK_ID: u32 = 0;
pub const END_OF_TEXT_ID: u32 = 1;
pub const PAD_ID: u32 = 2;

/// The tokenizer.json for the words of `texts` (most frequent first, ties alphabetical), and the loaded tokenizer.
pub fn build_tokenizer<'a>(
    texts: impl IntoIterator<Item = &'a str>,
) -> Result<(Value, Tokenizer), DualEncoderError> {
    let mut counts: HashMap<String, u64> = HashMap::new();
    for text in texts {
        for word in words(text)? {
            *counts.entry(word).or_default() += 1;
        }
    }
    let mut ranked: Vec<(String, u64)> = counts.into_iter().collect();
    ranked.sort_by(|(a, na), (b, nb)| nb.cmp(na).then_with(|| a.cmp(b)));
    let mut vocab = serde_json::Map::new();
    for (id, token) in [(UNK_ID, UNK), (END_OF_TEXT_ID, END_OF_TEXT), (PAD_ID, PAD)] {
        vocab.insert(token.into(), id.into());
    }
    for (i, (word, _)) in ranked.into_iter().enumerate() {
        vocab.insert(word, (i + 3).into());
    }
    let json = tokenizer_json(vocab);
    let bytes =
        serde_json::to_vec(&json).map_err(|e| DualEncoderError::Tokenizer(e.to_string()))?;
    let tokenizer =
        Tokenizer::from_bytes(bytes).map_err(|e| DualEncoderError::Tokenizer(e.to_string()))?;
    Ok((json, tokenizer))
}

/// The words of `text` exactly as the tokenizer will split it.
fn words(text: &str) -> Result<Vec<String>, DualEncoderError> {
    let mut pre = PreTokenizedString::from(text.to_lowercase());
    Whitespace {}
        .pre_tokenize(&mut pre)
        .map_err(|e| DualEncoderError::Tokenizer(e.to_string()))?;
    Ok(pre
        .get_splits(OffsetReferential::Original, OffsetType::Char)
        .into_iter()
        .map(|(word, _, _)| word.to_string())
        .collect())
}

fn tokenizer_json(vocab: serde_json::Map<String, Value>) -> Value {
    let special = |id: u32, content: &str| {
        json!({"id": id, "content": content, "single_word": false, "lstrip": false, "rstrip": false,
               "normalized": false, "special": true})
    };
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": [special(UNK_ID, UNK), special(END_OF_TEXT_ID, END_OF_TEXT), special(PAD_ID, PAD)],
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": END_OF_TEXT, "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}},
                     {"SpecialToken": {"id": END_OF_TEXT, "type_id": 1}}],
            "special_tokens": {END_OF_TEXT: {"id": END_OF_TEXT, "ids": [END_OF_TEXT_ID], "tokens": [END_OF_TEXT]}}
        },
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": UNK}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_get_ids_by_frequency_and_texts_end_with_end_of_text() {
        let (_, tokenizer) =
            build_tokenizer(["A red square, a red circle.", "Blue square!"]).unwrap();
        let ids = |text: &str| tokenizer.encode(text, true).unwrap().get_ids().to_vec();
        // "a", "red" and "square" appear twice: ids 3, 4, 5 alphabetically; then ",", ".", "blue", ...
        assert_eq!(ids("A red square"), vec![3, 4, 5, END_OF_TEXT_ID]);
        assert_eq!(ids("a green square"), vec![3, UNK_ID, 5, END_OF_TEXT_ID]);
        assert_eq!(tokenizer.token_to_id(PAD), Some(PAD_ID));
    }
}
