//! GME-style embeddings (gme-Qwen2-VL): the final hidden state of a Qwen2-VL at the prompt's last token,
//! L2-normalised, for mining candidates with one model over text, images and both.
//!
//! The prompt is the one GME's released inference code builds (`gme_inference.py` of
//! Alibaba-NLP/gme-Qwen2-VL-2B-Instruct):
//!
//! ```text
//! <|im_start|>system\n{instruction}<|im_end|>\n<|im_start|>user\n{image}{text}<|im_end|>\n<|im_start|>assistant\n<|endoftext|>
//! ```
//!
//! where `{image}` is `<|vision_start|>`, the image's placeholders and `<|vision_end|>`, the image comes before
//! the text, and the instruction defaults to "You are a helpful assistant." (GME uses the default for every
//! document and for queries given no instruction). The pooled token is the closing `<|endoftext|>`. Special
//! tokens are placed by id and the text runs between them encoded as data, as in [`crate::models::text::prompt`].

use super::score::{HiddenStates, PaddedBatch, ScoreInput};
use crate::models::decoder::select_positions;
use crate::models::text::prompt::{IMAGE_PAD, IM_END, IM_START, VISION_END, VISION_START};
use crate::models::text::tokenizer::{Tokenizer, TokenizerError};
use candle_core::{DType, Result, Tensor, D};

/// GME's instruction for documents and for queries without one.
pub const GME_DEFAULT_INSTRUCTION: &str = "You are a helpful assistant.";
const END_OF_TEXT: &str = "<|endoftext|>";

/// One item to embed: text, an image given by its number of merged vision tokens, or both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GmeInput<'a> {
    pub instruction: Option<&'a str>,
    pub text: Option<&'a str>,
    pub image_tokens: Option<usize>,
}

/// The special-token ids of GME's prompt, looked up once.
#[derive(Debug, Clone)]
pub struct GmePromptBuilder<'t> {
    tokenizer: &'t Tokenizer,
    im_start: u32,
    im_end: u32,
    end_of_text: u32,
    vision: Option<[u32; 3]>,
}

impl<'t> GmePromptBuilder<'t> {
    /// Text-only vocabularies work too; only prompts with images need the vision tokens.
    pub fn new(tokenizer: &'t Tokenizer) -> std::result::Result<Self, TokenizerError> {
        let vision = [VISION_START, IMAGE_PAD, VISION_END]
            .iter()
            .map(|token| tokenizer.special_token_id(token))
            .collect::<std::result::Result<Vec<_>, _>>()
            .ok()
            .map(|ids| [ids[0], ids[1], ids[2]]);
        Ok(Self {
            tokenizer,
            im_start: tokenizer.special_token_id(IM_START)?,
            im_end: tokenizer.special_token_id(IM_END)?,
            end_of_text: tokenizer.special_token_id(END_OF_TEXT)?,
            vision,
        })
    }

    /// The prompt's token ids.
    pub fn build(&self, input: &GmeInput) -> std::result::Result<Vec<u32>, TokenizerError> {
        let text = |s: &str| self.tokenizer.encode_text(s);
        let instruction = input.instruction.unwrap_or(GME_DEFAULT_INSTRUCTION);
        let body = input.text.unwrap_or("");
        let mut ids = vec![self.im_start];
        ids.extend(text(&format!("system\n{instruction}"))?);
        ids.push(self.im_end);
        ids.extend(text("\n")?);
        ids.push(self.im_start);
        match input.image_tokens {
            Some(n) => {
                let [start, pad, end] =
                    self.vision.ok_or_else(|| TokenizerError::UnknownToken {
                        path: self.tokenizer.path().to_path_buf(),
                        token: IMAGE_PAD.to_string(),
                    })?;
                ids.extend(text("user\n")?);
                ids.push(start);
                ids.extend(std::iter::repeat_n(pad, n));
                ids.push(end);
                ids.extend(text(body)?);
            }
            None => ids.extend(text(&format!("user\n{body}"))?),
        }
        ids.push(self.im_end);
        ids.extend(text("\n")?);
        ids.push(self.im_start);
        ids.extend(text("assistant\n")?);
        ids.push(self.end_of_text);
        Ok(ids)
    }
}

/// The L2-normalised last-token hidden states `(n, hidden)` in f32 of the prompts of `inputs`, run as one
/// right-padded batch.
pub fn gme_embed(model: &impl HiddenStates, inputs: &[ScoreInput], pad_id: u32) -> Result<Tensor> {
    let batch = PaddedBatch::new(inputs, pad_id)?;
    let hidden = model.hidden_states(&batch, false)?;
    let pooled = select_positions(&hidden, &batch.last)?.to_dtype(DType::F32)?;
    let norm = pooled.sqr()?.sum_keepdim(D::Minus1)?.sqrt()?;
    pooled.broadcast_div(&norm)
}
