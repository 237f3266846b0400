//! `umrank score`: reranker scores for (instruction, query, document) pairs from a JSON-lines file, one JSON line
//! `{"p_yes", "z_yes", "z_no"}` per pair on stdout, in input order.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

use umrank::device::DeviceSpec;
use umrank::media::preprocess::{ImageBackend, ImageInput};
use umrank::models::qwen2_vl::ImagePatches;
use umrank::models::reranker::{PairSide, Reranker};
use umrank::models::text::prompt_format::{AnswerTokens, PromptFormat, PromptSettings};

/// Score query-document pairs with a reranker (docs/method.md#prompt-layout; p_yes = sigmoid(z_yes - z_no)).
#[derive(Debug, clap::Args)]
pub struct ScoreArgs {
    /// A Qwen2-VL / Qwen2.5-VL model directory, a text-only decoder directory (Qwen2, Qwen3, Llama), or a llama
    /// GGUF file (its tokenizer is read from the file).
    #[arg(long, value_name = "DIR|FILE")]
    pub model: PathBuf,

    /// A PEFT LoRA adapter directory to apply to the decoder.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,

    /// JSON lines {"instruction", "query_text", "query_image", "doc_text", "doc_image"}, any of them missing or
    /// null; image paths are relative to this file.
    #[arg(long, value_name = "FILE")]
    pub pairs: PathBuf,

    /// Longest prompt in tokens; longer pairs lose document text first, then query text, then instruction.
    #[arg(long, default_value_t = 3200, value_name = "N")]
    pub max_len: usize,

    /// Prompt format: paper, qwen3-reranker or template (the model's own chat template) [default: the one
    /// recorded beside the adapter or model by training, else paper].
    #[arg(long, value_name = "FORMAT")]
    pub prompt: Option<PromptFormat>,

    /// The judgement words YES,NO, each a single token of the vocabulary [default: as recorded, else yes,no].
    #[arg(long, value_name = "YES,NO", value_delimiter = ',', num_args = 2)]
    pub answer_tokens: Option<Vec<String>>,

    /// Pairs per forward pass.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub batch: usize,

    /// cpu, cuda or cuda:K.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceSpec,

    /// Resize images as transformers' torchvision or PIL image processor does [default: the one the model
    /// directory's preprocessor_config.json names, torchvision unless it names a `...Pil` class; a release names
    /// the one it was trained with].
    #[arg(long, value_name = "torchvision|pil")]
    pub image_processor: Option<ImageBackend>,
}

/// One line of the pairs file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Pair {
    instruction: Option<String>,
    query_text: Option<String>,
    query_image: Option<String>,
    doc_text: Option<String>,
    doc_image: Option<String>,
}

pub fn score_pairs(args: &ScoreArgs) -> Result<()> {
    let device = args.device.candle()?;
    let prompt = prompt_settings(args)?;
    let mut reranker = Reranker::load_with_prompt(
        &args.model,
        args.adapter.as_deref(),
        prompt.as_ref(),
        &device,
    )?;
    reranker.set_image_backend(args.image_processor)?;
    let pairs = read_pairs(&args.pairs)?;
    let base = args.pairs.parent().unwrap_or(Path::new("."));
    let mut out = std::io::stdout().lock();
    // A batch of pairs is prepared, scored and printed before the next is read, so that only one batch of
    // pixels is in memory.
    for chunk in pairs.chunks(args.batch.max(1)) {
        let mut prepared = Vec::with_capacity(chunk.len());
        for (line, pair) in chunk {
            let at = || format!("{}:{line}", args.pairs.display());
            let query_image =
                load_image(&reranker, pair.query_image.as_deref(), base).with_context(at)?;
            let doc_image =
                load_image(&reranker, pair.doc_image.as_deref(), base).with_context(at)?;
            let query = PairSide {
                text: pair.query_text.as_deref(),
                image: query_image.as_ref(),
            };
            let document = PairSide {
                text: pair.doc_text.as_deref(),
                image: doc_image.as_ref(),
            };
            let instruction = pair.instruction.as_deref().unwrap_or("");
            prepared.push(
                reranker
                    .prompt(instruction, query, document, args.max_len)
                    .with_context(at)?,
            );
        }
        for score in reranker.score(&prepared, args.batch)? {
            serde_json::to_writer(&mut out, &score)?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}

/// The prompt settings the flags ask for, if any.
fn prompt_settings(args: &ScoreArgs) -> Result<Option<PromptSettings>> {
    if args.prompt.is_none() && args.answer_tokens.is_none() {
        return Ok(None);
    }
    let answer_tokens = match args.answer_tokens.as_deref() {
        None => AnswerTokens::default(),
        Some([yes, no]) => AnswerTokens {
            yes: yes.clone(),
            no: no.clone(),
        },
        Some(other) => anyhow::bail!("--answer-tokens takes two words, got {}", other.len()),
    };
    Ok(Some(PromptSettings {
        format: args.prompt.unwrap_or_default(),
        answer_tokens,
    }))
}

fn load_image(
    reranker: &Reranker,
    path: Option<&str>,
    base: &Path,
) -> Result<Option<ImagePatches>> {
    let Some(path) = path else { return Ok(None) };
    let file = base.join(path);
    let bytes =
        std::fs::read(&file).with_context(|| format!("cannot read image {}", file.display()))?;
    let patches = reranker
        .image(ImageInput::Encoded(&bytes))
        .with_context(|| format!("image {}", file.display()))?;
    Ok(Some(patches))
}

/// The pairs with their 1-based line numbers; blank lines are skipped.
fn read_pairs(path: &Path) -> Result<Vec<(usize, Pair)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let mut pairs = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let pair: Pair = serde_json::from_str(line)
            .with_context(|| format!("{}:{}: not a pair", path.display(), index + 1))?;
        pairs.push((index + 1, pair));
    }
    Ok(pairs)
}
