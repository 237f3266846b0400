//! A reranker ready to score (instruction, query, document) pairs: a model, its tokenizer, its prompt format
//! (docs/method.md#prompt-layout) and, for vision-language models, the image processor.
//!
//! `umrank score` and the eval stage share it, so a pair scores the same from the command line and in a pipeline.
//! Work is split in two steps: [`Reranker::prompt`] turns one pair into token ids and image patches (where bad
//! input shows up, one pair at a time, so a caller can reject just that pair), and [`Reranker::score`] runs the
//! prepared pairs in batches. A caller that scores many pairs prepares and scores them a batch at a time, so the
//! pixels of only one batch are in memory.
//!
//! A release checks itself with the same type ([`Reranker::load_parts`]): its tokenizer and image processor lie
//! beside its adapter, apart from the base weights, and it scores in f32 wherever it runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use candle_core::{DType, Device, Tensor};

use super::prefix_score;
use super::qwen2_vl::{score, ImageGrid, ImagePatches, PairScore, Qwen2VlModel, ScoreInput};
use crate::media::preprocess::{
    ImageBackend, ImageInput, ImagePreprocessor, PreprocessError, PreprocessorConfig,
    Qwen2VlParams, Qwen2VlProcessor,
};
use crate::models::adapters::peft::PeftError;
use crate::models::backbone::Backbone;
use crate::models::decoder::Decoder;
use crate::models::formats::gguf::GgufCheckpoint;
use crate::models::text::chat_template::{ChatTemplate, ChatTemplateError, ChatTemplates};
use crate::models::text::prompt::{PromptBuilder, PromptError, RerankInput, Side};
use crate::models::text::prompt_format::{PromptFormat, PromptSettings, PromptSettingsError};
use crate::models::text::tokenizer::{AnswerIds, Tokenizer, TokenizerError};

/// Why a reranker could not be loaded or could not score a pair.
#[derive(Debug, thiserror::Error)]
pub enum RerankerError {
    #[error("{path}: cannot load the model: {source}")]
    Load {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("adapter {path}: {source}")]
    Adapter {
        path: PathBuf,
        #[source]
        source: PeftError,
    },
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error(transparent)]
    PromptSettings(#[from] PromptSettingsError),
    #[error("prompt format template: {0}")]
    ChatTemplate(#[from] ChatTemplateError),
    #[error("image: {0}")]
    Image(#[from] PreprocessError),
    #[error("the pair has an image but the model {0} is text-only")]
    TextOnly(PathBuf),
    #[error(
        "the image processor makes patches of {processor} values but the vision tower takes {tower}"
    )]
    PatchSize { processor: usize, tower: usize },
    #[error(transparent)]
    Model(#[from] candle_core::Error),
}

impl RerankerError {
    fn load(path: &Path, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Load {
            path: path.to_owned(),
            source: Box::new(source),
        }
    }
}

/// One side of a pair: text (may be absent) and an image already turned into patches (see
/// [`Reranker::image`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct PairSide<'a> {
    pub text: Option<&'a str>,
    pub image: Option<&'a ImagePatches>,
}

/// A pair ready to score: its prompt ids and the patches of its images, in prompt order.
#[derive(Debug, Clone)]
pub struct PreparedPair {
    pub ids: Vec<u32>,
    pub images: Vec<ImagePatches>,
}

/// Where a reranker's parts are read from.
#[derive(Debug, Clone, Copy)]
pub struct RerankerParts<'a> {
    /// A model directory (weights and config.json) or a llama GGUF file.
    pub weights: &'a Path,
    /// The directory holding tokenizer.json and preprocessor_config.json, when not `weights` (or, for a GGUF
    /// file, the tokenizer it carries).
    pub files: Option<&'a Path>,
    /// A PEFT adapter directory to apply.
    pub adapter: Option<&'a Path>,
    /// The prompt to score with; by default the one recorded beside the adapter or the model
    /// ([`crate::models::text::prompt_format::PROMPT_FILE`]), else `paper`. A request that differs from the
    /// record is an error.
    pub prompt: Option<&'a PromptSettings>,
}

/// A loaded reranker; see the module docs.
pub struct Reranker {
    backbone: Backbone,
    tokenizer: Tokenizer,
    answers: AnswerIds,
    pad_id: u32,
    prompt: PromptSettings,
    /// The model's chat template, for the `template` prompt format.
    template: Option<ChatTemplate>,
    processor: Option<Qwen2VlProcessor>,
    path: PathBuf,
}

impl Reranker {
    /// Loads `model` (a Qwen2-VL / Qwen2.5-VL directory, a text decoder directory, or a llama GGUF file) onto
    /// `device`, in bf16 on CUDA and f32 on the CPU, and applies the PEFT adapter directory `adapter` if given.
    pub fn load(
        model: &Path,
        adapter: Option<&Path>,
        device: &Device,
    ) -> Result<Self, RerankerError> {
        Self::load_with_prompt(model, adapter, None, device)
    }

    /// [`Reranker::load`] with the prompt settings asked for (see [`RerankerParts::prompt`]).
    pub fn load_with_prompt(
        model: &Path,
        adapter: Option<&Path>,
        prompt: Option<&PromptSettings>,
        device: &Device,
    ) -> Result<Self, RerankerError> {
        let dtype = if device.is_cuda() {
            DType::BF16
        } else {
            DType::F32
        };
        let parts = RerankerParts {
            weights: model,
            files: None,
            adapter,
            prompt,
        };
        Self::load_parts(parts, dtype, device)
    }

    /// Loads a reranker whose parts lie in different places, in `dtype` on `device`.
    pub fn load_parts(
        parts: RerankerParts<'_>,
        dtype: DType,
        device: &Device,
    ) -> Result<Self, RerankerError> {
        let (mut backbone, tokenizer, embedded_template) =
            load_backbone(parts.weights, parts.files, dtype, device)?;
        if let Some(adapter) = parts.adapter {
            let decoder = backbone.decoder_mut();
            decoder
                .load_lora(adapter, 0)
                .map_err(|source| RerankerError::Adapter {
                    path: adapter.to_owned(),
                    source,
                })?;
            // A reranker only scores: with trainable adapters each scoring pass would keep every activation.
            decoder.freeze_lora();
        }
        let processor = match backbone.vision_language() {
            Some(vl) => Some(image_processor(parts.files.unwrap_or(parts.weights), vl)?),
            None => None,
        };
        let files = parts.files.unwrap_or(parts.weights);
        let record_dirs: Vec<&Path> = [parts.adapter, Some(files), Some(parts.weights)]
            .into_iter()
            .flatten()
            .filter(|dir| dir.is_dir())
            .collect();
        let prompt = PromptSettings::resolve(parts.prompt, &record_dirs)?;
        let template = match (prompt.format, embedded_template) {
            (PromptFormat::Template, Some(embedded)) if parts.files.is_none() => Some(embedded),
            (PromptFormat::Template, _) => {
                Some(ChatTemplates::from_dir(files)?.into_selected(None, false)?)
            }
            _ => None,
        };
        // Building a prompt builder checks the format against the vocabulary once, at load.
        PromptBuilder::for_settings(&tokenizer, &prompt, template.as_ref())?;
        let answers = tokenizer.answer_ids(&prompt.answer_tokens.yes, &prompt.answer_tokens.no)?;
        let pad_id = tokenizer.pad_id()?;
        Ok(Self {
            backbone,
            tokenizer,
            answers,
            pad_id,
            prompt,
            template,
            processor,
            path: parts.weights.to_owned(),
        })
    }

    /// The prompt format and judgement tokens the reranker scores with.
    pub fn prompt_settings(&self) -> &PromptSettings {
        &self.prompt
    }

    /// Whether the model takes images.
    pub fn is_multimodal(&self) -> bool {
        self.processor.is_some()
    }

    /// The image processor of a vision-language model.
    pub fn image_processor(&self) -> Option<&Qwen2VlProcessor> {
        self.processor.as_ref()
    }

    /// Resizes images within `(min_pixels, max_pixels)` where given instead of the model directory's bounds (a
    /// text-only model has nothing to bound).
    pub fn set_pixel_bounds(
        &mut self,
        pixels: (Option<u64>, Option<u64>),
    ) -> Result<(), RerankerError> {
        if let Some(processor) = &mut self.processor {
            *processor = Qwen2VlProcessor::new(processor.params().clone().with_bounds(pixels))?;
        }
        Ok(())
    }

    /// Resizes and normalises images as `backend` (transformers' torchvision or PIL image processor) does, where
    /// given, instead of the backend the model directory's `preprocessor_config.json` names: a model is scored with
    /// the processor it was trained with.
    pub fn set_image_backend(
        &mut self,
        backend: Option<ImageBackend>,
    ) -> Result<(), RerankerError> {
        if let Some(processor) = &mut self.processor {
            *processor = Qwen2VlProcessor::new(processor.params().clone().with_backend(backend))?;
        }
        Ok(())
    }

    /// Preprocesses one image for the vision tower (an error for a text-only model).
    pub fn image(&self, image: ImageInput<'_>) -> Result<ImagePatches, RerankerError> {
        let processor = self
            .processor
            .as_ref()
            .ok_or_else(|| RerankerError::TextOnly(self.path.clone()))?;
        let pixels = processor.preprocess(image)?;
        let [t, h, w] = pixels.grid_thw;
        let values = Tensor::from_vec(
            pixels.patches,
            (pixels.num_patches, pixels.patch_dim),
            &Device::Cpu,
        )?;
        Ok(ImagePatches {
            pixels: values.to_device(self.device())?,
            grid: ImageGrid::new(t, h, w),
        })
    }

    /// The prompt of one pair, at most `max_len` tokens: longer pairs lose document text first, then query text,
    /// then instruction (see [`PromptBuilder::build`]).
    pub fn prompt(
        &self,
        instruction: &str,
        query: PairSide<'_>,
        document: PairSide<'_>,
        max_len: usize,
    ) -> Result<PreparedPair, RerankerError> {
        if (query.image.is_some() || document.image.is_some()) && !self.is_multimodal() {
            return Err(RerankerError::TextOnly(self.path.clone()));
        }
        let merge = self
            .processor
            .as_ref()
            .map_or(1, |p| p.params().merge_size as usize);
        let input = RerankInput {
            instruction,
            query: prompt_side(query, merge),
            document: prompt_side(document, merge),
        };
        let prompt =
            PromptBuilder::for_settings(&self.tokenizer, &self.prompt, self.template.as_ref())?
                .build(&input, max_len)?;
        let images = query
            .image
            .into_iter()
            .chain(document.image)
            .cloned()
            .collect();
        Ok(PreparedPair {
            ids: prompt.ids,
            images,
        })
    }

    /// Scores `pairs`, `batch_size` at a time, in input order (inference: no dropout). Pairs without images run
    /// with their prompts' common heads computed once ([`prefix_score`]); with images, as padded batches.
    pub fn score(
        &self,
        pairs: &[PreparedPair],
        batch_size: usize,
    ) -> Result<Vec<PairScore>, RerankerError> {
        if pairs.iter().all(|pair| pair.images.is_empty()) {
            let prompts: Vec<&[u32]> = pairs.iter().map(|pair| pair.ids.as_slice()).collect();
            return Ok(prefix_score::score_text(
                self.backbone.decoder(),
                &prompts,
                self.answers,
                batch_size,
            )?);
        }
        let inputs: Vec<ScoreInput> = pairs
            .iter()
            .map(|pair| ScoreInput {
                ids: &pair.ids,
                images: &pair.images,
            })
            .collect();
        Ok(score(
            &self.backbone,
            &inputs,
            self.answers,
            self.pad_id,
            batch_size,
        )?)
    }

    fn device(&self) -> &Device {
        self.backbone.device()
    }
}

/// A pair side as the prompt builder takes it: the text and the number of merged vision tokens of its image.
fn prompt_side<'a>(side: PairSide<'a>, merge: usize) -> Side<'a> {
    Side {
        text: side.text.unwrap_or(""),
        image_tokens: side.image.map(|image| image.grid.merged_tokens(merge)),
    }
}

/// The network at `path`, the tokenizer from `files` (default: beside the weights, or inside the GGUF), and the
/// chat template a GGUF carries.
fn load_backbone(
    path: &Path,
    files: Option<&Path>,
    dtype: DType,
    device: &Device,
) -> Result<(Backbone, Tokenizer, Option<ChatTemplate>), RerankerError> {
    if path.is_file() {
        let checkpoint =
            GgufCheckpoint::read(path, device).map_err(|e| RerankerError::load(path, e))?;
        let decoder = checkpoint
            .decoder(dtype, device)
            .map_err(|e| RerankerError::load(path, e))?;
        let tokenizer = match files {
            Some(dir) => Tokenizer::from_dir(dir)?,
            None => gguf_tokenizer(checkpoint.tokenizer(), path)?,
        };
        let template = gguf_chat_template(&checkpoint, &tokenizer, path)?;
        return Ok((Backbone::Text(Box::new(decoder)), tokenizer, template));
    }
    let tokenizer = Tokenizer::from_dir(files.unwrap_or(path))?;
    let backbone = if Qwen2VlModel::is_vl_dir(path) {
        let model = Qwen2VlModel::from_model_dir(path, dtype, device)
            .map_err(|e| RerankerError::load(path, e))?;
        Backbone::Vl(Box::new(model))
    } else {
        let decoder = Decoder::from_model_dir(path, dtype, device)
            .map_err(|e| RerankerError::load(path, e))?;
        Backbone::Text(Box::new(decoder))
    };
    Ok((backbone, tokenizer, None))
}

/// The chat template in a GGUF's metadata, with its bos and eos tokens spelled as the template prints them.
pub(crate) fn gguf_chat_template(
    checkpoint: &GgufCheckpoint,
    tokenizer: &Tokenizer,
    path: &Path,
) -> Result<Option<ChatTemplate>, RerankerError> {
    let Some(source) = checkpoint.chat_template() else {
        return Ok(None);
    };
    let special_tokens = [
        ("bos_token", checkpoint.bos_token_id()),
        ("eos_token", checkpoint.eos_token_id()),
    ]
    .into_iter()
    .filter_map(|(field, id)| Some((field, tokenizer.id_to_token(id?)?)))
    .collect();
    Ok(Some(ChatTemplate::embedded(path, source, special_tokens)?))
}

/// The model directory's image processor, or transformers' defaults (which are the inference bounds of
/// docs/method.md#image-bounds: 4 to 1280 merged tokens) with the vision tower's patch geometry when the directory has
/// no `preprocessor_config.json`. The processor's patches must be the size the tower takes.
fn image_processor(dir: &Path, model: &Qwen2VlModel) -> Result<Qwen2VlProcessor, RerankerError> {
    let vision = model.vision_config();
    let file = dir.join(PreprocessorConfig::FILE_NAME);
    let processor = if file.is_file() {
        Qwen2VlProcessor::from_config(&PreprocessorConfig::from_file(&file)?)?
    } else {
        Qwen2VlProcessor::new(Qwen2VlParams {
            patch_size: to_u32(vision.patch_size),
            merge_size: to_u32(vision.spatial_merge_size),
            temporal_patch_size: to_u32(vision.temporal_patch_size),
            ..Qwen2VlParams::default()
        })?
    };
    let params = processor.params();
    let processor_dim = 3
        * params.temporal_patch_size as usize
        * params.patch_size as usize
        * params.patch_size as usize;
    if processor_dim != vision.patch_dim()
        || params.merge_size as usize != vision.spatial_merge_size
    {
        return Err(RerankerError::PatchSize {
            processor: processor_dim,
            tower: vision.patch_dim(),
        });
    }
    Ok(processor)
}

/// A vision config value as the processor's type; configs hold small numbers, so saturating never bites and a
/// wrong value is caught by the patch-size check.
fn to_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

/// The GGUF's vocabulary as our [`Tokenizer`], which loads only from a file: written to a temporary
/// tokenizer.json, read back, removed.
pub(crate) fn gguf_tokenizer(
    tokenizer: &tokenizers::Tokenizer,
    gguf: &Path,
) -> Result<Tokenizer, RerankerError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let file = std::env::temp_dir().join(format!(
        "umrank-gguf-tokenizer-{}-{}.json",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    tokenizer
        .save(&file, false)
        .map_err(|e| RerankerError::Load {
            path: gguf.to_owned(),
            source: format!("cannot write its tokenizer to {}: {e}", file.display()).into(),
        })?;
    let loaded = Tokenizer::from_file(&file);
    // The copy is scratch: failing to remove it loses nothing.
    let _ = std::fs::remove_file(&file);
    Ok(loaded?)
}
