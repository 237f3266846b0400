//! Which prompt a reranker is asked with, and the judgement tokens it answers with (docs/method.md#prompt-layout).
//!
//! Three formats:
//! - `paper`: the layout of the paper and lychee-rerank-mm, ChatML with the judge instruction as system turn.
//! - `qwen3-reranker`: Qwen3-Reranker's published prompt: the same system turn, a user turn
//!   `<Instruct>: ..\n<Query>: ..\n<Document>: ..`, and an empty think block after the assistant header.
//! - `template`: the model's own chat template, given a system message with the judge instruction and one user
//!   message holding the paper's user text (as text and image parts when the pair has images), rendered with the
//!   generation prompt. A template that rejects the system role (Gemma-2's) or drops it gets the instruction
//!   folded into the user message instead, separated by a blank line (as Gemma-3's template folds it).
//!
//! Each format is rendered to text with placeholders where the data goes (see [`crate::models::text::prompt_layout`]):
//! data never passes through a template, so nothing in it can change what the template prints.
//!
//! The settings travel with what training writes ([`PROMPT_FILE`] beside the adapter or model, and into a
//! release), so eval, `umrank score` and a release's check ask a trained model the way it was trained.

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::models::text::chat_template::{Chat, ChatMessage, ChatTemplate, ContentPart};
use crate::models::text::prompt_layout::{Field, IMAGE_PART};

/// The file that records the prompt settings a model was trained with.
pub const PROMPT_FILE: &str = "reranker_prompt.json";

/// What separates the judge instruction from the user text when a template takes no system turn.
const FOLDED_SYSTEM_SEPARATOR: &str = "\n\n";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PromptFormat {
    #[default]
    Paper,
    Qwen3Reranker,
    Template,
}

impl PromptFormat {
    pub fn name(self) -> &'static str {
        match self {
            PromptFormat::Paper => "paper",
            PromptFormat::Qwen3Reranker => "qwen3-reranker",
            PromptFormat::Template => "template",
        }
    }
}

impl std::fmt::Display for PromptFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PromptFormat {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        [
            PromptFormat::Paper,
            PromptFormat::Qwen3Reranker,
            PromptFormat::Template,
        ]
        .into_iter()
        .find(|format| format.name() == text)
        .ok_or_else(|| {
            format!("unknown prompt format {text:?} (paper, qwen3-reranker or template)")
        })
    }
}

/// The judgement words: the score is `z_yes - z_no` at the prompt's last position. Each must encode to a single
/// token of the model's vocabulary (checked when the model loads).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "[String; 2]", into = "[String; 2]")]
pub struct AnswerTokens {
    pub yes: String,
    pub no: String,
}

impl Default for AnswerTokens {
    fn default() -> Self {
        Self {
            yes: "yes".into(),
            no: "no".into(),
        }
    }
}

impl From<[String; 2]> for AnswerTokens {
    fn from([yes, no]: [String; 2]) -> Self {
        Self { yes, no }
    }
}

impl From<AnswerTokens> for [String; 2] {
    fn from(tokens: AnswerTokens) -> Self {
        [tokens.yes, tokens.no]
    }
}

/// A prompt format and its judgement tokens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSettings {
    #[serde(default)]
    pub format: PromptFormat,
    #[serde(default)]
    pub answer_tokens: AnswerTokens,
}

#[derive(Debug, thiserror::Error)]
pub enum PromptSettingsError {
    #[error("could not read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not a prompt record ({{\"format\", \"answer_tokens\"}}): {source}", path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("could not write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{} records prompt {recorded} but {asked} was asked for: a model scores with the prompt it was trained with",
        path.display()
    )]
    Conflict {
        path: PathBuf,
        recorded: String,
        asked: String,
    },
}

impl PromptSettings {
    /// The system text: the paper's judge instruction, naming the configured judgement words.
    pub fn judge_instruction(&self) -> String {
        format!(
            "Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note \
             that the answer can only be \"{}\" or \"{}\".",
            self.answer_tokens.yes, self.answer_tokens.no
        )
    }

    /// One line for logs and errors, e.g. `template (yes/no)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}/{})",
            self.format, self.answer_tokens.yes, self.answer_tokens.no
        )
    }

    /// The settings recorded in `dir`, if it has a [`PROMPT_FILE`].
    pub fn read_recorded(dir: &Path) -> Result<Option<Self>, PromptSettingsError> {
        let path = dir.join(PROMPT_FILE);
        if !path.is_file() {
            return Ok(None);
        }
        let text = fs::read_to_string(&path).map_err(|source| PromptSettingsError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|source| PromptSettingsError::Parse { path, source })
    }

    /// Writes `dir/`[`PROMPT_FILE`].
    pub fn record(&self, dir: &Path) -> Result<(), PromptSettingsError> {
        let path = dir.join(PROMPT_FILE);
        let text = serde_json::to_string_pretty(self).expect("prompt settings serialize") + "\n";
        fs::write(&path, text).map_err(|source| PromptSettingsError::Write { path, source })
    }

    /// The settings to score with: those recorded in the first of `dirs` that has a record, checked against
    /// `asked` when both are given; `asked` alone; else the defaults.
    pub fn resolve(
        asked: Option<&PromptSettings>,
        dirs: &[&Path],
    ) -> Result<PromptSettings, PromptSettingsError> {
        let mut recorded = None;
        for dir in dirs {
            if let Some(settings) = Self::read_recorded(dir)? {
                recorded = Some((dir.join(PROMPT_FILE), settings));
                break;
            }
        }
        match (recorded, asked) {
            (Some((path, recorded)), Some(asked)) if &recorded != asked => {
                Err(PromptSettingsError::Conflict {
                    path,
                    recorded: recorded.describe(),
                    asked: asked.describe(),
                })
            }
            (Some((_, recorded)), _) => Ok(recorded),
            (None, Some(asked)) => Ok(asked.clone()),
            (None, None) => Ok(Self::default()),
        }
    }
}

/// Which sides of the pair have an image: a template renders image parts only where there are images.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ImageSlots {
    pub query: bool,
    pub document: bool,
}

/// The paper's user text, with `image` (the image part's text) where each side's image goes.
fn paper_user_text(images: ImageSlots) -> String {
    format!(
        "<Instruct>: {}<Query>:{}{}\n<Document>:{}{}",
        Field::Instruction.placeholder(),
        image_text(images.query),
        Field::Query.placeholder(),
        image_text(images.document),
        Field::Document.placeholder(),
    )
}

fn image_text(present: bool) -> &'static str {
    if present {
        IMAGE_PART
    } else {
        ""
    }
}

/// The `paper` prompt with placeholders.
pub(crate) fn paper(system: &str, images: ImageSlots) -> String {
    format!(
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n",
        paper_user_text(images)
    )
}

/// The `qwen3-reranker` prompt with placeholders: Qwen3-Reranker's model card builds it as a fixed prefix, the
/// formatted instruction, query and document, and a fixed suffix that pre-fills an empty think block.
pub(crate) fn qwen3_reranker(system: &str, images: ImageSlots) -> String {
    format!(
        "<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<Instruct>: {}\n<Query>: {}{}\n<Document>: \
         {}{}<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n",
        Field::Instruction.placeholder(),
        image_text(images.query),
        Field::Query.placeholder(),
        image_text(images.document),
        Field::Document.placeholder(),
    )
}

/// The user message of the `template` format: a plain string for a text pair (text-only templates print
/// `content` as it is), text and image parts when the pair has an image.
fn user_message(images: ImageSlots, prefix: &str) -> ChatMessage {
    if !images.query && !images.document {
        return ChatMessage::text("user", &format!("{prefix}{}", paper_user_text(images)));
    }
    let mut parts = vec![ContentPart::Text(format!(
        "{prefix}<Instruct>: {}<Query>:",
        Field::Instruction.placeholder()
    ))];
    if images.query {
        parts.push(ContentPart::Image);
    }
    parts.push(ContentPart::Text(format!(
        "{}\n<Document>:",
        Field::Query.placeholder()
    )));
    if images.document {
        parts.push(ContentPart::Image);
    }
    parts.push(ContentPart::Text(Field::Document.placeholder().to_string()));
    ChatMessage::parts("user", parts)
}

/// The `template` prompt with placeholders: a system turn and the user turn, or, when the template raises on
/// that or leaves the system text out (Mistral's v0.3 template prints only user and assistant turns), the user
/// turn alone with the system text in front of it.
pub(crate) fn from_template(
    template: &ChatTemplate,
    system: &str,
    images: ImageSlots,
) -> Result<String, crate::models::text::chat_template::ChatTemplateError> {
    let with_system = Chat::new(&[
        ChatMessage::text("system", system),
        user_message(images, ""),
    ])
    .with_generation_prompt(true);
    match template.render(&with_system) {
        Ok(text) if text.contains(system) => Ok(text),
        _ => {
            let folded = Chat::new(&[user_message(
                images,
                &format!("{system}{FOLDED_SYSTEM_SEPARATOR}"),
            )])
            .with_generation_prompt(true);
            template.render(&folded)
        }
    }
}
