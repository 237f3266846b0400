//! `umrank score`: reranker scores for (instruction, query, document) pairs from a JSON-lines file, one JSON line
//! `{"p_yes", "z_yes", "z_no"}` per pair on stdout, in input order.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use image::imageops::FilterType;
use image::DynamicImage;
use serde::Deserialize;

use umrank::device::DeviceSpec;
use umrank::models::decoder::Decoder;
use umrank::models::gguf::GgufCheckpoint;
use umrank::models::prompt::{PromptBuilder, RerankInput, Side, IM_END};
use umrank::models::qwen2_vl::{
    score, ImageGrid, ImagePatches, Qwen2VlModel, ScoreInput, VisionConfig,
};
use umrank::models::tokenizer::Tokenizer;

/// Score query-document pairs with a reranker (DESIGN §4 prompt; p_yes = sigmoid(z_yes - z_no)).
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

    /// Pairs per forward pass.
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub batch: usize,

    /// cpu, cuda or cuda:K.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceSpec,
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

enum Model {
    Vl(Box<Qwen2VlModel>),
    Text(Box<Decoder>),
}

impl Model {
    fn decoder_mut(&mut self) -> &mut Decoder {
        match self {
            Model::Vl(model) => model.decoder_mut(),
            Model::Text(decoder) => decoder,
        }
    }
}

pub fn score_pairs(args: &ScoreArgs) -> Result<()> {
    let device = args.device.candle()?;
    let dtype = if device.is_cuda() {
        DType::BF16
    } else {
        DType::F32
    };
    let (mut model, tokenizer) = load(&args.model, dtype, &device)?;
    if let Some(adapter) = &args.adapter {
        model
            .decoder_mut()
            .load_lora(adapter, 0)
            .with_context(|| format!("loading adapter {}", adapter.display()))?;
    }
    let pairs = read_pairs(&args.pairs)?;
    let vision = match &model {
        Model::Vl(model) => Some(model.vision_config().clone()),
        Model::Text(_) => None,
    };
    let builder = PromptBuilder::reranker(&tokenizer)?;
    let answers = tokenizer
        .yes_no_ids()
        .with_context(|| format!("the tokenizer of {}", args.model.display()))?;
    let pad_id = tokenizer.special_token_id(IM_END)?;
    let base = args.pairs.parent().unwrap_or(Path::new("."));
    let mut prompts = Vec::with_capacity(pairs.len());
    for (line, pair) in &pairs {
        let at = || format!("{}:{line}", args.pairs.display());
        let images = pair_images(pair, base, vision.as_ref(), &device).with_context(at)?;
        let merge = vision.as_ref().map_or(1, |v| v.spatial_merge_size);
        let tokens = |image: Option<&ImagePatches>| image.map(|i| i.grid.merged_tokens(merge));
        let (query_image, doc_image) = (images.query.as_ref(), images.document.as_ref());
        let input = RerankInput {
            instruction: pair.instruction.as_deref().unwrap_or(""),
            query: side(pair.query_text.as_deref(), tokens(query_image)),
            document: side(pair.doc_text.as_deref(), tokens(doc_image)),
        };
        let prompt = builder.build(&input, args.max_len).with_context(at)?;
        let images: Vec<ImagePatches> = images.query.into_iter().chain(images.document).collect();
        prompts.push((prompt.ids, images));
    }
    let inputs: Vec<ScoreInput> = prompts
        .iter()
        .map(|(ids, images)| ScoreInput { ids, images })
        .collect();
    let scores = match &model {
        Model::Vl(model) => score(model.as_ref(), &inputs, answers, pad_id, args.batch),
        Model::Text(decoder) => score(decoder.as_ref(), &inputs, answers, pad_id, args.batch),
    }?;
    let mut out = std::io::stdout().lock();
    for score in scores {
        serde_json::to_writer(&mut out, &score)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}

fn side(text: Option<&str>, image_tokens: Option<usize>) -> Side<'_> {
    Side {
        text: text.unwrap_or(""),
        image_tokens,
    }
}

fn load(path: &Path, dtype: DType, device: &Device) -> Result<(Model, Tokenizer)> {
    if path.is_file() {
        let checkpoint = GgufCheckpoint::read(path, device)?;
        let decoder = checkpoint.decoder(dtype, device)?;
        let tokenizer = gguf_tokenizer(checkpoint.tokenizer(), path)?;
        return Ok((Model::Text(Box::new(decoder)), tokenizer));
    }
    let tokenizer = Tokenizer::from_dir(path)?;
    let model = if Qwen2VlModel::is_vl_dir(path) {
        Model::Vl(Box::new(Qwen2VlModel::from_model_dir(path, dtype, device)?))
    } else {
        Model::Text(Box::new(Decoder::from_model_dir(path, dtype, device)?))
    };
    Ok((model, tokenizer))
}

/// The GGUF's vocabulary as our [`Tokenizer`], which loads only from a file: written to a temporary
/// tokenizer.json, read back, removed.
fn gguf_tokenizer(tokenizer: &tokenizers::Tokenizer, gguf: &Path) -> Result<Tokenizer> {
    let file =
        std::env::temp_dir().join(format!("umrank-gguf-tokenizer-{}.json", std::process::id()));
    tokenizer
        .save(&file, false)
        .map_err(|e| anyhow::anyhow!("{}: cannot write its tokenizer: {e}", gguf.display()))?;
    let loaded = Tokenizer::from_file(&file);
    std::fs::remove_file(&file).ok();
    Ok(loaded?)
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

struct PairImages {
    query: Option<ImagePatches>,
    document: Option<ImagePatches>,
}

fn pair_images(
    pair: &Pair,
    base: &Path,
    vision: Option<&VisionConfig>,
    device: &Device,
) -> Result<PairImages> {
    let load = |path: &Option<String>| -> Result<Option<ImagePatches>> {
        let Some(path) = path else { return Ok(None) };
        let Some(vision) = vision else {
            bail!("the pair has an image but the model is text-only")
        };
        let file = base.join(path);
        let image =
            image::open(&file).with_context(|| format!("cannot read image {}", file.display()))?;
        let (patches, grid) = qwen_pixels(&image, vision);
        let pixels = Tensor::from_vec(patches, (grid.patches(), vision.patch_dim()), device)?;
        Ok(Some(ImagePatches { pixels, grid }))
    };
    Ok(PairImages {
        query: load(&pair.query_image)?,
        document: load(&pair.doc_image)?,
    })
}

/// Qwen2-VL's image bounds at inference (DESIGN §4): 4 to 1280 merged tokens of 28 x 28 pixels.
const MIN_PIXELS: usize = 4 * 28 * 28;
const MAX_PIXELS: usize = 1280 * 28 * 28;
/// CLIP's normalisation, which Qwen2-VL's processor uses.
const MEAN: [f64; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
const STD: [f64; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// A stand-in for the media preprocessor (src/media/preprocess, not merged yet): Qwen2-VL's smart_resize,
/// bicubic resampling, CLIP normalisation and the processor's patch order, for one still image. Returns the
/// `(patches, patch_dim)` rows, row-major, and the grid.
fn qwen_pixels(image: &DynamicImage, vision: &VisionConfig) -> (Vec<f32>, ImageGrid) {
    let (patch, merge, temporal) = (
        vision.patch_size,
        vision.spatial_merge_size,
        vision.temporal_patch_size,
    );
    let factor = patch * merge;
    let (height, width) = smart_resize(image.height() as usize, image.width() as usize, factor);
    let rgb = image.to_rgb8();
    let rgb = if (rgb.width() as usize, rgb.height() as usize) == (width, height) {
        rgb
    } else {
        image::imageops::resize(&rgb, width as u32, height as u32, FilterType::CatmullRom)
    };
    let grid = ImageGrid::new(1, height / patch, width / patch);
    let mut out = Vec::with_capacity(grid.patches() * 3 * temporal * patch * patch);
    for block_row in 0..grid.h / merge {
        for block_col in 0..grid.w / merge {
            for inner_row in 0..merge {
                for inner_col in 0..merge {
                    let top = (block_row * merge + inner_row) * patch;
                    let left = (block_col * merge + inner_col) * patch;
                    for channel in 0..3 {
                        for _frame in 0..temporal {
                            for y in top..top + patch {
                                for x in left..left + patch {
                                    let value = rgb.get_pixel(x as u32, y as u32)[channel];
                                    out.push(
                                        ((f64::from(value) / 255.0 - MEAN[channel]) / STD[channel])
                                            as f32,
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    (out, grid)
}

/// Height and width rounded to multiples of `factor`, scaled into [MIN_PIXELS, MAX_PIXELS] keeping the aspect.
fn smart_resize(height: usize, width: usize, factor: usize) -> (usize, usize) {
    let f = factor as f64;
    let (h, w) = (height as f64, width as f64);
    let mut h_bar = factor.max(((h / f).round_ties_even() * f) as usize);
    let mut w_bar = factor.max(((w / f).round_ties_even() * f) as usize);
    if h_bar * w_bar > MAX_PIXELS {
        let beta = (h * w / MAX_PIXELS as f64).sqrt();
        h_bar = factor.max(((h / beta / f).floor() * f) as usize);
        w_bar = factor.max(((w / beta / f).floor() * f) as usize);
    } else if h_bar * w_bar < MIN_PIXELS {
        let beta = (MIN_PIXELS as f64 / (h * w)).sqrt();
        h_bar = ((h * beta / f).ceil() * f) as usize;
        w_bar = ((w * beta / f).ceil() * f) as usize;
    }
    (h_bar, w_bar)
}
