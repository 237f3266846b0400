//! GME embeddings from a Qwen2-VL / Qwen2.5-VL directory (gme-Qwen2-VL-2B/7B-Instruct): one model for text,
//! images and both, queries embedded with their task instruction as the system prompt, documents with GME's
//! default instruction ([`crate::models::qwen2_vl::gme`]).

use std::path::Path;

use candle_core::{DType, Device, Tensor};

use super::model::{EmbedModel, ModelOptions, Prepared, PreparedImage};
use super::EmbedError;
use crate::digest::{sha256_file, Fingerprint};
use crate::media::preprocess::{
    ImagePreprocessor, PreprocessError, PreprocessorConfig, Qwen2VlParams, Qwen2VlProcessor,
};
use crate::modality::Modality;
use crate::models::qwen2_vl::{
    gme_embed, GmeInput, GmePromptBuilder, ImageGrid, ImagePatches, Qwen2VlModel, ScoreInput,
    GME_DEFAULT_INSTRUCTION,
};
use crate::models::text::prompt::IM_END;
use crate::models::text::tokenizer::Tokenizer;

const PREPROCESSOR_CONFIG: &str = "preprocessor_config.json";

/// A Qwen2-VL backbone with GME's prompt and last-token pooling.
pub struct GmeModel {
    model: Qwen2VlModel,
    tokenizer: Tokenizer,
    processor: Qwen2VlProcessor,
    pad_id: u32,
    device: Device,
    dim: usize,
    fingerprint: String,
}

impl GmeModel {
    /// Loads config.json, the safetensors, tokenizer.json and, when present, preprocessor_config.json (else
    /// transformers' Qwen2-VL processor defaults), and checks that the processor's patches fit the vision tower.
    pub fn load(dir: &Path, options: &ModelOptions) -> Result<Self, EmbedError> {
        let tokenizer = Tokenizer::from_dir(dir)?;
        let model = Qwen2VlModel::from_model_dir(dir, options.dtype, &options.device)?;
        let processor = processor(dir, options.pixels)?;
        check_patches(dir, processor.params(), &model)?;
        // The prompt builder needs the chat tokens; building it once here turns a wrong vocabulary into a load
        // error instead of a failure at the first batch.
        GmePromptBuilder::new(&tokenizer)?;
        let pad_id = tokenizer.special_token_id(IM_END)?;
        let fingerprint = fingerprint(dir, processor.params(), options.dtype)?;
        Ok(Self {
            dim: model.decoder().config().hidden_size,
            model,
            tokenizer,
            processor,
            pad_id,
            device: options.device.clone(),
            fingerprint,
        })
    }

    fn prompt(
        &self,
        builder: &GmePromptBuilder,
        item: &Prepared<'_>,
        image_tokens: Option<usize>,
    ) -> Result<Vec<u32>, EmbedError> {
        Ok(builder.build(&GmeInput {
            instruction: item.instruction,
            text: item.text,
            image_tokens,
        })?)
    }

    fn patches(&self, image: &PreparedImage) -> Result<ImagePatches, EmbedError> {
        let PreparedImage::Qwen(pixels) = image else {
            return Err(EmbedError::Batch(
                "GME was given an image not preprocessed for Qwen2-VL".into(),
            ));
        };
        let [t, h, w] = pixels.grid_thw;
        let tensor = Tensor::from_slice(
            &pixels.patches,
            (pixels.num_patches, pixels.patch_dim),
            &self.device,
        )
        .map_err(|source| EmbedError::Compute {
            what: "image patches",
            source,
        })?;
        Ok(ImagePatches {
            pixels: tensor,
            grid: ImageGrid::new(t, h, w),
        })
    }
}

/// The model directory's image processor (transformers' defaults without a preprocessor_config.json), within
/// `pixels` where given.
fn processor(
    dir: &Path,
    pixels: (Option<u64>, Option<u64>),
) -> Result<Qwen2VlProcessor, EmbedError> {
    let path = dir.join(PREPROCESSOR_CONFIG);
    let built = if path.is_file() {
        PreprocessorConfig::from_file(&path).and_then(|c| Qwen2VlProcessor::from_config(&c))
    } else {
        Qwen2VlProcessor::new(Qwen2VlParams::default())
    };
    let bounded = built.and_then(|p| Qwen2VlProcessor::new(p.params().clone().with_bounds(pixels)));
    bounded.map_err(|source| EmbedError::Preprocessing { path, source })
}

/// The processor's patch geometry must be the tower's, or every image would fail deep in the model.
fn check_patches(
    dir: &Path,
    params: &Qwen2VlParams,
    model: &Qwen2VlModel,
) -> Result<(), EmbedError> {
    let vision = model.vision_config();
    let pairs = [
        ("patch_size", params.patch_size, vision.patch_size),
        ("merge_size", params.merge_size, vision.spatial_merge_size),
        (
            "temporal_patch_size",
            params.temporal_patch_size,
            vision.temporal_patch_size,
        ),
    ];
    for (field, processor, tower) in pairs {
        if processor as usize != tower {
            return Err(EmbedError::Config(format!(
                "{}: the image processor's {field} is {processor} but the vision tower's is {tower}",
                dir.join(PREPROCESSOR_CONFIG).display()
            )));
        }
    }
    Ok(())
}

/// sha256 over the files the model is built from (config, tokenizer, preprocessor config, weights and their
/// index), the resolved processor settings, the dtype and the prompt's default instruction.
fn fingerprint(dir: &Path, params: &Qwen2VlParams, dtype: DType) -> Result<String, EmbedError> {
    let mut files: Vec<String> = ["config.json", "tokenizer.json", PREPROCESSOR_CONFIG]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let entries = std::fs::read_dir(dir).map_err(|source| EmbedError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".safetensors") || name == "model.safetensors.index.json" {
            files.push(name);
        }
    }
    files.sort();
    let mut fp = Fingerprint::new();
    fp.part("family", b"gme-qwen2-vl");
    for name in &files {
        let path = dir.join(name);
        if !path.is_file() {
            continue;
        }
        let digest = sha256_file(&path).map_err(|source| EmbedError::Io {
            path: path.clone(),
            source,
        })?;
        fp.part(name, digest.as_bytes());
    }
    fp.part("image preprocessing", format!("{params:?}").as_bytes())
        .part("dtype", dtype.as_str().as_bytes())
        .part("default instruction", GME_DEFAULT_INSTRUCTION.as_bytes());
    Ok(fp.finish())
}

impl EmbedModel for GmeModel {
    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn supports(&self, _modality: Modality) -> bool {
        true
    }

    fn takes_instructions(&self) -> bool {
        true
    }

    /// Text tokens plus the image's merged vision tokens: what the prompt's length, and so the padding, depends on.
    fn length(&self, text: Option<&str>, image_size: Option<(u32, u32)>) -> usize {
        let text_tokens = text
            .and_then(|t| self.tokenizer.encode_text(t).ok())
            .map_or(0, |ids| ids.len());
        let image_tokens = image_size
            .and_then(|(w, h)| self.processor.num_vision_tokens(h, w).ok())
            .unwrap_or(0);
        text_tokens + image_tokens
    }

    fn prepare_image(&self, bytes: &[u8]) -> Result<PreparedImage, PreprocessError> {
        self.processor
            .preprocess_bytes(bytes)
            .map(PreparedImage::Qwen)
    }

    fn embed(&self, batch: &[Prepared<'_>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let builder = GmePromptBuilder::new(&self.tokenizer)?;
        let mut prompts = Vec::with_capacity(batch.len());
        for item in batch {
            let images = match item.image {
                Some(image) => vec![self.patches(image)?],
                None => Vec::new(),
            };
            let merge = self.model.vision_config().spatial_merge_size;
            let tokens = images.first().map(|i| i.grid.merged_tokens(merge));
            prompts.push((self.prompt(&builder, item, tokens)?, images));
        }
        let inputs: Vec<ScoreInput> = prompts
            .iter()
            .map(|(ids, images)| ScoreInput { ids, images })
            .collect();
        let forward = |inputs: &[ScoreInput]| {
            gme_embed(&self.model, inputs, self.pad_id).and_then(|t| t.to_vec2::<f32>())
        };
        let vectors = if self.device.is_cpu() {
            // Alone, an item's shapes (and so the CPU kernels' summation order) depend on it only: its vector is
            // the same bits in whatever batch it comes (docs/mining.md#batch-invariance). CUDA kernels are not
            // batch-invariant anyway, and there batching pays.
            inputs
                .chunks(1)
                .map(forward)
                .collect::<Result<Vec<_>, _>>()
                .map(|rows| rows.concat())
        } else {
            forward(&inputs)
        };
        vectors.map_err(|source| EmbedError::Compute {
            what: "gme forward",
            source,
        })
    }
}
