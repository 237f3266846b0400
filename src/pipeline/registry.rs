//! Which stage kinds a pipeline may name, and how each is built from its table.

use std::collections::BTreeMap;
use std::path::Path;

use serde::de::DeserializeOwned;

use super::{PipelineError, Stage, StageSpec};

/// Builds a stage from its table.
pub type StageFactory =
    Box<dyn Fn(&StageSpec) -> Result<Box<dyn Stage>, PipelineError> + Send + Sync>;

/// The stage kinds known to a runner.
#[derive(Default)]
pub struct StageRegistry {
    factories: BTreeMap<String, StageFactory>,
}

impl StageRegistry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a kind whose config is a serde struct; unknown keys in its table are errors, so typos are caught.
    pub fn register<C, S, F>(&mut self, kind: &str, build: F) -> &mut Self
    where
        C: DeserializeOwned,
        S: Stage + 'static,
        F: Fn(C) -> Result<S, PipelineError> + Send + Sync + 'static,
    {
        let factory = move |spec: &StageSpec| -> Result<Box<dyn Stage>, PipelineError> {
            let config = parse_table::<C>(spec)?;
            Ok(Box::new(build(config)?))
        };
        self.factories.insert(kind.to_string(), Box::new(factory));
        self
    }

    pub fn kinds(&self) -> Vec<&str> {
        self.factories.keys().map(String::as_str).collect()
    }

    pub fn build(
        &self,
        spec: &StageSpec,
        pipeline_file: &Path,
    ) -> Result<Box<dyn Stage>, PipelineError> {
        let factory = self
            .factories
            .get(&spec.kind)
            .ok_or_else(|| PipelineError::Config {
                path: pipeline_file.to_path_buf(),
                message: format!(
                    "[{}]: unknown stage kind `{}` (known: {})",
                    spec.name,
                    spec.kind,
                    self.kinds().join(", ")
                ),
            })?;
        factory(spec).map_err(|e| match e {
            PipelineError::Config { message, .. } => PipelineError::Config {
                path: pipeline_file.to_path_buf(),
                message,
            },
            other => other,
        })
    }
}

fn parse_table<C: DeserializeOwned>(spec: &StageSpec) -> Result<C, PipelineError> {
    toml::Value::Table(spec.table.clone())
        .try_into()
        .map_err(|e: toml::de::Error| PipelineError::Config {
            path: Default::default(),
            message: format!("[{}]: {}", spec.name, e.message()),
        })
}
