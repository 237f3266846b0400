//! The dual-encoder trainer as a pipeline stage: `[embedder]` in a pipeline file, or `umrank embedder`.

use std::fs;
use std::path::Path;

use candle_core::DType;

use super::checkpoint::{clip_config, preprocessor_config, ModelFiles};
use super::config::DualEncoderConfig;
use super::data::{PairSet, Pixels};
use super::error::DualEncoderError;
use super::fit::{fit, steps_per_epoch, EpochLog, Inputs};
use super::vocab::build_tokenizer;
use crate::media::preprocess::{ClipProcessor, PreprocessorConfig};
use crate::models::embedders::clip::{ClipConfig, ClipModel};
use crate::pipeline::{Input, Output, PipelineError, Stage, StageContext, StageError};
use crate::schema::outputs;

/// Trains a CLIP-architecture dual encoder from scratch on an ingest stage's pairs.
pub struct DualEncoderStage {
    config: DualEncoderConfig,
}

impl DualEncoderStage {
    pub fn new(config: DualEncoderConfig) -> Result<Self, PipelineError> {
        config.check().map_err(|e| PipelineError::Config {
            path: Default::default(),
            message: e.to_string(),
        })?;
        Ok(Self { config })
    }

    fn train(&self, ctx: &mut StageContext) -> Result<(), DualEncoderError> {
        let config = &self.config;
        let arch = &config.architecture;
        let ingest = ctx.upstream_dir(&config.from)?.to_path_buf();
        let mut pairs = PairSet::read(&ingest, &config.split, config.val_split.as_deref())?;
        let preprocessor = preprocessor_config(arch);
        let processor = PreprocessorConfig::from_json_str(&preprocessor.to_string())
            .and_then(|c| ClipProcessor::from_config(&c))?;
        let images = ingest.join(outputs::ingest::IMAGES);
        let pixels = Pixels::read(&images, &pairs.image_ids(), &processor)?;
        pairs.drop_unusable(&pixels, &images.display().to_string());
        ctx.add_records((pairs.train.len() + pairs.val.len() + pairs.rejects.len()) as u64);
        for reject in std::mem::take(&mut pairs.rejects) {
            ctx.reject(reject)?;
        }

        let texts = pairs
            .train
            .iter()
            .flat_map(|p| [&p.query.text, &p.doc.text])
            .filter_map(|t| t.as_deref());
        let (tokenizer_json, tokenizer) = build_tokenizer(texts)?;
        let model_config = clip_config(arch, tokenizer.get_vocab_size(true));
        let clip: ClipConfig =
            serde_json::from_value(model_config.clone()).map_err(|e| DualEncoderError::Config {
                field: "architecture",
                problem: e.to_string(),
            })?;
        let device = ctx
            .device()
            .candle()
            .map_err(DualEncoderError::compute("device"))?;
        let (model, varmap) = ClipModel::random(&clip, ctx.seed(), DType::F32, &device)
            .map_err(DualEncoderError::compute("model"))?;
        let inputs = Inputs::new(
            &pairs,
            &tokenizer,
            arch.max_text_tokens,
            &pixels,
            arch.image_size,
            &device,
        )?;
        tracing::info!(
            "{}: {} training pairs, {} held out, {} words",
            ctx.name(),
            pairs.train.len(),
            pairs.val.len(),
            tokenizer.get_vocab_size(true)
        );
        let total = steps_per_epoch(pairs.train.len(), config.batch_size) * config.epochs as u64;
        let bar = ctx.progress(total, "train");
        let report = fit(
            &model,
            &varmap,
            &inputs,
            &pairs,
            config,
            ctx.seed(),
            |_, loss| {
                bar.set_message(format!("{} loss {loss:.3}", ctx.name()));
                bar.inc(1);
            },
        )?;
        bar.finish_and_clear();
        write_log(
            &ctx.output_path(outputs::embedder::TRAIN_LOG),
            &report.epochs,
        )?;
        ModelFiles {
            config: &model_config,
            preprocessor: &preprocessor,
            tokenizer: &tokenizer_json,
            arch,
            weights: &varmap,
        }
        .write(&ctx.output_path(outputs::embedder::MODEL))?;
        if let Some(last) = report.epochs.last() {
            tracing::info!(
                "{}: {} steps, final loss {:.4}, held-out recall@1 {}",
                ctx.name(),
                report.steps,
                last.loss,
                last.val_recall_at_1
                    .map_or("-".to_string(), |r| format!("{r:.3}"))
            );
        }
        Ok(())
    }
}

fn write_log(path: &Path, epochs: &[EpochLog]) -> Result<(), DualEncoderError> {
    let mut text = String::new();
    for epoch in epochs {
        let line = serde_json::to_string(epoch).map_err(|e| DualEncoderError::Io {
            path: path.to_path_buf(),
            source: e.into(),
        })?;
        text.push_str(&line);
        text.push('\n');
    }
    let partial = path.with_extension("jsonl.partial");
    fs::write(&partial, text).map_err(DualEncoderError::io(&partial))?;
    fs::rename(&partial, path).map_err(DualEncoderError::io(path))
}

impl Stage for DualEncoderStage {
    fn name(&self) -> &'static str {
        "embedder"
    }

    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(&self.config)
    }

    fn inputs(&self) -> Vec<Input> {
        vec![Input::Stage(self.config.from.clone())]
    }

    fn outputs(&self) -> Vec<Output> {
        vec![
            Output::tree(outputs::embedder::MODEL),
            Output::tree(outputs::embedder::TRAIN_LOG),
        ]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        Ok(self.train(ctx)?)
    }
}
