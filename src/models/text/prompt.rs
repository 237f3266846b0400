//! The reranker prompt (docs/method.md#prompt-layout), built as token ids from its parts. The `paper` format
//! ([`crate::models::text::prompt_format`] has the others) is
//!
//! ```text
//! <|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n<Instruct>: {instruction}<Query>:{query image}{query text}
//! <Document>:{document image}{document text}<|im_end|>\n<|im_start|>assistant\n
//! ```
//!
//! Each image is `<|vision_start|>`, n x `<|image_pad|>`, `<|vision_end|>`, where n is the image's number of merged
//! vision tokens. This is the layout GMR/lychee use, and what a Qwen2-VL chat template renders for a system turn
//! and one user turn of text and image parts. Qwen3-Reranker (text) additionally pre-fills an empty
//! `<think>\n\n</think>\n\n` after the assistant header; this layout follows docs/method.md#prompt-layout and has none.
//!
//! How the ids are made: the format is rendered once with placeholders for the data
//! ([`crate::models::text::prompt_layout`]); its added tokens are placed by id, and each run of text between two of
//! them (template words and data together, e.g. `user\n<Instruct>: {instruction}<Query>:`) is encoded as one
//! string, with special-token strings inside data encoded as text. Tokenizers split added tokens out before
//! anything else, so this equals encoding the whole rendered prompt (the tests prove it against transformers, and
//! the builder checks it on a probe pair when it is made), while a document that contains `<|im_end|>` cannot
//! close its turn. Encoding the data fields on their own and concatenating would not be exact: Qwen2's
//! pre-tokenizer regex joins text across such seams (`": "` + `"Find"` is `":"`, `" Find"`).
//!
//! Length budget: when the prompt exceeds `max_len` tokens, the document text is cut first, then the query text,
//! then the instruction, each at a token boundary of the field, keeping the longest prefix for which the whole
//! prompt, re-encoded, fits. Template tokens and image tokens are never cut; a prompt whose template plus images
//! alone exceed the budget is [`PromptError::TooLong`], which callers turn into a reject.

use std::borrow::Cow;
use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use crate::models::text::chat_template::{ChatTemplate, ChatTemplateError};
use crate::models::text::prompt_format::{self, ImageSlots, PromptFormat, PromptSettings};
use crate::models::text::prompt_layout::{Field, Layout, LayoutError, Segment};
use crate::models::text::tokenizer::{Tokenizer, TokenizerError};

/// The system turn of the reranker prompt (docs/method.md#prompt-layout).
pub const RERANK_SYSTEM: &str = "Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".";

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
pub const VISION_START: &str = "<|vision_start|>";
pub const VISION_END: &str = "<|vision_end|>";
pub const IMAGE_PAD: &str = crate::models::text::prompt_layout::IMAGE_PAD;

/// The data of the pair the builder checks itself on.
const PROBE_TEXT: &str = "probe";

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Template(#[from] ChatTemplateError),
    #[error("prompt format {format}: {source}")]
    Layout {
        format: PromptFormat,
        #[source]
        source: LayoutError,
    },
    #[error("prompt format template needs the model's chat template, and none was given")]
    NoTemplate,
    #[error(
        "tokenizer {}: prompt format {format} cannot be built exactly: its parts encode to {parts} ids but the whole rendered prompt to {whole}",
        path.display()
    )]
    Inexact {
        path: PathBuf,
        format: PromptFormat,
        parts: usize,
        whole: usize,
    },
    #[error(
        "the prompt has a {owner} image but tokenizer {} has no vision tokens ({token} is missing)",
        path.display()
    )]
    NoVisionTokens {
        owner: ImageOwner,
        path: PathBuf,
        token: &'static str,
    },
    #[error("the {owner} image has no vision tokens (n = 0)")]
    EmptyImage { owner: ImageOwner },
    /// `image_tokens` counts each image's pad tokens and its two vision markers.
    #[error(
        "the prompt needs {fixed} tokens ({image_tokens} of them image tokens) before any text, over the budget of {max_len}"
    )]
    TooLong {
        fixed: usize,
        image_tokens: usize,
        max_len: usize,
    },
    #[error("a prompt group needs at least one document")]
    EmptyGroup,
}

/// Which side of the pair an image belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageOwner {
    Query,
    Document,
}

impl fmt::Display for ImageOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageOwner::Query => "query",
            ImageOwner::Document => "document",
        })
    }
}

/// One side of the pair: text (may be empty) and an optional image given by its number of merged vision tokens,
/// `(grid_h * grid_w) / merge_size^2`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Side<'a> {
    pub text: &'a str,
    pub image_tokens: Option<usize>,
}

impl<'a> Side<'a> {
    pub fn text(text: &'a str) -> Self {
        Self {
            text,
            image_tokens: None,
        }
    }

    pub fn image(image_tokens: usize, text: &'a str) -> Self {
        Self {
            text,
            image_tokens: Some(image_tokens),
        }
    }
}

/// The parts of one (instruction, query, document) example.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RerankInput<'a> {
    pub instruction: &'a str,
    pub query: Side<'a>,
    pub document: Side<'a>,
}

/// How many bytes of each text field a prompt kept (all of them unless the budget cut it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptText {
    pub instruction: usize,
    pub query: usize,
    pub document: usize,
}

impl KeptText {
    pub fn whole(input: &RerankInput) -> Self {
        Self {
            instruction: input.instruction.len(),
            query: input.query.text.len(),
            document: input.document.text.len(),
        }
    }

    const NOTHING: Self = Self {
        instruction: 0,
        query: 0,
        document: 0,
    };

    fn set(&mut self, field: Field, len: usize) {
        match field {
            Field::Document => self.document = len,
            Field::Query => self.query = len,
            Field::Instruction => self.instruction = len,
        }
    }
}

impl Field {
    fn text<'a>(self, input: &RerankInput<'a>) -> &'a str {
        match self {
            Field::Document => input.document.text,
            Field::Query => input.query.text,
            Field::Instruction => input.instruction,
        }
    }

    fn kept(self, kept: KeptText) -> usize {
        match self {
            Field::Document => kept.document,
            Field::Query => kept.query,
            Field::Instruction => kept.instruction,
        }
    }
}

/// Where an image's pad tokens sit in the prompt: the model replaces these positions with the image's
/// embeddings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageSpan {
    pub owner: ImageOwner,
    pub start: usize,
    pub len: usize,
}

impl ImageSpan {
    pub fn positions(&self) -> Range<usize> {
        self.start..self.start + self.len
    }
}

/// A built prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// Query image first, then document image, each present only if the input has it.
    pub images: Vec<ImageSpan>,
    pub kept: KeptText,
}

impl Prompt {
    /// The position whose logits score the pair (the last token of the assistant header).
    pub fn last_index(&self) -> usize {
        self.ids.len().saturating_sub(1)
    }

    pub fn was_truncated(&self, input: &RerankInput) -> bool {
        self.kept != KeptText::whole(input)
    }
}

/// The prompts of one query against several documents, sharing a prefix that the trainer encodes once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptGroup {
    /// Every prompt starts with the same `prefix_len` ids: the system turn, the instruction and the query, up to
    /// the line that introduces the document (or fewer, where the tokenizer merges across that point).
    pub prefix_len: usize,
    pub prompts: Vec<Prompt>,
}

impl PromptGroup {
    pub fn prefix(&self) -> &[u32] {
        self.prompts
            .first()
            .map_or(&[][..], |prompt| &prompt.ids[..self.prefix_len])
    }

    /// The ids of document `index` after the shared prefix; never empty (it holds at least the assistant header).
    /// Panics when `index` is not below `prompts.len()`, as slice indexing does.
    pub fn suffix(&self, index: usize) -> &[u32] {
        &self.prompts[index].ids[self.prefix_len..]
    }
}

/// Where a builder's layouts come from.
#[derive(Debug, Clone, Copy)]
enum Source<'t> {
    Builtin(PromptFormat),
    Template(&'t ChatTemplate),
}

impl Source<'_> {
    fn format(self) -> PromptFormat {
        match self {
            Source::Builtin(format) => format,
            Source::Template(_) => PromptFormat::Template,
        }
    }
}

/// Builds reranker prompts for one tokenizer, one format and one system text.
#[derive(Debug, Clone)]
pub struct PromptBuilder<'t> {
    tokenizer: &'t Tokenizer,
    system: String,
    source: Source<'t>,
    /// `None` for text-only vocabularies; prompts with images are then an error.
    image_pad: Option<u32>,
    /// The layout of a pair without images; those with images are rendered when asked for.
    text_layout: Layout,
}

impl<'t> PromptBuilder<'t> {
    /// The reranker prompt of docs/method.md#prompt-layout (the `paper` format).
    pub fn reranker(tokenizer: &'t Tokenizer) -> Result<Self, PromptError> {
        Self::new(tokenizer, RERANK_SYSTEM)
    }

    /// The `paper` layout with another system text. Works for text-only ChatML vocabularies too (SmolLM2, Qwen2
    /// text): the vision tokens are only needed by prompts that have images.
    pub fn new(tokenizer: &'t Tokenizer, system: &str) -> Result<Self, PromptError> {
        Self::build_for(tokenizer, system, Source::Builtin(PromptFormat::Paper))
    }

    /// The prompt of `settings`; the `template` format renders `template`, the model's chat template.
    pub fn for_settings(
        tokenizer: &'t Tokenizer,
        settings: &PromptSettings,
        template: Option<&'t ChatTemplate>,
    ) -> Result<Self, PromptError> {
        let source = match settings.format {
            PromptFormat::Template => Source::Template(template.ok_or(PromptError::NoTemplate)?),
            builtin => Source::Builtin(builtin),
        };
        Self::build_for(tokenizer, &settings.judge_instruction(), source)
    }

    fn build_for(
        tokenizer: &'t Tokenizer,
        system: &str,
        source: Source<'t>,
    ) -> Result<Self, PromptError> {
        if let Source::Builtin(_) = source {
            // The built-in formats are ChatML: their turn markers must be the vocabulary's special tokens.
            tokenizer.special_token_id(IM_START)?;
            tokenizer.special_token_id(IM_END)?;
        }
        let image_pad = match (
            optional_special(tokenizer, VISION_START)?,
            optional_special(tokenizer, VISION_END)?,
            optional_special(tokenizer, IMAGE_PAD)?,
        ) {
            (Some(_), Some(_), Some(pad)) => Some(pad),
            _ => None,
        };
        let text_slots = ImageSlots {
            query: false,
            document: false,
        };
        let text_layout = render_layout(tokenizer, system, source, text_slots, &[])?;
        let builder = Self {
            tokenizer,
            system: system.to_string(),
            source,
            image_pad,
            text_layout,
        };
        builder.check_exact()?;
        Ok(builder)
    }

    pub fn tokenizer(&self) -> &'t Tokenizer {
        self.tokenizer
    }

    pub fn format(&self) -> PromptFormat {
        self.source.format()
    }

    /// The prompt for `input`, within `max_len` tokens (see the module doc for what is cut).
    pub fn build(&self, input: &RerankInput, max_len: usize) -> Result<Prompt, PromptError> {
        self.check_images(input)?;
        let layout = self.layout(input)?;
        let whole = KeptText::whole(input);
        let prompt = self.encode(&layout, input, whole)?;
        if prompt.ids.len() <= max_len {
            return Ok(prompt);
        }
        let fixed = self.encode(&layout, input, KeptText::NOTHING)?;
        if fixed.ids.len() > max_len {
            return Err(PromptError::TooLong {
                fixed: fixed.ids.len(),
                image_tokens: fixed.images.iter().map(|span| span.len + 2).sum(),
                max_len,
            });
        }
        let kept = self.fit(&layout, input, whole, max_len)?;
        self.encode(&layout, input, kept)
    }

    /// The prompts of `query` against each of `documents`, and the length of the prefix they share.
    pub fn build_group(
        &self,
        instruction: &str,
        query: Side,
        documents: &[Side],
        max_len: usize,
    ) -> Result<PromptGroup, PromptError> {
        if documents.is_empty() {
            return Err(PromptError::EmptyGroup);
        }
        let mut prompts: Vec<Prompt> = Vec::with_capacity(documents.len());
        let mut prefix_len = usize::MAX;
        for document in documents {
            let input = RerankInput {
                instruction,
                query,
                document: *document,
            };
            let prompt = self.build(&input, max_len)?;
            // The prefix encoded on its own bounds the shared part: with Qwen's regex its tokens are exactly the
            // start of every prompt; with a tokenizer that merges across that point the common part is shorter,
            // and so it is when the budget cut the query differently for different documents.
            let layout = self.layout(&input)?;
            let prefix = self.encode_segments(&layout, &input, prompt.kept, true)?;
            prefix_len = prefix_len.min(common_prefix(&prefix.ids, &prompt.ids));
            if let Some(first) = prompts.first() {
                prefix_len = prefix_len.min(common_prefix(&first.ids, &prompt.ids));
            }
            prompts.push(prompt);
        }
        Ok(PromptGroup {
            prefix_len,
            prompts,
        })
    }

    /// The prompt as text, with images expanded to their pad tokens and the fields cut to `kept`: what
    /// transformers' tokenizer, given this string, encodes to [`Prompt::ids`] (when the data holds no
    /// special-token strings).
    pub fn render_text(&self, input: &RerankInput, kept: KeptText) -> Result<String, PromptError> {
        self.check_images(input)?;
        let layout = self.layout(input)?;
        let mut text = String::new();
        for segment in &layout.segments {
            match segment {
                Segment::Token { content, .. } => text.push_str(content),
                Segment::Text(run) => text.push_str(run),
                Segment::Field(field) => text.push_str(&field.text(input)[..field.kept(kept)]),
                Segment::Image(owner) => {
                    text.push_str(&IMAGE_PAD.repeat(image_tokens(input, *owner)));
                }
                Segment::QueryEnd => {}
            }
        }
        Ok(text)
    }

    /// The layout for the images `input` has: the text layout, or the format rendered with image parts.
    fn layout(&self, input: &RerankInput) -> Result<Cow<'_, Layout>, PromptError> {
        let slots = ImageSlots {
            query: input.query.image_tokens.is_some(),
            document: input.document.image_tokens.is_some(),
        };
        if !slots.query && !slots.document {
            return Ok(Cow::Borrowed(&self.text_layout));
        }
        let owners: Vec<ImageOwner> = [
            (slots.query, ImageOwner::Query),
            (slots.document, ImageOwner::Document),
        ]
        .into_iter()
        .filter_map(|(present, owner)| present.then_some(owner))
        .collect();
        render_layout(self.tokenizer, &self.system, self.source, slots, &owners).map(Cow::Owned)
    }

    /// Proves on a probe pair that building from parts gives the ids of encoding the whole rendered prompt: a
    /// tokenizer whose encoding of a text depends on what precedes it across an added token (a pre-tokenizer that
    /// prepends a word marker only at the very start of the input) would make the parts differ.
    fn check_exact(&self) -> Result<(), PromptError> {
        let probe = RerankInput {
            instruction: PROBE_TEXT,
            query: Side::text(PROBE_TEXT),
            document: Side::text(PROBE_TEXT),
        };
        let kept = KeptText::whole(&probe);
        let parts = self.encode(&self.text_layout, &probe, kept)?.ids;
        let whole = self
            .tokenizer
            .encode(&self.render_text(&probe, kept)?, false)?;
        if parts != whole {
            return Err(PromptError::Inexact {
                path: self.tokenizer.path().to_path_buf(),
                format: self.format(),
                parts: parts.len(),
                whole: whole.len(),
            });
        }
        Ok(())
    }

    fn check_images(&self, input: &RerankInput) -> Result<(), PromptError> {
        for (owner, side) in [
            (ImageOwner::Query, input.query),
            (ImageOwner::Document, input.document),
        ] {
            match side.image_tokens {
                None => {}
                Some(0) => return Err(PromptError::EmptyImage { owner }),
                Some(_) if self.image_pad.is_none() => {
                    return Err(PromptError::NoVisionTokens {
                        owner,
                        path: self.tokenizer.path().to_path_buf(),
                        token: missing_vision_token(self.tokenizer),
                    })
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Cuts fields in [`Field::CUT_ORDER`] until the prompt fits; the caller has checked that it fits with all of
    /// them empty.
    fn fit(
        &self,
        layout: &Layout,
        input: &RerankInput,
        whole: KeptText,
        max_len: usize,
    ) -> Result<KeptText, PromptError> {
        let mut kept = whole;
        for field in Field::CUT_ORDER {
            kept.set(field, 0);
            if self.len(layout, input, kept)? <= max_len {
                let best = self.longest_fitting_prefix(layout, input, kept, field, max_len)?;
                kept.set(field, best);
                return Ok(kept);
            }
        }
        Ok(kept)
    }

    /// The longest prefix of `field`, cut at one of its token ends, with which the prompt fits; `kept` fits with
    /// the field empty and does not with it whole. The binary search relies on the prompt growing with the prefix,
    /// which holds up to a merge across the cut; whatever it returns was measured to fit.
    fn longest_fitting_prefix(
        &self,
        layout: &Layout,
        input: &RerankInput,
        kept: KeptText,
        field: Field,
        max_len: usize,
    ) -> Result<usize, PromptError> {
        let text = field.text(input);
        let ends = self.tokenizer.token_ends(text)?;
        let cut = |tokens: usize| if tokens == 0 { 0 } else { ends[tokens - 1] };
        let (mut fits, mut fails) = (0, ends.len());
        while fails - fits > 1 {
            let mid = fits + (fails - fits) / 2;
            let mut trial = kept;
            trial.set(field, cut(mid));
            if self.len(layout, input, trial)? <= max_len {
                fits = mid;
            } else {
                fails = mid;
            }
        }
        Ok(cut(fits))
    }

    fn len(
        &self,
        layout: &Layout,
        input: &RerankInput,
        kept: KeptText,
    ) -> Result<usize, PromptError> {
        Ok(self.encode(layout, input, kept)?.ids.len())
    }

    fn encode(
        &self,
        layout: &Layout,
        input: &RerankInput,
        kept: KeptText,
    ) -> Result<Prompt, PromptError> {
        let mut prompt = self.encode_segments(layout, input, kept, false)?;
        prompt.kept = kept;
        Ok(prompt)
    }

    /// Added tokens by id, runs of text encoded whole, images expanded. With `stop_at_query_end`, only the
    /// segments before [`Segment::QueryEnd`].
    fn encode_segments(
        &self,
        layout: &Layout,
        input: &RerankInput,
        kept: KeptText,
        stop_at_query_end: bool,
    ) -> Result<Prompt, PromptError> {
        let mut ids = Vec::new();
        let mut images = Vec::new();
        let mut run = Run::default();
        for segment in &layout.segments {
            match segment {
                Segment::Text(text) => run.push(text),
                Segment::Field(field) => run.push(&field.text(input)[..field.kept(kept)]),
                Segment::QueryEnd if stop_at_query_end => break,
                Segment::QueryEnd => {}
                Segment::Token {
                    id, lstrip, rstrip, ..
                } => {
                    if *lstrip {
                        run.strip_end();
                    }
                    run.flush(self.tokenizer, &mut ids)?;
                    ids.push(*id);
                    run.strip_next = *rstrip;
                }
                Segment::Image(owner) => {
                    run.flush(self.tokenizer, &mut ids)?;
                    let pad = self.image_pad.ok_or_else(|| PromptError::NoVisionTokens {
                        owner: *owner,
                        path: self.tokenizer.path().to_path_buf(),
                        token: missing_vision_token(self.tokenizer),
                    })?;
                    let n = image_tokens(input, *owner);
                    images.push(ImageSpan {
                        owner: *owner,
                        start: ids.len(),
                        len: n,
                    });
                    ids.extend(std::iter::repeat_n(pad, n));
                }
            }
        }
        run.flush(self.tokenizer, &mut ids)?;
        Ok(Prompt {
            ids,
            images,
            kept: KeptText::NOTHING,
        })
    }
}

/// The text between two added tokens, gathered before it is encoded as one string.
#[derive(Default)]
struct Run {
    text: String,
    /// The last added token swallows whitespace on its right (`rstrip`): leading whitespace is dropped until
    /// other text arrives.
    strip_next: bool,
}

impl Run {
    fn push(&mut self, text: &str) {
        let text = if self.strip_next {
            text.trim_start()
        } else {
            text
        };
        if !text.is_empty() {
            self.strip_next = false;
        }
        self.text.push_str(text);
    }

    /// The next added token swallows whitespace on its left (`lstrip`).
    fn strip_end(&mut self) {
        let len = self.text.trim_end().len();
        self.text.truncate(len);
    }

    fn flush(&mut self, tokenizer: &Tokenizer, ids: &mut Vec<u32>) -> Result<(), PromptError> {
        if !self.text.is_empty() {
            ids.extend(tokenizer.encode_text(&self.text)?);
            self.text.clear();
        }
        self.strip_next = false;
        Ok(())
    }
}

/// The format rendered for `slots` with placeholders, cut into a layout.
fn render_layout(
    tokenizer: &Tokenizer,
    system: &str,
    source: Source,
    slots: ImageSlots,
    owners: &[ImageOwner],
) -> Result<Layout, PromptError> {
    let rendered = match source {
        Source::Builtin(PromptFormat::Paper) => prompt_format::paper(system, slots),
        Source::Builtin(PromptFormat::Qwen3Reranker) => {
            prompt_format::qwen3_reranker(system, slots)
        }
        Source::Builtin(PromptFormat::Template) => return Err(PromptError::NoTemplate),
        Source::Template(template) => prompt_format::from_template(template, system, slots)?,
    };
    Layout::parse(&rendered, tokenizer, owners).map_err(|source_error| PromptError::Layout {
        format: source.format(),
        source: source_error,
    })
}

/// The number of merged vision tokens of `owner`'s image (the layout has an image segment only where there is one).
fn image_tokens(input: &RerankInput, owner: ImageOwner) -> usize {
    let side = match owner {
        ImageOwner::Query => input.query,
        ImageOwner::Document => input.document,
    };
    side.image_tokens.unwrap_or(0)
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

/// The id of a special token, or `None` when the vocabulary lacks it.
fn optional_special(tokenizer: &Tokenizer, token: &str) -> Result<Option<u32>, PromptError> {
    match tokenizer.special_token_id(token) {
        Ok(id) => Ok(Some(id)),
        Err(TokenizerError::UnknownToken { .. }) => Ok(None),
        Err(err) => Err(err.into()),
    }
}

fn missing_vision_token(tokenizer: &Tokenizer) -> &'static str {
    [VISION_START, VISION_END, IMAGE_PAD]
        .into_iter()
        .find(|token| tokenizer.special_token_id(token).is_err())
        .unwrap_or(IMAGE_PAD)
}
