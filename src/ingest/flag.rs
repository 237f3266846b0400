//! FlagEmbedding's fine-tuning format: `{"query": str, "pos": [str], "neg": [str], "prompt": str}` per line.
//! Text only.

use serde::Deserialize;

use super::jsonl::{non_empty, InlineDoc, InlineQuery};

#[derive(Deserialize)]
struct FlagLine {
    query: Option<String>,
    #[serde(default)]
    pos: Vec<String>,
    #[serde(default)]
    neg: Vec<String>,
    #[serde(default)]
    prompt: Option<String>,
}

pub fn parse(line: &str) -> Result<InlineQuery, (&'static str, String)> {
    let row: FlagLine =
        serde_json::from_str(line).map_err(|e| ("malformed_json", e.to_string()))?;
    let text_doc = |text: String| InlineDoc {
        text: non_empty(Some(text)),
        image: None,
    };
    Ok(InlineQuery {
        text: non_empty(row.query),
        image: None,
        instruction: non_empty(row.prompt),
        positives: row.pos.into_iter().map(text_doc).collect(),
        negatives: row.neg.into_iter().map(text_doc).collect(),
    })
}
