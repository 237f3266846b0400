//! ms-swift's reranker format:
//!
//! ```json
//! {"messages": [{"role": "system", "content": "instruction"}, {"role": "user", "content": "<image>query"}],
//!  "images": ["q.jpg"],
//!  "positive_messages": [[{"role": "user", "content": "<image>doc"}]], "positive_images": [["d.jpg"]],
//!  "negative_messages": [[{"role": "user", "content": "other doc"}]], "negative_images": [[]]}
//! ```
//!
//! A `<image>` tag in a content string takes the next path from the matching image list (top-level `images` for
//! the query, `positive_images[i]` / `negative_images[i]` for the i-th document); content may also be a list of
//! parts `{"type": "text", "text": ..}` / `{"type": "image", "image": path}`. The system message is the
//! instruction. A query or document with more than one image is refused: umrank's datasets hold one per record.
//! So is a record with content umrank does not read (ms-swift's `videos` / `audios` lists, `<video>` / `<audio>`
//! tags, video or audio parts): dropping that content silently would keep a record that says less than its
//! source.

use serde::Deserialize;
use serde_json::Value;

use super::jsonl::{non_empty, InlineDoc, InlineQuery};

const IMAGE_TAG: &str = "<image>";

/// ms-swift's tags for media umrank does not read.
const UNREAD_TAGS: [&str; 2] = ["<video>", "<audio>"];

/// ms-swift's top-level lists of media umrank does not read.
const UNREAD_FIELDS: [&str; 6] = [
    "videos",
    "audios",
    "positive_videos",
    "positive_audios",
    "negative_videos",
    "negative_audios",
];

#[derive(Deserialize)]
struct SwiftLine {
    #[serde(default)]
    messages: Vec<Message>,
    #[serde(default)]
    images: Vec<String>,
    #[serde(default)]
    positive_messages: Vec<Vec<Message>>,
    #[serde(default)]
    positive_images: Vec<Vec<String>>,
    #[serde(default)]
    negative_messages: Vec<Vec<Message>>,
    #[serde(default)]
    negative_images: Vec<Vec<String>>,
}

#[derive(Deserialize)]
struct Message {
    role: String,
    content: Value,
}

type Problem = (&'static str, String);

pub fn parse(line: &str) -> Result<InlineQuery, Problem> {
    let value: Value = serde_json::from_str(line).map_err(|e| ("malformed_json", e.to_string()))?;
    refuse_unread_media(&value)?;
    let row: SwiftLine =
        serde_json::from_value(value).map_err(|e| ("malformed_json", e.to_string()))?;
    let instruction = row
        .messages
        .iter()
        .find(|m| m.role == "system")
        .and_then(|m| m.content.as_str().map(str::to_string));
    let query_messages: Vec<&Message> =
        row.messages.iter().filter(|m| m.role != "system").collect();
    let (text, image) = parts(&query_messages, &row.images)?;
    let docs = |groups: &[Vec<Message>],
                images: &[Vec<String>]|
     -> Result<Vec<InlineDoc>, Problem> {
        groups
            .iter()
            .enumerate()
            .map(|(i, group)| {
                let messages: Vec<&Message> = group.iter().filter(|m| m.role != "system").collect();
                let pool = images.get(i).map(Vec::as_slice).unwrap_or(&[]);
                let (text, image) = parts(&messages, pool)?;
                Ok(InlineDoc { text, image })
            })
            .collect()
    };
    Ok(InlineQuery {
        text,
        image,
        instruction: non_empty(instruction),
        positives: docs(&row.positive_messages, &row.positive_images)?,
        negatives: docs(&row.negative_messages, &row.negative_images)?,
    })
}

/// Refuses a record that lists videos or audio: a non-empty media list that umrank would not read.
fn refuse_unread_media(record: &Value) -> Result<(), Problem> {
    for field in UNREAD_FIELDS {
        let listed = match record.get(field) {
            None | Some(Value::Null) => false,
            Some(Value::Array(items)) => items.iter().any(|item| match item {
                Value::Array(inner) => !inner.is_empty(),
                Value::Null => false,
                _ => true,
            }),
            Some(_) => true,
        };
        if listed {
            return Err((
                "unsupported_media",
                format!(
                    "`{field}` lists media that umrank does not read (it reads text and images)"
                ),
            ));
        }
    }
    Ok(())
}

/// The text and the single image of a message list, `<image>` tags resolved against `images`.
fn parts(
    messages: &[&Message],
    images: &[String],
) -> Result<(Option<String>, Option<String>), Problem> {
    let mut texts = Vec::new();
    let mut found: Vec<String> = Vec::new();
    let mut next_image = images.iter();
    for message in messages {
        match &message.content {
            Value::String(s) => {
                if let Some(tag) = UNREAD_TAGS.iter().find(|tag| s.contains(*tag)) {
                    return Err((
                        "unsupported_media",
                        format!("a {tag} tag: umrank reads text and images only"),
                    ));
                }
                for _ in 0..s.matches(IMAGE_TAG).count() {
                    let path = next_image.next().ok_or((
                        "missing_image_path",
                        format!("more {IMAGE_TAG} tags than image paths in `{s}`"),
                    ))?;
                    found.push(path.clone());
                }
                texts.push(s.replace(IMAGE_TAG, ""));
            }
            Value::Array(items) => {
                for item in items {
                    match item.get("type").and_then(Value::as_str) {
                        Some("text") => texts.push(
                            item.get("text")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_string(),
                        ),
                        Some("image") => {
                            let path = item.get("image").and_then(Value::as_str).ok_or((
                                "malformed_record",
                                "an image part without an `image` path".to_string(),
                            ))?;
                            found.push(path.to_string());
                        }
                        Some(
                            kind @ ("video" | "audio" | "video_url" | "audio_url" | "input_audio"),
                        ) => {
                            return Err((
                                "unsupported_media",
                                format!(
                                    "a `{kind}` content part: umrank reads text and images only"
                                ),
                            ))
                        }
                        other => {
                            return Err((
                                "malformed_record",
                                format!("unknown content part type {other:?}"),
                            ))
                        }
                    }
                }
            }
            other => {
                return Err((
                    "malformed_record",
                    format!("message content must be text or parts, got {other}"),
                ))
            }
        }
    }
    if found.len() > 1 {
        return Err((
            "too_many_images",
            format!(
                "{} images in one record; umrank keeps one per record",
                found.len()
            ),
        ));
    }
    let text = texts.join("\n").trim().to_string();
    Ok((non_empty(Some(text)), found.pop()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_image_tags_and_parts() {
        let line = r#"{"messages": [{"role": "system", "content": "Find it."}, {"role": "user", "content": "<image>a cat"}],
            "images": ["q.png"],
            "positive_messages": [[{"role": "user", "content": [{"type": "image", "image": "d.png"}, {"type": "text", "text": "cat photo"}]}]],
            "negative_messages": [[{"role": "user", "content": "a dog"}]]}"#;
        let q = parse(line).unwrap();
        assert_eq!(q.text.as_deref(), Some("a cat"));
        assert_eq!(q.image.as_deref(), Some("q.png"));
        assert_eq!(q.instruction.as_deref(), Some("Find it."));
        assert_eq!(
            q.positives[0],
            InlineDoc {
                text: Some("cat photo".into()),
                image: Some("d.png".into())
            }
        );
        assert_eq!(
            q.negatives[0],
            InlineDoc {
                text: Some("a dog".into()),
                image: None
            }
        );
    }

    #[test]
    fn refuses_tags_without_paths_and_two_images() {
        let missing = r#"{"messages": [{"role": "user", "content": "<image>x"}]}"#;
        assert_eq!(
            parse(missing).err().map(|e| e.0),
            Some("missing_image_path")
        );
        let two = r#"{"messages": [{"role": "user", "content": "<image><image>x"}], "images": ["a", "b"]}"#;
        assert_eq!(parse(two).err().map(|e| e.0), Some("too_many_images"));
    }

    #[test]
    fn refuses_video_and_audio_wherever_they_appear() {
        let cases = [
            r#"{"messages": [{"role": "user", "content": "<video>what happens"}], "videos": ["v.mp4"]}"#,
            r#"{"messages": [{"role": "user", "content": "hello"}], "audios": ["a.wav"]}"#,
            r#"{"messages": [{"role": "user", "content": "q"}], "positive_messages": [[{"role": "user", "content": "<audio>"}]]}"#,
            r#"{"messages": [{"role": "user", "content": [{"type": "video", "video": "v.mp4"}]}]}"#,
            r#"{"messages": [{"role": "user", "content": "q"}], "negative_videos": [["v.mp4"]]}"#,
        ];
        for case in cases {
            assert_eq!(
                parse(case).err().map(|e| e.0),
                Some("unsupported_media"),
                "{case}"
            );
        }
        let empty_lists = r#"{"messages": [{"role": "user", "content": "q"}], "videos": [], "negative_audios": [[]]}"#;
        assert!(
            parse(empty_lists).is_ok(),
            "empty media lists hold nothing to lose"
        );
    }
}
