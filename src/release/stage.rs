//! The `release` stage: `<stage>/model/` is the release of the train stage it names, verified before the stage
//! counts as done.
//!
//! ```toml
//! [release]
//! from = "train"              # the train stage (default "train")
//! eval_from = ["eval"]        # eval stages for the metrics table (default none)
//! merged = true               # also write merged weights (adapter releases)
//! base_model = "Qwen/Qwen2.5-VL-3B-Instruct"
//! license = "apache-2.0"
//!
//! [release.gate]              # optional: promote only a model better than the previous release
//! baseline = "runs/last/release"
//! metric = "ndcg@10"
//! min_delta = 0.0
//! max_p = 0.05
//! ```

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::build::{write_release, ReleaseSpec};
use super::gate::{judge, release_dir, write_verdict, GateConfig, GateRefused, GATE_JSON};
use super::verify::verify;
use crate::pipeline::{Input, Output, PipelineError, Stage, StageContext, StageError};
use crate::progress;
use crate::schema::outputs;

/// The `[release]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReleaseConfig {
    /// The train stage whose adapter (or fully fine-tuned model) is released.
    #[serde(default = "default_train")]
    pub from: String,
    /// Eval stages whose metrics.json go into the model card.
    #[serde(default)]
    pub eval_from: Vec<String>,
    /// The base model directory of an adapter, when the train stage's config does not name it.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// The base model's name in the card and adapter_config.json, e.g. a Hub id.
    #[serde(default)]
    pub base_model: Option<String>,
    /// License id for the card.
    #[serde(default)]
    pub license: Option<String>,
    /// Also write merged weights under `merged/` (adapter releases only).
    #[serde(default)]
    pub merged: bool,
    /// Load the written release back and score the check pair before finishing.
    #[serde(default = "default_verify")]
    pub verify: bool,
    /// The promotion gate against a previous release; see [`super::gate`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate: Option<GateConfig>,
}

fn default_train() -> String {
    "train".into()
}

fn default_verify() -> bool {
    true
}

impl Default for ReleaseConfig {
    fn default() -> Self {
        Self {
            from: default_train(),
            eval_from: Vec::new(),
            model: None,
            base_model: None,
            license: None,
            merged: false,
            verify: default_verify(),
            gate: None,
        }
    }
}

pub struct ReleaseStage {
    config: ReleaseConfig,
}

impl ReleaseStage {
    pub fn new(config: ReleaseConfig) -> Result<Self, PipelineError> {
        if config.eval_from.contains(&config.from) {
            return Err(PipelineError::Config {
                path: PathBuf::new(),
                message: format!(
                    "[release]: stage `{}` is named both as train and as eval",
                    config.from
                ),
            });
        }
        if let Some(gate) = &config.gate {
            let bad = |message: String| PipelineError::Config {
                path: PathBuf::new(),
                message: format!("[release.gate]: {message}"),
            };
            if let Some(problem) = gate.problem() {
                return Err(bad(problem));
            }
            match gate.eval.as_ref().or(config.eval_from.first()) {
                Some(eval) if config.eval_from.contains(eval) => {}
                Some(eval) => {
                    return Err(bad(format!(
                        "eval stage `{eval}` is not one of `eval_from` ({:?})",
                        config.eval_from
                    )))
                }
                None => {
                    return Err(bad(
                        "needs the new model's eval stage: name it in `eval_from`".into(),
                    ))
                }
            }
        }
        Ok(Self { config })
    }

    /// Runs the gate, if configured: writes its verdict, and returns the baseline release when it promotes.
    fn gate(
        &self,
        ctx: &StageContext,
        device: &candle_core::Device,
    ) -> Result<Option<PathBuf>, StageError> {
        let Some(gate) = &self.config.gate else {
            return Ok(None);
        };
        let eval = gate
            .eval
            .as_ref()
            .or(self.config.eval_from.first())
            .ok_or("[release.gate]: no eval stage")?;
        let eval_dir = ctx.upstream_dir(eval)?.to_path_buf();
        let verdict = judge(gate, &eval_dir, ctx.seed(), device)?;
        let path = ctx.output_path(GATE_JSON);
        write_verdict(&verdict, &path)?;
        let summary = verdict.summary();
        progress::multi().suspend(|| eprintln!("{summary}"));
        if !verdict.promoted {
            return Err(Box::new(GateRefused {
                verdict: Box::new(verdict),
                path,
            }));
        }
        Ok(Some(release_dir(&gate.baseline)))
    }
}

impl Stage for ReleaseStage {
    fn name(&self) -> &'static str {
        "release"
    }

    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(&self.config)
    }

    fn inputs(&self) -> Vec<Input> {
        std::iter::once(&self.config.from)
            .chain(&self.config.eval_from)
            .map(|stage| Input::Stage(stage.clone()))
            .chain(
                self.config
                    .gate
                    .iter()
                    .map(|gate| Input::Files(vec![gate.baseline.clone()])),
            )
            .collect()
    }

    fn outputs(&self) -> Vec<Output> {
        let mut outputs = vec![Output::tree(outputs::release::MODEL)];
        if self.config.gate.is_some() {
            outputs.push(Output::summary(GATE_JSON));
        }
        outputs
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let device = ctx.device().candle()?;
        let previous = self.gate(ctx, &device)?;
        let eval_dirs = self
            .config
            .eval_from
            .iter()
            .map(|stage| ctx.upstream_dir(stage).map(PathBuf::from))
            .collect::<Result<Vec<_>, _>>()?;
        let spec = ReleaseSpec {
            train_dir: ctx.upstream_dir(&self.config.from)?.to_path_buf(),
            eval_dirs,
            base: self.config.model.clone(),
            base_model_name: self.config.base_model.clone(),
            license: self.config.license.clone(),
            merged: self.config.merged,
            previous,
        };
        let out = ctx.output_path(outputs::release::MODEL);
        let manifest = write_release(&spec, &out, &device)?;
        if let Some(base) = &manifest.base_model {
            for file in &base.files {
                ctx.observe(&base.path.join(&file.path))?;
            }
        }
        ctx.add_records(1);
        if self.config.verify {
            let report = verify(&out, None, &device)?;
            tracing::info!(
                "release verified: {} files, check pair p_yes {:.6}",
                report.files,
                report.expected.p_yes
            );
        }
        Ok(())
    }
}
