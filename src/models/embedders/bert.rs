//! BERT-family sentence encoders (all-MiniLM-L6-v2 and the like) as sentence-transformers runs them: the
//! transformer's token states, pooled over the unpadded tokens, L2-normalised.
//!
//! The directory is sentence-transformers' layout: config.json, model.safetensors and tokenizer.json of the
//! transformer, modules.json naming the pipeline, `<pooling module>/config.json` for the pooling mode and
//! sentence_bert_config.json for the maximum length. Without modules.json the directory is a plain transformers
//! checkpoint and gets mean pooling, as sentence-transformers gives it.

use std::path::Path;

use candle_core::{DType, IndexOp, Tensor, D};
use candle_transformers::models::bert::{BertModel, Config};
use image::RgbImage;
use serde::{Deserialize, Serialize};

use super::checkpoint::ModelDir;
use super::error::{compute, EmbedderError};
use super::text::{Padding, TextEncoder, TextSettings, TokenBatch};
use super::{l2_normalised_rows, Embedder, EmbedderOptions, Modality, CONFIG_FILE};

const WEIGHTS_FILE: &str = "model.safetensors";
const TOKENIZER_FILE: &str = "tokenizer.json";
const MODULES_FILE: &str = "modules.json";
const ST_CONFIG_FILE: &str = "sentence_bert_config.json";

/// How token states become one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Pooling {
    /// The first token's state.
    Cls,
    /// The mean over unpadded tokens. sentence-transformers' `mean_sqrt_len_tokens` differs from it by a scale
    /// factor only, which L2 normalisation removes, so it maps here too.
    Mean,
    /// The per-channel maximum over unpadded tokens.
    Max,
}

impl Pooling {
    /// `hidden` is `(batch, len, dim)`, `mask` `(batch, len)` with 1 on real tokens.
    pub fn pool(&self, hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let hidden = hidden.to_dtype(DType::F32)?;
        let mask = mask.to_dtype(DType::F32)?.unsqueeze(D::Minus1)?;
        match self {
            Self::Cls => hidden.i((.., 0)),
            Self::Mean => {
                let sum = hidden.broadcast_mul(&mask)?.sum(1)?;
                let count = mask.sum(1)?.maximum(1e-9)?;
                sum.broadcast_div(&count)
            }
            Self::Max => {
                // Padding positions sit at -1e9, as sentence-transformers puts them, so they never win.
                let penalty = ((mask - 1.)? * 1e9)?;
                hidden.broadcast_add(&penalty)?.max(1)
            }
        }
    }
}

/// The flags of sentence-transformers' Pooling config.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct PoolingConfig {
    pooling_mode_cls_token: bool,
    pooling_mode_mean_tokens: bool,
    pooling_mode_max_tokens: bool,
    pooling_mode_mean_sqrt_len_tokens: bool,
    pooling_mode_weightedmean_tokens: bool,
    pooling_mode_lasttoken: bool,
}

#[derive(Debug, Deserialize)]
struct StModule {
    path: String,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Debug, Deserialize)]
struct StConfig {
    max_seq_length: Option<usize>,
}

#[derive(Serialize)]
struct Settings<'a> {
    text: &'a TextSettings,
    pooling: Pooling,
    dtype: &'static str,
}

/// A BERT-family sentence encoder; text only.
pub struct BertEmbedder {
    model: BertModel,
    text: TextEncoder,
    pooling: Pooling,
    dim: usize,
    options: EmbedderOptions,
    fingerprint: String,
}

impl BertEmbedder {
    pub fn load(dir: &Path, options: &EmbedderOptions) -> Result<Self, EmbedderError> {
        let mut files = ModelDir::new(dir);
        let config: Config = files.json(CONFIG_FILE)?;
        let pooling = read_pooling(&mut files)?;
        let max_len = files
            .optional_json::<StConfig>(ST_CONFIG_FILE)?
            .and_then(|st| st.max_seq_length)
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);
        let tokenizer = files.tokenizer(TOKENIZER_FILE)?;
        let text = TextEncoder::new(
            tokenizer,
            &files.path(TOKENIZER_FILE),
            TextSettings {
                max_len,
                pad_id: config.pad_token_id as u32,
                padding: Padding::Bucketed,
            },
        )?;
        let vb = files.weights(WEIGHTS_FILE, options.dtype, &options.device)?;
        let model = BertModel::load(vb, &config).map_err(files.weights_error(WEIGHTS_FILE))?;
        let fingerprint = files.fingerprint(
            "bert",
            &Settings {
                text: text.settings(),
                pooling,
                dtype: options.dtype.as_str(),
            },
        );
        Ok(Self {
            model,
            text,
            pooling,
            dim: config.hidden_size,
            options: options.clone(),
            fingerprint,
        })
    }

    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Embeds texts of one padded length: BERT's matmuls have one row per token, so a text's bits do not depend
    /// on its batch mates (docs/mining.md#batch-invariance).
    fn embed_batch(&self, batch: &TokenBatch) -> Result<Vec<Vec<f32>>, EmbedderError> {
        let forward = || {
            let token_type_ids = batch.input_ids.zeros_like()?;
            let hidden = self.model.forward(
                &batch.input_ids,
                &token_type_ids,
                Some(&batch.attention_mask),
            )?;
            let pooled = self.pooling.pool(&hidden, &batch.attention_mask)?;
            l2_normalised_rows(&pooled)
        };
        forward().map_err(compute("bert text forward"))
    }
}

impl Embedder for BertEmbedder {
    fn family(&self) -> &'static str {
        "bert"
    }

    fn dim(&self) -> usize {
        self.dim
    }

    fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn supports(&self, modality: Modality) -> bool {
        modality == Modality::Text
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedderError> {
        self.text.embed_bucketed(
            texts,
            self.options.batch_size,
            &self.options.device,
            |batch| self.embed_batch(batch),
        )
    }

    fn embed_images(&self, _images: &[RgbImage]) -> Result<Vec<Vec<f32>>, EmbedderError> {
        Err(EmbedderError::Unsupported {
            family: "bert",
            modality: Modality::Image,
        })
    }
}

/// The pooling mode from modules.json and the Pooling module's config; mean when there is no modules.json.
fn read_pooling(files: &mut ModelDir) -> Result<Pooling, EmbedderError> {
    let Some(modules) = files.optional_json::<Vec<StModule>>(MODULES_FILE)? else {
        return Ok(Pooling::Mean);
    };
    let mut pooling = None;
    for module in &modules {
        let kind = module.kind.rsplit('.').next().unwrap_or_default();
        match kind {
            "Transformer" | "Normalize" => {}
            "Pooling" => {
                let name = format!("{}/config.json", module.path);
                let config: PoolingConfig = files.json(&name)?;
                pooling = Some(pooling_mode(&config).ok_or_else(|| {
                    files.config_error(
                        &name,
                        "pooling_mode_*",
                        "exactly one of cls_token, mean_tokens, max_tokens, mean_sqrt_len_tokens must be true"
                            .into(),
                    )
                })?);
            }
            _ => {
                return Err(EmbedderError::UnsupportedModule {
                    path: files.path(MODULES_FILE),
                    module: module.kind.clone(),
                })
            }
        }
    }
    pooling.ok_or_else(|| files.config_error(MODULES_FILE, "type", "no Pooling module".into()))
}

fn pooling_mode(config: &PoolingConfig) -> Option<Pooling> {
    let modes = [
        (config.pooling_mode_cls_token, Some(Pooling::Cls)),
        (config.pooling_mode_mean_tokens, Some(Pooling::Mean)),
        (config.pooling_mode_max_tokens, Some(Pooling::Max)),
        (
            config.pooling_mode_mean_sqrt_len_tokens,
            Some(Pooling::Mean),
        ),
        (config.pooling_mode_weightedmean_tokens, None),
        (config.pooling_mode_lasttoken, None),
    ];
    let mut on = modes.iter().filter(|(flag, _)| *flag);
    match (on.next(), on.next()) {
        (Some((_, mode)), None) => *mode,
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn sample() -> (Tensor, Tensor) {
        // Two texts of three positions, two channels; the first has two real tokens, the second one.
        let hidden = Tensor::new(
            &[
                [[1f32, -2.], [3., 4.], [100., 100.]],
                [[-5., 6.], [100., 100.], [100., 100.]],
            ],
            &Device::Cpu,
        )
        .unwrap();
        let mask = Tensor::new(&[[1u32, 1, 0], [1, 0, 0]], &Device::Cpu).unwrap();
        (hidden, mask)
    }

    #[test]
    fn pooling_ignores_padding() {
        let (hidden, mask) = sample();
        let pool = |p: Pooling| p.pool(&hidden, &mask).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(pool(Pooling::Mean), vec![vec![2., 1.], vec![-5., 6.]]);
        assert_eq!(pool(Pooling::Max), vec![vec![3., 4.], vec![-5., 6.]]);
        assert_eq!(pool(Pooling::Cls), vec![vec![1., -2.], vec![-5., 6.]]);
    }

    #[test]
    fn pooling_mode_needs_exactly_one_supported_flag() {
        let mean = PoolingConfig {
            pooling_mode_mean_tokens: true,
            ..Default::default()
        };
        assert_eq!(pooling_mode(&mean), Some(Pooling::Mean));
        let both = PoolingConfig {
            pooling_mode_cls_token: true,
            ..mean
        };
        assert_eq!(pooling_mode(&both), None);
        let last = PoolingConfig {
            pooling_mode_lasttoken: true,
            ..Default::default()
        };
        assert_eq!(pooling_mode(&last), None);
        assert_eq!(pooling_mode(&PoolingConfig::default()), None);
    }
}
