//! The reranker prompt (docs/method.md#prompt-layout), built as token ids from its parts:
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
//! How the ids are made: special tokens are placed by id, and each run of text between two of them (template
//! words and data together, e.g. `user\n<Instruct>: {instruction}<Query>:`) is encoded as one string, with
//! special-token strings inside data encoded as text. Tokenizers split added tokens out before anything else, so
//! this equals encoding the whole rendered prompt (the tests prove it against transformers), while a document
//! that contains `<|im_end|>` cannot close its turn. Encoding the data fields on their own and concatenating would
//! not be exact: Qwen2's pre-tokenizer regex joins text across such seams (`": "` + `"Find"` is `":"`, `" Find"`).
//!
//! Length budget: when the prompt exceeds `max_len` tokens, the document text is cut first, then the query text,
//! then the instruction, each at a token boundary of the field, keeping the longest prefix for which the whole
//! prompt, re-encoded, fits. Template tokens and image tokens are never cut; a prompt whose template plus images
//! alone exceed the budget is [`PromptError::TooLong`], which callers turn into a reject.

use std::fmt;
use std::ops::Range;
use std::path::PathBuf;

use crate::models::text::tokenizer::{Tokenizer, TokenizerError};

/// The system turn of the reranker prompt (docs/method.md#prompt-layout).
pub const RERANK_SYSTEM: &str = "Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can only be \"yes\" or \"no\".";

pub const IM_START: &str = "<|im_start|>";
pub const IM_END: &str = "<|im_end|>";
pub const VISION_START: &str = "<|vision_start|>";
pub const VISION_END: &str = "<|vision_end|>";
pub const IMAGE_PAD: &str = "<|image_pad|>";

#[derive(Debug, thiserror::Error)]
pub enum PromptError {
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
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

/// The text fields, in the order the budget cuts them.
#[derive(Debug, Clone, Copy)]
enum Field {
    Document,
    Query,
    Instruction,
}

impl Field {
    const CUT_ORDER: [Field; 3] = [Field::Document, Field::Query, Field::Instruction];

    fn text<'a>(self, input: &RerankInput<'a>) -> &'a str {
        match self {
            Field::Document => input.document.text,
            Field::Query => input.query.text,
            Field::Instruction => input.instruction,
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
    /// and including the newline before `<Document>:`.
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

#[derive(Debug, Clone, Copy)]
struct ChatIds {
    im_start: u32,
    im_end: u32,
}

#[derive(Debug, Clone, Copy)]
struct VisionIds {
    start: u32,
    end: u32,
    image_pad: u32,
}

/// A piece of the layout. `QueryEnd` marks where the shared prefix of a group ends.
#[derive(Debug, Clone, Copy)]
enum Piece<'a> {
    Special(u32, &'static str),
    Text(&'a str),
    Image(ImageOwner, usize),
    QueryEnd,
}

/// Builds reranker prompts for one tokenizer and one system text.
#[derive(Debug, Clone)]
pub struct PromptBuilder<'t> {
    tokenizer: &'t Tokenizer,
    system: String,
    chat: ChatIds,
    /// `None` for text-only vocabularies; prompts with images are then an error.
    vision: Option<VisionIds>,
}

impl<'t> PromptBuilder<'t> {
    /// The reranker prompt of docs/method.md#prompt-layout.
    pub fn reranker(tokenizer: &'t Tokenizer) -> Result<Self, PromptError> {
        Self::new(tokenizer, RERANK_SYSTEM)
    }

    /// The same layout with another system text. Works for text-only ChatML vocabularies too (SmolLM2, Qwen2
    /// text): the vision tokens are only needed by prompts that have images.
    pub fn new(tokenizer: &'t Tokenizer, system: &str) -> Result<Self, PromptError> {
        let chat = ChatIds {
            im_start: tokenizer.special_token_id(IM_START)?,
            im_end: tokenizer.special_token_id(IM_END)?,
        };
        let vision = match (
            optional_special(tokenizer, VISION_START)?,
            optional_special(tokenizer, VISION_END)?,
            optional_special(tokenizer, IMAGE_PAD)?,
        ) {
            (Some(start), Some(end), Some(image_pad)) => Some(VisionIds {
                start,
                end,
                image_pad,
            }),
            _ => None,
        };
        Ok(Self {
            tokenizer,
            system: system.to_string(),
            chat,
            vision,
        })
    }

    pub fn tokenizer(&self) -> &'t Tokenizer {
        self.tokenizer
    }

    /// The prompt for `input`, within `max_len` tokens (see the module doc for what is cut).
    pub fn build(&self, input: &RerankInput, max_len: usize) -> Result<Prompt, PromptError> {
        self.check_images(input)?;
        let whole = KeptText::whole(input);
        let prompt = self.encode(input, whole)?;
        if prompt.ids.len() <= max_len {
            return Ok(prompt);
        }
        let fixed = self.encode(input, KeptText::NOTHING)?;
        if fixed.ids.len() > max_len {
            return Err(PromptError::TooLong {
                fixed: fixed.ids.len(),
                image_tokens: fixed.images.iter().map(|span| span.len + 2).sum(),
                max_len,
            });
        }
        let kept = self.fit(input, whole, max_len)?;
        self.encode(input, kept)
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
            // start of every prompt; with a tokenizer that merges across that newline the common part is shorter,
            // and so it is when the budget cut the query differently for different documents.
            let prefix = self.encode_pieces(&self.pieces(&input, prompt.kept), true)?;
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
    pub fn render_text(&self, input: &RerankInput, kept: KeptText) -> String {
        let mut text = String::new();
        for piece in self.pieces(input, kept) {
            match piece {
                Piece::Special(_, token) => text.push_str(token),
                Piece::Text(run) => text.push_str(run),
                Piece::Image(_, n) => {
                    text.push_str(VISION_START);
                    text.push_str(&IMAGE_PAD.repeat(n));
                    text.push_str(VISION_END);
                }
                Piece::QueryEnd => {}
            }
        }
        text
    }

    fn check_images(&self, input: &RerankInput) -> Result<(), PromptError> {
        for (owner, side) in [
            (ImageOwner::Query, input.query),
            (ImageOwner::Document, input.document),
        ] {
            match side.image_tokens {
                None => {}
                Some(0) => return Err(PromptError::EmptyImage { owner }),
                Some(_) if self.vision.is_none() => {
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
        input: &RerankInput,
        whole: KeptText,
        max_len: usize,
    ) -> Result<KeptText, PromptError> {
        let mut kept = whole;
        for field in Field::CUT_ORDER {
            kept.set(field, 0);
            if self.len(input, kept)? <= max_len {
                let best = self.longest_fitting_prefix(input, kept, field, max_len)?;
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
            if self.len(input, trial)? <= max_len {
                fits = mid;
            } else {
                fails = mid;
            }
        }
        Ok(cut(fits))
    }

    fn len(&self, input: &RerankInput, kept: KeptText) -> Result<usize, PromptError> {
        Ok(self.encode(input, kept)?.ids.len())
    }

    fn encode(&self, input: &RerankInput, kept: KeptText) -> Result<Prompt, PromptError> {
        let mut prompt = self.encode_pieces(&self.pieces(input, kept), false)?;
        prompt.kept = kept;
        Ok(prompt)
    }

    /// Special tokens by id, runs of text encoded whole, images expanded. With `stop_at_query_end`, only the
    /// pieces before [`Piece::QueryEnd`].
    fn encode_pieces(
        &self,
        pieces: &[Piece],
        stop_at_query_end: bool,
    ) -> Result<Prompt, PromptError> {
        let mut ids = Vec::new();
        let mut images = Vec::new();
        let mut run = String::new();
        for piece in pieces {
            match *piece {
                Piece::Text(text) => run.push_str(text),
                Piece::QueryEnd if stop_at_query_end => break,
                Piece::QueryEnd => {}
                Piece::Special(id, _) => {
                    self.flush(&mut run, &mut ids)?;
                    ids.push(id);
                }
                Piece::Image(owner, n) => {
                    self.flush(&mut run, &mut ids)?;
                    let vision = self.vision.ok_or_else(|| PromptError::NoVisionTokens {
                        owner,
                        path: self.tokenizer.path().to_path_buf(),
                        token: missing_vision_token(self.tokenizer),
                    })?;
                    ids.push(vision.start);
                    images.push(ImageSpan {
                        owner,
                        start: ids.len(),
                        len: n,
                    });
                    ids.extend(std::iter::repeat_n(vision.image_pad, n));
                    ids.push(vision.end);
                }
            }
        }
        self.flush(&mut run, &mut ids)?;
        Ok(Prompt {
            ids,
            images,
            kept: KeptText::NOTHING,
        })
    }

    fn flush(&self, run: &mut String, ids: &mut Vec<u32>) -> Result<(), PromptError> {
        if !run.is_empty() {
            ids.extend(self.tokenizer.encode_text(run)?);
            run.clear();
        }
        Ok(())
    }

    fn pieces<'a>(&'a self, input: &RerankInput<'a>, kept: KeptText) -> Vec<Piece<'a>> {
        let im_start = Piece::Special(self.chat.im_start, IM_START);
        let im_end = Piece::Special(self.chat.im_end, IM_END);
        let mut pieces = vec![
            im_start,
            Piece::Text("system\n"),
            Piece::Text(&self.system),
            im_end,
            Piece::Text("\n"),
            im_start,
            Piece::Text("user\n<Instruct>: "),
            Piece::Text(&input.instruction[..kept.instruction]),
            Piece::Text("<Query>:"),
        ];
        if let Some(n) = input.query.image_tokens {
            pieces.push(Piece::Image(ImageOwner::Query, n));
        }
        pieces.extend([
            Piece::Text(&input.query.text[..kept.query]),
            Piece::Text("\n"),
            Piece::QueryEnd,
            Piece::Text("<Document>:"),
        ]);
        if let Some(n) = input.document.image_tokens {
            pieces.push(Piece::Image(ImageOwner::Document, n));
        }
        pieces.extend([
            Piece::Text(&input.document.text[..kept.document]),
            im_end,
            Piece::Text("\n"),
            im_start,
            Piece::Text("assistant\n"),
        ]);
        pieces
    }
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
