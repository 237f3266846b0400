//! FlagEmbedding's fine-tuning jsonl: `{"query": str, "pos": [str], "neg": [str], "prompt": str}`, one group per
//! line (so `pos` holds the group's one positive). The format is text only: a record with an image and text is
//! written as its text (and counted), a group with an image-only record is skipped.

use serde::Serialize;

use super::{ExportGroup, Record};

#[derive(Debug, Serialize)]
pub struct FlagLine {
    query: String,
    pos: Vec<String>,
    neg: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<String>,
}

/// The group's line, or why it cannot be one. `images_dropped` counts the records written without their image.
pub fn line(group: &ExportGroup, images_dropped: &mut u64) -> Result<FlagLine, &'static str> {
    let mut dropped = 0;
    let mut text = |record: &Record| -> Result<String, &'static str> {
        let text = record.text.clone().ok_or("image_only_record")?;
        if record.image_id.is_some() {
            dropped += 1;
        }
        Ok(text)
    };
    let line = FlagLine {
        query: text(&group.query)?,
        pos: vec![text(&group.positive)?],
        neg: group
            .negatives
            .iter()
            .map(|(record, _)| text(record))
            .collect::<Result<_, _>>()?,
        prompt: group.instruction.clone(),
    };
    *images_dropped += dropped;
    Ok(line)
}
