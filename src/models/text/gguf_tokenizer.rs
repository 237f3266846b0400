//! A Hugging Face `tokenizers::Tokenizer` rebuilt from the vocabulary a GGUF file embeds.
//!
//! llama.cpp's converter stores a byte-level BPE tokenizer (`tokenizer.ggml.model = "gpt2"`) as its token list,
//! merge list, per-token types and a `tokenizer.ggml.pre` name that selects the pre-tokenizer regexes llama.cpp
//! hard-codes for that model family. We rebuild the equivalent `tokenizers` pipeline: BPE over the byte-level
//! alphabet, the pre-tokenizer the name stands for, control tokens (type 3) as special added tokens and
//! user-defined tokens (type 4) as plain added tokens, and a BOS/EOS template when the file asks for one.
//! Pre-tokenizer names we cannot reproduce exactly are refused rather than approximated.

use crate::models::formats::gguf::{GgufError, Metadata};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{AddedToken, PreTokenizerWrapper, Tokenizer};

/// llama.cpp's `LLAMA_TOKEN_TYPE_CONTROL` and `LLAMA_TOKEN_TYPE_USER_DEFINED`.
const CONTROL: i64 = 3;
const USER_DEFINED: i64 = 4;

/// Builds the tokenizer from `tokenizer.ggml.*` metadata.
pub(crate) fn from_metadata(meta: &Metadata) -> Result<Tokenizer, GgufError> {
    let model = meta.required_string("tokenizer.ggml.model")?;
    if model != "gpt2" {
        return Err(meta.unsupported(format!(
            "tokenizer model `{model}` (only byte-level BPE, `gpt2`)"
        )));
    }
    let tokens = meta.required_strings("tokenizer.ggml.tokens")?;
    let merges = meta
        .required_strings("tokenizer.ggml.merges")?
        .into_iter()
        .map(|merge| {
            merge
                .split_once(' ')
                .map(|(left, right)| (left.to_string(), right.to_string()))
                .ok_or_else(|| tokenizer_error(meta, format!("merge `{merge}` is not two tokens")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let vocab: Vocab = tokens
        .iter()
        .enumerate()
        .map(|(id, token)| (token.to_string(), id as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .build()
        .map_err(|err| tokenizer_error(meta, err.to_string()))?;

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer(
        meta,
        meta.string("tokenizer.ggml.pre")?,
    )?));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    add_typed_tokens(meta, &tokens, &mut tokenizer)?;
    if let Some(template) = bos_eos_template(meta, &tokens)? {
        tokenizer.with_post_processor(Some(template));
    }
    Ok(tokenizer)
}

/// The pre-tokenizer llama.cpp applies for the `tokenizer.ggml.pre` name.
fn pre_tokenizer(meta: &Metadata, pre: Option<&str>) -> Result<PreTokenizerWrapper, GgufError> {
    let byte_level = ByteLevel::new(false, true, true);
    match pre.unwrap_or("default") {
        "default" | "gpt2" | "gpt-2" => Ok(byte_level.into()),
        // These split every digit off first (llama.cpp's `\p{N}` rule), then apply GPT-2's regex.
        "smollm" | "starcoder" | "refact" => {
            Ok(Sequence::new(vec![Digits::new(true).into(), byte_level.into()]).into())
        }
        other => Err(meta.unsupported(format!("pre-tokenizer `{other}`"))),
    }
}

fn add_typed_tokens(
    meta: &Metadata,
    tokens: &[&str],
    tokenizer: &mut Tokenizer,
) -> Result<(), GgufError> {
    let Some(types) = meta.integers("tokenizer.ggml.token_type")? else {
        return Ok(());
    };
    if types.len() != tokens.len() {
        return Err(tokenizer_error(
            meta,
            format!("{} token types for {} tokens", types.len(), tokens.len()),
        ));
    }
    let typed = |wanted: i64, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, &kind)| kind == wanted)
            .map(|(token, _)| AddedToken::from(token.to_string(), special))
            .collect()
    };
    tokenizer
        .add_special_tokens(typed(CONTROL, true))
        .map_err(|e| tokenizer_error(meta, format!("cannot add its control tokens: {e}")))?;
    tokenizer
        .add_tokens(typed(USER_DEFINED, false))
        .map_err(|e| tokenizer_error(meta, format!("cannot add its user-defined tokens: {e}")))?;
    Ok(())
}

/// `<bos> $A` / `$A <eos>` as `tokenizer.ggml.add_bos_token` / `add_eos_token` ask; both default to off, as for
/// GPT-2-style vocabularies.
fn bos_eos_template(
    meta: &Metadata,
    tokens: &[&str],
) -> Result<Option<TemplateProcessing>, GgufError> {
    let mut specials = Vec::new();
    let mut wrap = |flag: &str, id_key: &str| -> Result<Option<String>, GgufError> {
        if meta.bool(flag)? != Some(true) {
            return Ok(None);
        }
        let id = meta.u32(id_key)?.ok_or_else(|| {
            tokenizer_error(meta, format!("`{flag}` is set but `{id_key}` is missing"))
        })?;
        let token = tokens
            .get(id as usize)
            .ok_or_else(|| tokenizer_error(meta, format!("`{id_key}` = {id} is not a token")))?;
        // Template pieces are separated by spaces and typed with `:`.
        if token.contains([' ', ':']) {
            return Err(tokenizer_error(
                meta,
                format!("token `{token}` cannot appear in a template"),
            ));
        }
        specials.push((token.to_string(), id));
        Ok(Some(token.to_string()))
    };
    let bos = wrap(
        "tokenizer.ggml.add_bos_token",
        "tokenizer.ggml.bos_token_id",
    )?;
    let eos = wrap(
        "tokenizer.ggml.add_eos_token",
        "tokenizer.ggml.eos_token_id",
    )?;
    if bos.is_none() && eos.is_none() {
        return Ok(None);
    }
    let around = |body: &str, type_id: u32| {
        [bos.as_deref(), Some(body), eos.as_deref()]
            .into_iter()
            .flatten()
            .map(|piece| format!("{piece}:{type_id}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let single = around("$A", 0);
    let pair = format!("{single} {}", around("$B", 1));
    TemplateProcessing::builder()
        .try_single(single)
        .and_then(|builder| builder.try_pair(pair))
        .map_err(|err| tokenizer_error(meta, err))?
        .special_tokens(specials)
        .build()
        .map(Some)
        .map_err(|err| tokenizer_error(meta, err.to_string()))
}

fn tokenizer_error(meta: &Metadata, reason: String) -> GgufError {
    GgufError::Tokenizer {
        path: meta.path.to_path_buf(),
        reason,
    }
}
