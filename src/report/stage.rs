//! The `report` stage: a pipeline's last step, writing `report.md`, `report.html` and `plots/` from the stages
//! it names (eval, mine and train stages; see [`super::collect`]).
//!
//! The stages are named explicitly rather than discovered, so that each is a declared input: the report is
//! rewritten exactly when one of them changed. The summary table (one row per reranker) is also printed, so that a
//! pipeline comparing several rerankers (pipelines/probe.toml) ends with its comparison on the terminal. In a
//! pipeline run over several seeds the stage reads every seed's run of the per-seed stages it names, writes
//! `seeds.json` and prints the summary over seeds last ([`super::seeds`]).

use serde::{Deserialize, Serialize};

use super::seeds::names_replicas;
use super::{write_report, ReportSettings};
use crate::eval::DEFAULT_PERMUTATIONS;
use crate::pipeline::{Input, Output, PipelineError, SeedRuns, Stage, StageContext, StageError};
use crate::progress;
use crate::schema::outputs;

/// The `[report]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportConfig {
    /// The stages to report on, in report order.
    pub stages: Vec<String>,
    /// The report's title.
    #[serde(default = "default_title")]
    pub title: String,
    /// Permutations of the paired tests between rerankers.
    #[serde(default = "default_permutations")]
    pub permutations: usize,
}

fn default_title() -> String {
    "umrank report".to_owned()
}

fn default_permutations() -> usize {
    DEFAULT_PERMUTATIONS
}

/// The report stage; see the module docs.
pub struct ReportStage {
    config: ReportConfig,
    /// The stage runs it reads, in report order: `config.stages`, each per-seed stage followed by its other seeds'
    /// runs when the pipeline runs several.
    reads: Vec<String>,
}

impl ReportStage {
    pub fn new(config: ReportConfig) -> Result<Self, PipelineError> {
        let bad = |message: &str| PipelineError::Config {
            path: Default::default(),
            message: format!("[report]: {message}"),
        };
        if config.stages.is_empty() {
            return Err(bad(
                "`stages` is empty: name the eval, mine and train stages to report on",
            ));
        }
        if config.permutations == 0 {
            return Err(bad("`permutations` must be at least 1"));
        }
        let reads = config.stages.clone();
        Ok(Self { config, reads })
    }

    fn reads_seeds(&self) -> bool {
        names_replicas(self.reads.iter().map(String::as_str))
    }
}

impl Stage for ReportStage {
    fn name(&self) -> &'static str {
        "report"
    }

    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(&self.config)
    }

    fn inputs(&self) -> Vec<Input> {
        self.reads
            .iter()
            .map(|stage| Input::Stage(stage.clone()))
            .collect()
    }

    fn outputs(&self) -> Vec<Output> {
        let mut written = vec![
            Output::tree(outputs::report::REPORT_MD),
            Output::tree(outputs::report::REPORT_HTML),
            Output::tree(outputs::report::PLOTS),
        ];
        if self.reads_seeds() {
            written.push(Output::tree(outputs::report::SEEDS_JSON));
        }
        written
    }

    fn over_seeds(&self, runs: &SeedRuns) -> Option<Box<dyn Stage>> {
        let reads = self
            .config
            .stages
            .iter()
            .flat_map(|stage| {
                runs.get(stage)
                    .cloned()
                    .unwrap_or_else(|| vec![stage.clone()])
            })
            .collect();
        Some(Box::new(Self {
            config: self.config.clone(),
            reads,
        }))
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let stages = self
            .reads
            .iter()
            .map(|stage| Ok((stage.clone(), ctx.upstream_dir(stage)?.to_path_buf())))
            .collect::<Result<Vec<_>, PipelineError>>()?;
        let settings = ReportSettings {
            title: self.config.title.clone(),
            permutations: self.config.permutations,
            seed: ctx.seed(),
        };
        let files = write_report(&stages, &settings, ctx.dir())?;
        tracing::info!(
            "{}: wrote {} and {} with {} charts",
            ctx.name(),
            files.markdown.display(),
            files.html.display(),
            files.plots.len()
        );
        if let Some(summary) = &files.summary {
            let heading = format!(
                "{}: {} (macro averages over tasks)",
                ctx.name(),
                self.config.title
            );
            progress::multi().suspend(|| println!("{heading}\n{summary}"));
        }
        if let Some((_, over_seeds)) = &files.over_seeds {
            let heading = format!(
                "{}: {} over seeds (macro averages over tasks; Δ and p: all queries, pooled over seeds)",
                ctx.name(),
                self.config.title
            );
            progress::multi().suspend(|| println!("{heading}\n{over_seeds}"));
        }
        Ok(())
    }
}
