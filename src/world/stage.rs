//! The world as a pipeline stage: `[world]` in a pipeline file, or `umrank world` on its own.

use serde::{Deserialize, Serialize};

use super::{generate, WorldConfig, WorldSize};
use crate::pipeline::{Input, Output, PipelineError, Stage, StageContext, StageError};
use crate::schema::outputs;

/// The `[world]` table. The seed is the pipeline's.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorldStageConfig {
    /// `small` (tests; a few hundred images) or `full` (the demo).
    #[serde(default = "default_size")]
    pub size: WorldSize,
    /// Side of every image in pixels (28..=1024; multiples of 28 give whole vision patches).
    #[serde(default = "default_side")]
    pub image_side: u32,
}

fn default_size() -> WorldSize {
    WorldSize::Full
}

fn default_side() -> u32 {
    WorldConfig::default().image_side
}

/// Generates the demo world into `<stage>/mbeir`.
pub struct WorldStage {
    config: WorldStageConfig,
}

impl WorldStage {
    pub fn new(config: WorldStageConfig) -> Result<Self, PipelineError> {
        WorldConfig {
            seed: 0,
            size: config.size,
            image_side: config.image_side,
        }
        .validate()
        .map_err(|e| PipelineError::Config {
            path: Default::default(),
            message: format!("[world]: {e}"),
        })?;
        Ok(Self { config })
    }
}

impl Stage for WorldStage {
    fn name(&self) -> &'static str {
        "world"
    }

    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(&self.config)
    }

    fn inputs(&self) -> Vec<Input> {
        Vec::new()
    }

    fn outputs(&self) -> Vec<Output> {
        vec![Output::tree(outputs::world::MBEIR)]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let config = WorldConfig {
            seed: ctx.seed(),
            size: self.config.size,
            image_side: self.config.image_side,
        };
        let summary = generate(&config, &ctx.output_path(outputs::world::MBEIR))?;
        let queries: usize = summary
            .tasks
            .iter()
            .map(|t| t.queries.train + t.queries.val + t.queries.test)
            .sum();
        let pool: usize = summary.tasks.iter().map(|t| t.pool).sum();
        ctx.add_records((queries + pool) as u64);
        tracing::info!(
            "world: {} tasks, {queries} queries, {pool} candidates, {} images",
            summary.tasks.len(),
            summary.images
        );
        Ok(())
    }
}
