//! The `[mine]` table.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::mine::{FilterConfig, SampleConfig, TopKConfig};
use crate::pipeline::PipelineError;

/// Which documents a query is searched against and draws random negatives from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    /// The documents of the query's own candidate pool (the `pool` column of the queries and the corpus: for
    /// M-BEIR the local pool of its dataset and task, or its slice of a global pool). `dataset`, the name this
    /// scope had before the `pool` column existed, is read as `pool`.
    #[default]
    #[serde(alias = "dataset")]
    #[value(alias = "dataset")]
    Pool,
    /// The whole corpus (M-BEIR's global pool).
    Corpus,
}

/// The mine stage's settings. Defaults follow the paper: candidates top-100 for evaluation, hard negatives from
/// the top-100, groups of 1 positive + 16 negatives, half hard, half random, relative margin 0.05.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MineConfig {
    /// The upstream ingest stage (queries, corpus, qrels) [default: `ingest`, unless `ingest_dir` is given].
    pub from: Option<String>,
    /// An ingest stage directory outside the pipeline, instead of `from`.
    pub ingest_dir: Option<PathBuf>,
    /// The upstream embed stage (its `doc_embeddings` and `query_embeddings` datasets) [default: `embed`, unless
    /// `embeddings_dir` is given].
    pub embeddings_from: Option<String>,
    /// An embed stage directory outside the pipeline, instead of `embeddings_from`.
    pub embeddings_dir: Option<PathBuf>,
    /// K of the `candidates` dataset: the first-stage list evaluation reranks.
    pub k: usize,
    /// How deep hard negatives are mined: the candidate list the filter and the sampler see.
    pub mining_k: usize,
    pub scope: Scope,
    /// Splits that get `candidates` rows [default: every split not in `negative_splits`].
    pub candidate_splits: Option<Vec<String>>,
    /// Splits that get `negatives` rows.
    pub negative_splits: Vec<String>,
    /// N of the 1 + N training groups: negatives per query, shared by the groups of its positives.
    pub negatives_per_group: usize,
    /// Hard : random = `hard_ratio : random_ratio`.
    pub hard_ratio: u32,
    pub random_ratio: u32,
    /// The positive-aware false-negative filter.
    pub filter: FilterConfig,
    /// Documents scored per pass (bounds the score memory: `query_block x chunk_docs` f32 per thread).
    pub chunk_docs: usize,
    /// Queries per parallel task.
    pub query_block: usize,
}

impl Default for MineConfig {
    fn default() -> Self {
        let sample = SampleConfig::default();
        let top_k = TopKConfig::default();
        Self {
            from: None,
            ingest_dir: None,
            embeddings_from: None,
            embeddings_dir: None,
            k: 100,
            mining_k: 100,
            scope: Scope::default(),
            candidate_splits: None,
            negative_splits: vec!["train".into()],
            negatives_per_group: sample.negatives_per_group,
            hard_ratio: sample.hard_ratio,
            random_ratio: sample.random_ratio,
            filter: FilterConfig::default(),
            chunk_docs: top_k.chunk_docs,
            query_block: top_k.query_block,
        }
    }
}

/// Where an input comes from: a stage of the pipeline, or a directory outside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Source {
    Stage(String),
    Dir(PathBuf),
}

impl MineConfig {
    /// Fills in the default upstream stages and checks every setting, so that a bad value fails before any work.
    pub(super) fn resolve(mut self) -> Result<Self, PipelineError> {
        let bad = |message: String| PipelineError::Config {
            path: Default::default(),
            message: format!("[mine]: {message}"),
        };
        for (stage, dir, default, names) in [
            (
                &mut self.from,
                &self.ingest_dir,
                "ingest",
                "`from` and `ingest_dir`",
            ),
            (
                &mut self.embeddings_from,
                &self.embeddings_dir,
                "embed",
                "`embeddings_from` and `embeddings_dir`",
            ),
        ] {
            match (&stage, dir) {
                (Some(_), Some(_)) => return Err(bad(format!("give one of {names}, not both"))),
                (None, None) => *stage = Some(default.to_string()),
                _ => {}
            }
        }
        for (field, value) in [("k", self.k), ("mining_k", self.mining_k)] {
            if value == 0 || u32::try_from(value).is_err() {
                return Err(bad(format!("{field} must be between 1 and {}", u32::MAX)));
            }
        }
        self.filter
            .validate()
            .and_then(|()| self.sample(0).validate())
            .and_then(|()| self.top_k(self.k).validate())
            .map_err(|e| bad(e.to_string()))?;
        Ok(self)
    }

    pub(super) fn ingest(&self) -> Source {
        source(&self.from, &self.ingest_dir)
    }

    pub(super) fn embeddings(&self) -> Source {
        source(&self.embeddings_from, &self.embeddings_dir)
    }

    /// Sampling settings with the pipeline seed.
    pub(super) fn sample(&self, seed: u64) -> SampleConfig {
        SampleConfig {
            negatives_per_group: self.negatives_per_group,
            hard_ratio: self.hard_ratio,
            random_ratio: self.random_ratio,
            seed,
        }
    }

    pub(super) fn top_k(&self, k: usize) -> TopKConfig {
        TopKConfig {
            k,
            chunk_docs: self.chunk_docs,
            query_block: self.query_block,
        }
    }

    pub(super) fn wants_negatives(&self, split: &str) -> bool {
        self.negative_splits.iter().any(|s| s == split)
    }

    pub(super) fn wants_candidates(&self, split: &str) -> bool {
        match &self.candidate_splits {
            Some(splits) => splits.iter().any(|s| s == split),
            None => !self.wants_negatives(split),
        }
    }
}

fn source(stage: &Option<String>, dir: &Option<PathBuf>) -> Source {
    match (dir, stage) {
        (Some(dir), _) => Source::Dir(dir.clone()),
        (None, stage) => Source::Stage(stage.clone().unwrap_or_default()),
    }
}
