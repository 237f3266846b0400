//! A model directory's tokenizer: `tokenizer.json` through the `tokenizers` crate, plus the look-ups a reranker
//! needs (special tokens, the ids of its answer words).
//!
//! Text that comes from data (queries, documents, instructions) must never turn into control tokens: a document
//! that happens to contain `<|im_end|>` would otherwise end the user turn early. [`Tokenizer::encode_text`]
//! therefore encodes special-token strings as the plain text they are, and only the prompt builder places
//! special tokens, by id.

use std::path::{Path, PathBuf};

use tokenizers::Tokenizer as HfTokenizer;

/// The file a Hugging Face model directory keeps its tokenizer in.
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// How many characters of an offending text an error message quotes.
const ERROR_PREVIEW_CHARS: usize = 60;

#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    #[error("could not load tokenizer {}: {source}", path.display())]
    Load {
        path: PathBuf,
        #[source]
        source: tokenizers::Error,
    },
    #[error("tokenizer {}: could not encode {text:?}: {source}", path.display())]
    Encode {
        path: PathBuf,
        text: String,
        #[source]
        source: tokenizers::Error,
    },
    #[error("tokenizer {}: could not decode {count} ids: {source}", path.display())]
    Decode {
        path: PathBuf,
        count: usize,
        #[source]
        source: tokenizers::Error,
    },
    #[error("tokenizer {}: token {token:?} is not in the vocabulary", path.display())]
    UnknownToken { path: PathBuf, token: String },
    #[error("tokenizer {}: {token:?} (id {id}) is not a special token", path.display())]
    NotSpecial {
        path: PathBuf,
        token: String,
        id: u32,
    },
    #[error(
        "tokenizer {}: the answer word {word:?} encodes to {tokens:?}, not to a single token",
        path.display()
    )]
    AnswerNotSingleToken {
        path: PathBuf,
        word: String,
        tokens: Vec<String>,
    },
    #[error("tokenizer {}: the answer words {yes:?} and {no:?} both encode to token {id}", path.display())]
    AnswerCollision {
        path: PathBuf,
        yes: String,
        no: String,
        id: u32,
    },
    #[error("tokenizer {}: it has no special token that could pad a batch", path.display())]
    NoPadToken { path: PathBuf },
}

/// The vocabulary ids of the reranker's answer tokens: their logits at the last position are the score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerIds {
    pub yes: u32,
    pub no: u32,
}

/// One added token of a vocabulary: tokenizers split these out of a text before anything else.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedTokenInfo {
    pub id: u32,
    pub content: String,
    pub special: bool,
    /// Whether the token swallows the whitespace on its left, as tokenizers' `lstrip` says.
    pub lstrip: bool,
    /// Whether the token swallows the whitespace on its right.
    pub rstrip: bool,
}

/// The ChatML end-of-turn token, the pad of the ChatML families.
const CHATML_END: &str = "<|im_end|>";

/// Placeholders a vision-language prompt fills with image embeddings: never padding.
const IMAGE_PLACEHOLDERS: [&str; 2] = ["<|image_pad|>", "<|video_pad|>"];

/// A tokenizer loaded from `tokenizer.json`.
#[derive(Clone)]
pub struct Tokenizer {
    /// Recognises special-token strings in its input, as transformers does for a rendered chat.
    inner: HfTokenizer,
    /// Encodes special-token strings as plain text: the encoder for data.
    literal: HfTokenizer,
    path: PathBuf,
}

impl Tokenizer {
    /// Loads `dir/tokenizer.json`.
    pub fn from_dir(dir: &Path) -> Result<Self, TokenizerError> {
        Self::from_file(&dir.join(TOKENIZER_FILE))
    }

    pub fn from_file(path: &Path) -> Result<Self, TokenizerError> {
        let inner = HfTokenizer::from_file(path).map_err(|source| TokenizerError::Load {
            path: path.to_path_buf(),
            source,
        })?;
        let mut literal = inner.clone();
        literal.set_encode_special_tokens(true);
        Ok(Self {
            inner,
            literal,
            path: path.to_path_buf(),
        })
    }

    /// The file the tokenizer was loaded from, for error messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Encodes `text`, turning special-token strings in it into their ids, as transformers' `tokenizer(text)`
    /// does. `add_special_tokens` applies the tokenizer's post-processor (a BOS for Llama-style vocabularies;
    /// nothing for Qwen's).
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>, TokenizerError> {
        self.encoding(&self.inner, text, add_special_tokens)
            .map(|encoding| encoding.get_ids().to_vec())
    }

    /// Encodes data text: special-token strings stay text and no post-processor tokens are added.
    pub fn encode_text(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        self.encoding(&self.literal, text, false)
            .map(|encoding| encoding.get_ids().to_vec())
    }

    /// The byte offsets in `text` at which its tokens (as [`Tokenizer::encode_text`] makes them) end, ascending,
    /// without duplicates, each on a character boundary: the places text can be cut without splitting a token.
    /// Byte-level vocabularies split a multi-byte character over several tokens; those share the character's
    /// offsets, so a cut never lands inside a character.
    pub fn token_ends(&self, text: &str) -> Result<Vec<usize>, TokenizerError> {
        let encoding = self.encoding(&self.literal, text, false)?;
        let mut ends: Vec<usize> = encoding
            .get_offsets()
            .iter()
            .map(|&(_, end)| end)
            .filter(|&end| end > 0 && text.is_char_boundary(end))
            .collect();
        ends.sort_unstable();
        ends.dedup();
        Ok(ends)
    }

    /// Encodes many texts in parallel, each as [`Tokenizer::encode`] would.
    pub fn encode_batch(
        &self,
        texts: &[&str],
        add_special_tokens: bool,
    ) -> Result<Vec<Vec<u32>>, TokenizerError> {
        let encodings = self
            .inner
            .encode_batch(texts.to_vec(), add_special_tokens)
            .map_err(|source| TokenizerError::Encode {
                path: self.path.clone(),
                text: format!("a batch of {} texts", texts.len()),
                source,
            })?;
        Ok(encodings
            .iter()
            .map(|encoding| encoding.get_ids().to_vec())
            .collect())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String, TokenizerError> {
        self.inner
            .decode(ids, skip_special_tokens)
            .map_err(|source| TokenizerError::Decode {
                path: self.path.clone(),
                count: ids.len(),
                source,
            })
    }

    /// The id of a token given as its vocabulary string (byte-level spelling, e.g. `Ġyes`), or of an added token.
    pub fn token_id(&self, token: &str) -> Result<u32, TokenizerError> {
        self.inner
            .token_to_id(token)
            .ok_or_else(|| TokenizerError::UnknownToken {
                path: self.path.clone(),
                token: token.to_string(),
            })
    }

    /// The vocabulary string of `id`, if the vocabulary has one.
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// The id of an added special token such as `<|im_start|>`; an ordinary vocabulary entry of the same spelling
    /// is an error, because the prompt relies on the token being matched whole and never merged.
    pub fn special_token_id(&self, token: &str) -> Result<u32, TokenizerError> {
        let id = self.token_id(token)?;
        let is_special = self
            .inner
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|added| added.special);
        if is_special {
            Ok(id)
        } else {
            Err(TokenizerError::NotSpecial {
                path: self.path.clone(),
                token: token.to_string(),
                id,
            })
        }
    }

    /// The vocabulary size, with or without the added tokens.
    pub fn vocab_size(&self, with_added_tokens: bool) -> usize {
        self.inner.get_vocab_size(with_added_tokens)
    }

    /// The ids of the answer tokens "yes" and "no" ([`Tokenizer::answer_ids`] with the default words).
    pub fn yes_no_ids(&self) -> Result<AnswerIds, TokenizerError> {
        self.answer_ids("yes", "no")
    }

    /// The ids of the answer tokens `yes` and `no` (the positive and the negative judgement).
    ///
    /// Rule: the answer token of a word is the single token the tokenizer itself produces when it encodes the bare
    /// word (no special tokens). For byte-level vocabularies without a prefix space (Qwen, Llama 3) that is the
    /// entry spelled `yes`; for SentencePiece-style vocabularies, whose pre-tokenizer prepends the word-start
    /// marker, it is `▁yes`; for byte-level ones with `add_prefix_space` it is `Ġyes`. Those are the tokens a model
    /// emits first in its answer turn. A word that encodes to several tokens, or to none, is an error rather than
    /// a guess, and so is a vocabulary where both words map to the same id.
    pub fn answer_ids(&self, yes: &str, no: &str) -> Result<AnswerIds, TokenizerError> {
        let yes_id = self.answer_id(yes)?;
        let no_id = self.answer_id(no)?;
        if yes_id == no_id {
            return Err(TokenizerError::AnswerCollision {
                path: self.path.clone(),
                yes: yes.to_string(),
                no: no.to_string(),
                id: yes_id,
            });
        }
        Ok(AnswerIds {
            yes: yes_id,
            no: no_id,
        })
    }

    /// Every added token (special or not) with the ids and stripping rules the tokenizer splits them out with.
    pub fn added_tokens(&self) -> Vec<AddedTokenInfo> {
        let mut tokens: Vec<AddedTokenInfo> = self
            .inner
            .get_added_tokens_decoder()
            .into_iter()
            .map(|(id, token)| AddedTokenInfo {
                id,
                content: token.content,
                special: token.special,
                lstrip: token.lstrip,
                rstrip: token.rstrip,
            })
            .collect();
        tokens.sort_by_key(|token| token.id);
        tokens
    }

    /// The id that right-pads a batch; the attention mask hides it, so any special token that is not an image
    /// placeholder serves. `<|im_end|>` where the vocabulary has it (the ChatML families), else the special token
    /// with the lowest id (Llama-3's `<|begin_of_text|>`, Gemma's `<pad>`, `<unk>` of SentencePiece vocabularies).
    pub fn pad_id(&self) -> Result<u32, TokenizerError> {
        if let Ok(id) = self.special_token_id(CHATML_END) {
            return Ok(id);
        }
        self.added_tokens()
            .into_iter()
            .find(|token| token.special && !IMAGE_PLACEHOLDERS.contains(&token.content.as_str()))
            .map(|token| token.id)
            .ok_or_else(|| TokenizerError::NoPadToken {
                path: self.path.clone(),
            })
    }

    fn answer_id(&self, word: &str) -> Result<u32, TokenizerError> {
        let encoding = self.encoding(&self.literal, word, false)?;
        match encoding.get_ids() {
            [id] => Ok(*id),
            _ => Err(TokenizerError::AnswerNotSingleToken {
                path: self.path.clone(),
                word: word.to_string(),
                tokens: encoding.get_tokens().to_vec(),
            }),
        }
    }

    fn encoding(
        &self,
        tokenizer: &HfTokenizer,
        text: &str,
        add_special_tokens: bool,
    ) -> Result<tokenizers::Encoding, TokenizerError> {
        tokenizer
            .encode(text, add_special_tokens)
            .map_err(|source| TokenizerError::Encode {
                path: self.path.clone(),
                text: text.chars().take(ERROR_PREVIEW_CHARS).collect(),
                source,
            })
    }
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("path", &self.path)
            .field("vocab_size", &self.vocab_size(true))
            .finish()
    }
}
