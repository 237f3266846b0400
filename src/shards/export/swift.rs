//! ms-swift's reranker jsonl, one group per line:
//!
//! ```json
//! {"messages": [{"role": "system", "content": "<instruction>"}, {"role": "user", "content": "<image>query text"}],
//!  "images": ["images/<id>.png"],
//!  "positive_messages": [[{"role": "assistant", "content": "<image>positive text"}]],
//!  "positive_images": [["images/<id>.png"]],
//!  "negative_messages": [[{"role": "assistant", "content": "negative text"}], ...],
//!  "negative_images": [[], ...]}
//! ```
//!
//! The instruction is the system message (no system message when the query has none); each `<image>` tag takes
//! the next path of the matching image list. Image lists are left out when no record of the line has an image.
//! A text that itself contains `<image>` would read back as a second image, so its group is skipped.

use serde::Serialize;

use super::images::ImageFiles;
use super::{ExportError, ExportGroup, Record};

const IMAGE_TAG: &str = "<image>";

#[derive(Debug, Serialize)]
struct Message {
    role: &'static str,
    content: String,
}

#[derive(Debug, Serialize)]
pub struct SwiftLine {
    messages: Vec<Message>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    images: Vec<String>,
    positive_messages: Vec<Vec<Message>>,
    #[serde(skip_serializing_if = "all_empty")]
    positive_images: Vec<Vec<String>>,
    negative_messages: Vec<Vec<Message>>,
    #[serde(skip_serializing_if = "all_empty")]
    negative_images: Vec<Vec<String>>,
}

fn all_empty(lists: &[Vec<String>]) -> bool {
    lists.iter().all(Vec::is_empty)
}

/// The records of a group, query first.
fn records(group: &ExportGroup) -> impl Iterator<Item = &Record> {
    [&group.query, &group.positive]
        .into_iter()
        .chain(group.negatives.iter().map(|(r, _)| r))
}

/// A text that would read back as an image tag.
fn has_tag_in_text(group: &ExportGroup) -> bool {
    records(group)
        .filter_map(|r| r.text.as_deref())
        .any(|t| t.contains(IMAGE_TAG))
}

/// The images the group's line references (none if the group is skipped).
pub fn images_used(group: &ExportGroup) -> Vec<String> {
    if has_tag_in_text(group) {
        return Vec::new();
    }
    records(group).filter_map(|r| r.image_id.clone()).collect()
}

/// The group's line, or why the format cannot hold it; an error if an image was not written.
pub fn line(
    group: &ExportGroup,
    images: &ImageFiles,
) -> Result<Result<SwiftLine, &'static str>, ExportError> {
    if has_tag_in_text(group) {
        return Ok(Err("image_tag_in_text"));
    }
    let (query, query_images) = turn("user", &group.query, images)?;
    let mut messages = Vec::with_capacity(2);
    if let Some(instruction) = &group.instruction {
        messages.push(Message {
            role: "system",
            content: instruction.clone(),
        });
    }
    messages.push(query);
    let (positive, positive_images) = turn("assistant", &group.positive, images)?;
    let mut negative_messages = Vec::with_capacity(group.negatives.len());
    let mut negative_images = Vec::with_capacity(group.negatives.len());
    for (record, _) in &group.negatives {
        let (message, paths) = turn("assistant", record, images)?;
        negative_messages.push(vec![message]);
        negative_images.push(paths);
    }
    Ok(Ok(SwiftLine {
        messages,
        images: query_images,
        positive_messages: vec![vec![positive]],
        positive_images: vec![positive_images],
        negative_messages,
        negative_images,
    }))
}

/// A record as one message: `<image>` then its text, and the image path the tag refers to.
fn turn(
    role: &'static str,
    record: &Record,
    images: &ImageFiles,
) -> Result<(Message, Vec<String>), ExportError> {
    let mut content = String::new();
    let mut paths = Vec::new();
    if let Some(id) = &record.image_id {
        let path = images.path(id).ok_or_else(|| ExportError::Malformed {
            path: id.into(),
            message: format!("image of `{}` was not written", record.id),
        })?;
        content.push_str(IMAGE_TAG);
        paths.push(path.to_string());
    }
    content.push_str(record.text.as_deref().unwrap_or(""));
    Ok((Message { role, content }, paths))
}
