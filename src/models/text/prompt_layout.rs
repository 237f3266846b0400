//! A prompt format rendered once with placeholders for the data, cut into the pieces ids are built from.
//!
//! A format (see [`crate::models::text::prompt_format`]) renders to text in which each data field is a
//! placeholder and each image is the image part's text. That text is cut here into template text, the
//! template's added tokens (special tokens such as `<|im_start|>`, and non-special added ones such as Qwen3's
//! `<think>`), fields and images. The ids of a prompt are then built by placing the added tokens by id and
//! encoding each run of text between two of them (template text and data together) as one string, with
//! special-token strings in data encoded as text. Tokenizers split added tokens out of a string before anything
//! else, so this equals encoding the whole rendered prompt, while data can never become a control token.

use crate::models::text::prompt::ImageOwner;
use crate::models::text::tokenizer::{AddedTokenInfo, Tokenizer};

/// What an image part renders to in the built-in formats, and what the Qwen2-VL chat template prints for one.
pub(crate) const IMAGE_PART: &str = "<|vision_start|><|image_pad|><|vision_end|>";

/// The token an image part holds once: the prompt repeats it once per merged vision token.
pub(crate) const IMAGE_PAD: &str = "<|image_pad|>";

/// The text fields of a pair, in the order the length budget cuts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Field {
    Document,
    Query,
    Instruction,
}

impl Field {
    pub(crate) const CUT_ORDER: [Field; 3] = [Field::Document, Field::Query, Field::Instruction];

    /// A string no template prints and no tokenizer sees: private-use characters around the field's name.
    pub(crate) fn placeholder(self) -> &'static str {
        match self {
            Field::Document => "\u{E000}umrank:document\u{E001}",
            Field::Query => "\u{E000}umrank:query\u{E001}",
            Field::Instruction => "\u{E000}umrank:instruction\u{E001}",
        }
    }

    fn name(self) -> &'static str {
        match self {
            Field::Document => "document",
            Field::Query => "query",
            Field::Instruction => "instruction",
        }
    }
}

/// One piece of a rendered prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Segment {
    /// An added token of the template, with the whitespace stripping its tokenizer applies around it.
    Token {
        id: u32,
        content: String,
        lstrip: bool,
        rstrip: bool,
    },
    /// Template text without added tokens.
    Text(String),
    Field(Field),
    /// An image: its pad tokens, as many as the image has merged vision tokens.
    Image(ImageOwner),
    /// Where the prefix that a group's prompts share ends (see [`mark_query_end`]).
    QueryEnd,
}

/// Why a rendered format cannot be cut into a layout.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("the prompt prints the {0} field {1} times, not once")]
    FieldCount(&'static str, usize),
    #[error(
        "the prompt has {found} image placeholders ({IMAGE_PAD}) for the pair's {expected} images"
    )]
    ImageCount { expected: usize, found: usize },
}

/// A rendered format as segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    pub segments: Vec<Segment>,
}

impl Layout {
    /// Cuts `rendered` (a format rendered with [`Field::placeholder`]s) into segments; `images` are the owners of
    /// the pair's images in prompt order, each of which must be one `<|image_pad|>` in the rendering.
    pub(crate) fn parse(
        rendered: &str,
        tokenizer: &Tokenizer,
        images: &[ImageOwner],
    ) -> Result<Self, LayoutError> {
        for field in Field::CUT_ORDER {
            let count = rendered.matches(field.placeholder()).count();
            if count != 1 {
                return Err(LayoutError::FieldCount(field.name(), count));
            }
        }
        let added = added_tokens_longest_first(tokenizer);
        let mut segments = Vec::new();
        let mut owners = images.iter();
        let mut found_images = 0;
        for (text, field) in split_fields(rendered) {
            for segment in split_added_tokens(text, &added) {
                match segment {
                    Segment::Token { ref content, .. } if content == IMAGE_PAD => {
                        found_images += 1;
                        if let Some(&owner) = owners.next() {
                            segments.push(Segment::Image(owner));
                        }
                    }
                    other => segments.push(other),
                }
            }
            if let Some(field) = field {
                segments.push(Segment::Field(field));
            }
        }
        if found_images != images.len() {
            return Err(LayoutError::ImageCount {
                expected: images.len(),
                found: found_images,
            });
        }
        mark_query_end(&mut segments);
        Ok(Self { segments })
    }
}

/// Marks where a group's shared prefix ends: at the start of the line that introduces the document (after the
/// first line break of the template text between the query and the document, as in `{query}\n<Document>:`), or
/// right before the document's first field or image when no line break comes between them.
fn mark_query_end(segments: &mut Vec<Segment>) {
    let is_document = |segment: &Segment| {
        matches!(
            segment,
            Segment::Field(Field::Document) | Segment::Image(ImageOwner::Document)
        )
    };
    let document = segments
        .iter()
        .position(is_document)
        .unwrap_or(segments.len());
    let query = segments
        .iter()
        .position(|segment| *segment == Segment::Field(Field::Query))
        .filter(|&query| query < document);
    let line_break = query.and_then(|query| {
        (query + 1..document).find_map(|index| match &segments[index] {
            Segment::Text(text) => text.find('\n').map(|at| (index, at)),
            _ => None,
        })
    });
    if let Some((index, at)) = line_break {
        if let Segment::Text(text) = &mut segments[index] {
            let tail = text.split_off(at + 1);
            let mut insert = vec![Segment::QueryEnd];
            if !tail.is_empty() {
                insert.push(Segment::Text(tail));
            }
            segments.splice(index + 1..index + 1, insert);
            return;
        }
    }
    segments.insert(document, Segment::QueryEnd);
}

/// `rendered` cut at the field placeholders: each piece of text, followed by the field after it (none after the
/// last piece).
fn split_fields(rendered: &str) -> Vec<(&str, Option<Field>)> {
    let mut pieces = Vec::new();
    let mut rest = rendered;
    loop {
        let next = Field::CUT_ORDER
            .into_iter()
            .filter_map(|field| rest.find(field.placeholder()).map(|at| (at, field)))
            .min_by_key(|&(at, _)| at);
        match next {
            Some((at, field)) => {
                pieces.push((&rest[..at], Some(field)));
                rest = &rest[at + field.placeholder().len()..];
            }
            None => {
                pieces.push((rest, None));
                return pieces;
            }
        }
    }
}

/// The vocabulary's added tokens, longest first, so that a token that contains another is matched whole.
fn added_tokens_longest_first(tokenizer: &Tokenizer) -> Vec<AddedTokenInfo> {
    let mut added: Vec<AddedTokenInfo> = tokenizer
        .added_tokens()
        .into_iter()
        .filter(|token| !token.content.is_empty())
        .collect();
    added.sort_by(|a, b| b.content.len().cmp(&a.content.len()).then(a.id.cmp(&b.id)));
    added
}

/// Template text cut at its added tokens, leftmost first, the longest token at a position winning, as
/// tokenizers' added-vocabulary matcher does.
fn split_added_tokens(text: &str, added: &[AddedTokenInfo]) -> Vec<Segment> {
    let mut segments = Vec::new();
    let mut plain_start = 0;
    let mut at = 0;
    while at < text.len() {
        let found = added
            .iter()
            .find(|token| text[at..].starts_with(token.content.as_str()));
        match found {
            Some(token) => {
                if plain_start < at {
                    segments.push(Segment::Text(text[plain_start..at].to_string()));
                }
                segments.push(Segment::Token {
                    id: token.id,
                    content: token.content.clone(),
                    lstrip: token.lstrip,
                    rstrip: token.rstrip,
                });
                at += token.content.len();
                plain_start = at;
            }
            None => {
                at += text[at..].chars().next().map_or(1, char::len_utf8);
            }
        }
    }
    if plain_start < text.len() {
        segments.push(Segment::Text(text[plain_start..].to_string()));
    }
    segments
}
