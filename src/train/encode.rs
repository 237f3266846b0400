//! Groups as token sequences: one prompt (docs/method.md#prompt-layout) per document, the images each prompt holds, in
//! prompt order.
//!
//! The length budget is the prompt builder's: text is cut (document, then query, then instruction), image tokens
//! never are, and a document whose template and images alone exceed `max_len` makes its whole group unusable,
//! because a group without one of its documents would be a different training example.

use super::data::{Group, Part};
use super::images::ImageBank;
use crate::models::text::prompt::{PromptBuilder, PromptError, RerankInput, Side};

/// One prompt: token ids, and the image ids its placeholders stand for, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sequence {
    pub ids: Vec<u32>,
    pub images: Vec<String>,
}

/// Why a group cannot be trained on: a reject reason and its detail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupProblem {
    pub reason: &'static str,
    pub detail: String,
}

/// Builds the prompts of groups for one model.
pub struct Encoder<'a> {
    builder: PromptBuilder<'a>,
    max_len: usize,
    /// `None` for a text-only model: groups with images are then unusable.
    images: Option<&'a ImageBank>,
}

impl<'a> Encoder<'a> {
    pub fn new(builder: PromptBuilder<'a>, max_len: usize, images: Option<&'a ImageBank>) -> Self {
        Self {
            builder,
            max_len,
            images,
        }
    }

    /// The prompts of `group`, positive first.
    pub fn encode(&self, group: &Group) -> Result<Vec<Sequence>, GroupProblem> {
        let query = self.side(&group.query)?;
        group
            .documents
            .iter()
            .map(|(did, document)| {
                let input = RerankInput {
                    instruction: &group.instruction,
                    query,
                    document: self.side(document)?,
                };
                let prompt = self
                    .builder
                    .build(&input, self.max_len)
                    .map_err(|e| match e {
                        PromptError::TooLong { .. } => GroupProblem {
                            reason: "too_long",
                            detail: format!("document `{did}`: {e}"),
                        },
                        other => GroupProblem {
                            reason: "bad_prompt",
                            detail: format!("document `{did}`: {other}"),
                        },
                    })?;
                let images = group
                    .query
                    .image_id
                    .iter()
                    .chain(document.image_id.iter())
                    .cloned()
                    .collect();
                Ok(Sequence {
                    ids: prompt.ids,
                    images,
                })
            })
            .collect()
    }

    fn side<'p>(&self, part: &'p Part) -> Result<Side<'p>, GroupProblem> {
        let Some(id) = &part.image_id else {
            return Ok(Side::text(&part.text));
        };
        let Some(images) = self.images else {
            return Err(GroupProblem {
                reason: "image_without_vision_model",
                detail: format!("image `{id}` needs a model with a vision tower"),
            });
        };
        let tokens = images.tokens(id).map_err(|detail| GroupProblem {
            reason: "bad_image",
            detail,
        })?;
        Ok(Side::image(tokens, &part.text))
    }
}
