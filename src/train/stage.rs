//! The `train` stage: the shards stage's groups and the ingest stage's corpus and images in; the trained adapter
//! (or model), the per-step log and checkpoints out.
//!
//! Outputs are trees: `adapter/` (PEFT) or `model/` (full fine-tuning), `train_log.jsonl` and `plots/` (the
//! loss and weight charts). `checkpoints/` is working state, not an output: the runner clears outputs before a
//! stage runs, and checkpoints must survive a crash so that the rerun continues from them (with `resume`, the
//! default). Groups that cannot be trained on
//! (broken group structure, too few negatives, a document that cannot fit `max_len`, a missing image) are
//! rejects.

use std::path::{Path, PathBuf};

use super::config::{DataFormat, ModelSource, TrainConfig};
use super::trainer::{output_dir, prepare, train_prepared, RunSettings, TrainInputs};

use crate::dataset::Dataset;

use crate::pipeline::{Input, Output, PipelineError, Stage, StageContext, StageError};
use crate::plan::{PlanContext, PlanError, Verdict};
use crate::schema::outputs;

/// Trains a reranker on the groups of the shards stage.
pub struct TrainStage {
    config: TrainConfig,
}

impl TrainStage {
    pub fn new(config: TrainConfig) -> Result<Self, PipelineError> {
        config.validate().map_err(|e| PipelineError::Config {
            path: Default::default(),
            message: e.to_string(),
        })?;
        Ok(Self { config })
    }

    /// The model files the run depends on, outside the pipeline; the warm-start adapter among them, so that a
    /// changed adapter changes the fingerprint and reruns the stage.
    fn model_files(&self) -> Vec<PathBuf> {
        let mut files = match self.config.model_source() {
            Ok(ModelSource::Pretrained(dir)) => vec![dir],
            Ok(ModelSource::Tiny { tokenizer, .. }) => vec![tokenizer],
            Ok(ModelSource::Config { config, tokenizer }) => vec![config, tokenizer],
            Err(_) => Vec::new(),
        };
        files.extend(self.config.init_adapter.clone());
        files
    }

    fn upstream(&self) -> Vec<String> {
        let mut stages = vec![self.config.shards.clone()];
        if self.config.ingest != self.config.shards {
            stages.push(self.config.ingest.clone());
        }
        stages
    }
}

impl Stage for TrainStage {
    fn memory_plan(&self, ctx: &PlanContext) -> Option<Result<Verdict, PlanError>> {
        Some(crate::plan::train::verdict(&self.config, ctx))
    }

    fn name(&self) -> &'static str {
        "train"
    }

    /// The config without `resume`, which decides how to get to the outputs, not what they are.
    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        let mut value = serde_json::to_value(&self.config)?;
        if let Some(table) = value.as_object_mut() {
            table.remove("resume");
        }
        Ok(value)
    }

    fn inputs(&self) -> Vec<Input> {
        let mut inputs: Vec<Input> = self.upstream().into_iter().map(Input::Stage).collect();
        let files = self.model_files();
        if !files.is_empty() {
            inputs.push(Input::Files(files));
        }
        inputs
    }

    fn outputs(&self) -> Vec<Output> {
        let model = output_dir(&self.config, Path::new(""));
        vec![
            Output::tree(&model.to_string_lossy()),
            Output::tree(outputs::train::TRAIN_LOG),
            Output::tree(outputs::train::PLOTS),
        ]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let shards = ctx.upstream_dir(&self.config.shards)?.to_path_buf();
        let ingest = ctx.upstream_dir(&self.config.ingest)?.to_path_buf();
        let images = ingest.join(outputs::ingest::IMAGES);
        let inputs = TrainInputs {
            groups: Dataset::open(&shards.join(self.config.data.dir_name()))?,
            corpus: match self.config.data {
                DataFormat::Cl => Some(Dataset::open(&ingest.join(outputs::ingest::CORPUS))?),
                DataFormat::Sft => None,
            },
            images: if images.exists() {
                Some(Dataset::open(&images)?)
            } else {
                None
            },
        };
        let settings = RunSettings {
            seed: ctx.seed(),
            device: ctx.device().candle()?,
            out_dir: ctx.dir().to_path_buf(),
            run_key: ctx.fingerprint().to_string(),
            stop_after: None,
        };
        let prepared = prepare(&self.config, &inputs, settings.seed, &settings.device)?;
        ctx.add_records(prepared.records);
        for reject in &prepared.rejects {
            ctx.reject(reject.clone())?;
        }
        ctx.check_rejects()?;
        // Launched as rank 0 of several (`--data-parallel`): the other ranks train along.
        let (outcome, _) = match crate::distributed::process::installed() {
            Some(group) => {
                super::parallel::lead(group, &self.config, &inputs, prepared, &settings)?
            }
            None => train_prepared(&self.config, prepared, &settings)?,
        };
        if let Some(last) = outcome.log.last() {
            tracing::info!(
                "{} steps on {} groups of 1 + {} (resumed at step {}); last loss {:.4} (sft {:.4}, cl {:.4}); {} images cached",
                last.step,
                outcome.groups,
                outcome.negatives,
                outcome.resumed_from,
                last.loss,
                last.sft_loss,
                last.cl_loss,
                outcome.cached_images
            );
        }
        Ok(())
    }
}
