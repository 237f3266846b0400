//! The `eval` stage: rerank each query's first-stage list with a reranker and compare the two rankings.
//!
//! Inputs: the ingest stage (queries with task and split, corpus, qrels, images), a stage with a `candidates`
//! dataset (the mine stage), and the reranker: a base model directory (or a train stage's fully fine-tuned
//! `model/`), optionally with a PEFT adapter (from a train stage's `adapter/`, or a directory), else zero-shot. Each (query, document) pair of the top-K is scored
//! ([`crate::models::reranker`]) with `p_yes` (SFT) or `z_yes` (CL) as the reranked score.
//!
//! Outputs: the `run` dataset (both runs), `first_stage.trec` and `reranked.trec`, the `metrics` dataset and
//! `metrics.json` ([`EvalSummary`]: every metric per query, per task and averaged, for both runs, with a paired
//! randomisation test of reranked against first stage per metric), and a table on stdout. Metrics follow
//! docs/evaluation.md#which-queries-count: every query of the evaluated splits with a relevant document counts, a query
//! without a list scores 0.
//!
//! Scale-out: `--shard I/N` reranks the queries whose qid hashes to slice I and writes part I of `run` and
//! `metrics` (its queries' rows) and a header with its settings and pair counts; the TREC files and `metrics.json`
//! are over every query, so no shard writes them. The unsharded run that follows the array finds the stage
//! complete and merges the parts into exactly the files one run writes ([`super::parts`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::inputs::{self, CandidateList, DocInfo, QueryInfo};
use super::parts::{self, Header};
use super::rows::{write_query_metrics, write_runs};
use super::stage_error::EvalStageError;
use super::summary::Comparison;
use super::{evaluate_queries, Metric, PerQuery, Run, DEFAULT_PERMUTATIONS};
use crate::dataset::Dataset;
use crate::media::image_table::ImageTable;
use crate::media::preprocess::{ImageBackend, ImageInput};
use crate::models::qwen2_vl::{ImagePatches, PairScore};
use crate::models::reranker::{PairSide, PreparedPair, Reranker};
use crate::models::text::prompt_format::{AnswerTokens, PromptFormat, PromptSettings};
use crate::pipeline::{
    Input, Manifest, Output, PipelineError, Reject, Stage, StageContext, StageError,
};
use crate::plan::{PlanContext, PlanError, Verdict};
use crate::progress;
use crate::schema::outputs;
use crate::shard::Shard;
use indicatif::ProgressBar;

/// Run name (TREC tag) of the retriever's ranking.
pub const FIRST_STAGE: &str = "first_stage";
/// Run name (TREC tag) of the reranker's ranking.
pub const RERANKED: &str = "reranked";

/// Which reranker output ranks the documents.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ScoreField {
    /// sigmoid(z_yes - z_no): the SFT score.
    #[default]
    PYes,
    /// The "yes" logit: the CL score.
    ZYes,
}

impl ScoreField {
    /// The name pipeline files use.
    pub fn name(self) -> &'static str {
        match self {
            ScoreField::PYes => "p_yes",
            ScoreField::ZYes => "z_yes",
        }
    }

    fn pick(self, score: &PairScore) -> f64 {
        f64::from(match self {
            ScoreField::PYes => score.p_yes,
            ScoreField::ZYes => score.z_yes,
        })
    }

    /// The score as a logit: `z_yes - z_no` for `p_yes` (taken from the logits, not from a saturated sigmoid),
    /// `z_yes` itself.
    fn logit(self, score: &PairScore) -> f64 {
        match self {
            ScoreField::PYes => f64::from(score.z_yes) - f64::from(score.z_no),
            ScoreField::ZYes => f64::from(score.z_yes),
        }
    }
}

/// The reranker's score interpolated with the first stage's (docs/evaluation.md#interpolation): a pair is ranked
/// by `weight * scale * retriever score + (1 - weight) * reranker logit`. A reranker trained on a few hundred
/// queries and a retriever trained on a billion pairs make different mistakes, so the mix can rank better than
/// either; `scale` turns the retriever's cosine into the logit it was trained to be.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Interpolation {
    /// The first stage's share, from 0 (the reranker alone) to 1 (the first stage's order).
    pub weight: f64,
    /// What a retriever score is multiplied by [default: 20, the scale of sentence-transformers'
    /// MultipleNegativesRankingLoss, with which all-MiniLM-L6-v2 and most cosine retrievers were trained].
    #[serde(default = "default_interpolation_scale")]
    pub scale: f64,
}

impl Interpolation {
    /// The ranking score of a pair from its retriever score and its reranker logit.
    pub fn score(&self, retriever: f32, reranker_logit: f64) -> f64 {
        self.weight * self.scale * f64::from(retriever) + (1.0 - self.weight) * reranker_logit
    }

    fn check(&self) -> Result<(), String> {
        if !(0.0..=1.0).contains(&self.weight) {
            return Err(format!(
                "`interpolate.weight` is {}; it must be from 0 to 1",
                self.weight
            ));
        }
        if !(self.scale.is_finite() && self.scale > 0.0) {
            return Err(format!(
                "`interpolate.scale` is {}; it must be a positive number",
                self.scale
            ));
        }
        Ok(())
    }
}

fn default_interpolation_scale() -> f64 {
    20.0
}

/// The `[eval]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// The upstream ingest stage [default: `ingest`, unless `ingest_dir` is given].
    #[serde(default)]
    pub from: Option<String>,
    /// An ingest stage directory outside the pipeline, instead of `from`.
    #[serde(default)]
    pub ingest_dir: Option<PathBuf>,
    /// The upstream stage with the `candidates` dataset [default: `mine`, unless `candidates_dir` is given].
    #[serde(default)]
    pub candidates_from: Option<String>,
    /// A directory holding a `candidates` dataset, instead of `candidates_from`.
    #[serde(default)]
    pub candidates_dir: Option<PathBuf>,
    /// The base model: a Qwen2-VL / Qwen2.5-VL directory, a text decoder directory, or a GGUF file.
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// A train stage that fine-tuned a whole model: its `model/` directory, instead of `model`.
    #[serde(default)]
    pub model_from: Option<String>,
    /// A train stage whose `adapter/` (PEFT) is applied to the model.
    #[serde(default)]
    pub adapter_from: Option<String>,
    /// A PEFT adapter directory, instead of `adapter_from`. Neither: the base model, zero-shot.
    #[serde(default)]
    pub adapter: Option<PathBuf>,
    /// `p_yes` (SFT) or `z_yes` (CL).
    #[serde(default)]
    pub score: ScoreField,
    /// Rank by the reranker's score interpolated with the first stage's (`{ weight = 0.7 }`) [default: the
    /// reranker's score alone].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpolate: Option<Interpolation>,
    /// How much of each first-stage list is reranked.
    #[serde(default = "default_k")]
    pub k: usize,
    /// The query splits evaluated [default: every split with a candidates list].
    #[serde(default)]
    pub splits: Option<Vec<String>>,
    /// Pairs per forward pass.
    #[serde(default = "default_batch")]
    pub batch: usize,
    /// Longest prompt in tokens.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// The prompt format [default: the one the adapter or model was trained with, else `paper`]; a format other
    /// than the recorded one is an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<PromptFormat>,
    /// The judgement words `[yes, no]` [default: as recorded, else `["yes", "no"]`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer_tokens: Option<AnswerTokens>,
    /// Permutations of each randomisation test.
    #[serde(default = "default_permutations")]
    pub permutations: usize,
    /// Bounds on an image's pixels before the reranker patches it, in place of the model directory's
    /// preprocessor_config.json (fewer pixels, fewer image tokens) [default: the model's].
    #[serde(default)]
    pub min_pixels: Option<u64>,
    /// The upper bound; see `min_pixels`.
    #[serde(default)]
    pub max_pixels: Option<u64>,
    /// transformers' image processor whose resizing to reproduce, `torchvision` or `pil`, in place of the one the
    /// model directory's preprocessor_config.json names [default: the model's; a release names the one it was
    /// trained with].
    #[serde(default)]
    pub image_processor: Option<ImageBackend>,
}

impl EvalConfig {
    /// What a pair is ranked by: the reranker's score, or its logit interpolated with the retriever's score.
    fn ranking_score(&self, retriever: f32, score: &PairScore) -> f64 {
        match &self.interpolate {
            Some(interpolation) => interpolation.score(retriever, self.score.logit(score)),
            None => self.score.pick(score),
        }
    }

    /// The prompt settings asked for, if `prompt` or `answer_tokens` is given.
    pub fn prompt_settings(&self) -> Option<PromptSettings> {
        if self.prompt.is_none() && self.answer_tokens.is_none() {
            return None;
        }
        Some(PromptSettings {
            format: self.prompt.unwrap_or_default(),
            answer_tokens: self.answer_tokens.clone().unwrap_or_default(),
        })
    }
}

fn default_k() -> usize {
    100
}

fn default_batch() -> usize {
    8
}

fn default_max_len() -> usize {
    3200
}

fn default_permutations() -> usize {
    DEFAULT_PERMUTATIONS
}

impl EvalConfig {
    /// A config for the model directory `model`, everything else default.
    pub fn new(model: PathBuf) -> Self {
        Self {
            from: None,
            ingest_dir: None,
            candidates_from: None,
            candidates_dir: None,
            model: Some(model),
            model_from: None,
            adapter_from: None,
            adapter: None,
            score: ScoreField::default(),
            interpolate: None,
            k: default_k(),
            splits: None,
            batch: default_batch(),
            max_len: default_max_len(),
            prompt: None,
            answer_tokens: None,
            permutations: default_permutations(),
            min_pixels: None,
            max_pixels: None,
            image_processor: None,
        }
    }
}

/// `metrics.json`: the comparison with what produced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    /// The model scored: relative to the run directory when a stage of the run wrote it, else as configured.
    pub model: PathBuf,
    /// The adapter applied, named the same way.
    pub adapter: Option<PathBuf>,
    pub score: ScoreField,
    /// The interpolation with the first stage's scores, if the reranked run was ranked by one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpolate: Option<Interpolation>,
    pub k: usize,
    pub splits: Vec<String>,
    /// The retriever fingerprint(s) of the first-stage lists.
    pub retrievers: Vec<String>,
    /// Pairs scored, and pairs rejected (left out of the reranked run; see rejects.parquet).
    pub scored_pairs: usize,
    pub rejected_pairs: usize,
    #[serde(flatten)]
    pub comparison: Comparison,
}

impl EvalSummary {
    /// Reads a stage's `metrics.json`.
    pub fn read(path: &Path) -> Result<Self, EvalStageError> {
        let text = fs::read_to_string(path).map_err(EvalStageError::io(path))?;
        serde_json::from_str(&text).map_err(|source| EvalStageError::Json {
            path: path.to_owned(),
            source,
        })
    }

    /// The summary of the eval stage in `dir`: its `metrics.json`, or, when a job array has completed the stage
    /// and no plain run has merged its shards yet (`--from` the stage after it), the merge of the shards,
    /// computed and not written (a reader does not write into another stage's directory). `None` when `dir`
    /// holds neither.
    pub fn of_stage(dir: &Path) -> Result<Option<Self>, EvalStageError> {
        let path = dir.join(outputs::eval::METRICS_JSON);
        if path.is_file() {
            return Self::read(&path).map(Some);
        }
        let Ok(parts) = Manifest::read_complete(dir) else {
            return Ok(None);
        };
        match parts.first() {
            Some(part) if part.kind == "eval" && !part.shard.is_all() => {
                let (summary, _, _) = parts::merge(dir, part.shard.count)?;
                Ok(Some(summary))
            }
            _ => Ok(None),
        }
    }
}

/// The eval stage; see the module docs.
pub struct EvalStage {
    config: EvalConfig,
}

impl EvalStage {
    /// Fills in the default upstream stages and checks every setting, so that a bad value fails before any work.
    pub fn new(mut config: EvalConfig) -> Result<Self, PipelineError> {
        let bad = |message: String| PipelineError::Config {
            path: Default::default(),
            message: format!("[eval]: {message}"),
        };
        for (stage, dir, default, names) in [
            (
                &mut config.from,
                &config.ingest_dir,
                "ingest",
                "`from` and `ingest_dir`",
            ),
            (
                &mut config.candidates_from,
                &config.candidates_dir,
                "mine",
                "`candidates_from` and `candidates_dir`",
            ),
        ] {
            match (&stage, dir) {
                (Some(_), Some(_)) => return Err(bad(format!("give one of {names}, not both"))),
                (None, None) => *stage = Some(default.to_owned()),
                _ => {}
            }
        }
        if config.adapter_from.is_some() && config.adapter.is_some() {
            return Err(bad(
                "give one of `adapter_from` and `adapter`, not both".into()
            ));
        }
        match (&config.model, &config.model_from) {
            (Some(_), Some(_)) => {
                return Err(bad("give one of `model` and `model_from`, not both".into()))
            }
            (None, None) => {
                return Err(bad(
                    "give `model` (a model directory) or `model_from` (a train stage)".into(),
                ))
            }
            (Some(model), None) if model.as_os_str().is_empty() => {
                return Err(bad("`model` is empty".into()))
            }
            _ => {}
        }
        for (field, value) in [
            ("k", config.k),
            ("batch", config.batch),
            ("max_len", config.max_len),
            ("permutations", config.permutations),
        ] {
            if value == 0 {
                return Err(bad(format!("`{field}` must be at least 1")));
            }
        }
        if config.splits.as_ref().is_some_and(Vec::is_empty) {
            return Err(bad(
                "`splits` is empty; leave it out to evaluate every split".into(),
            ));
        }
        if let Some(interpolation) = &config.interpolate {
            interpolation.check().map_err(bad)?;
        }
        Ok(Self { config })
    }

    fn ingest_dir(&self, ctx: &StageContext) -> Result<PathBuf, PipelineError> {
        source_dir(ctx, &self.config.from, &self.config.ingest_dir)
    }

    fn candidates_dir(&self, ctx: &StageContext) -> Result<PathBuf, PipelineError> {
        source_dir(
            ctx,
            &self.config.candidates_from,
            &self.config.candidates_dir,
        )
    }

    fn model_dir(&self, ctx: &StageContext) -> Result<PathBuf, PipelineError> {
        let dir = source_dir(ctx, &self.config.model_from, &self.config.model)?;
        Ok(match &self.config.model_from {
            Some(_) => dir.join(outputs::train::MODEL),
            None => dir,
        })
    }

    fn adapter_dir(&self, ctx: &StageContext) -> Result<Option<PathBuf>, PipelineError> {
        Ok(match (&self.config.adapter_from, &self.config.adapter) {
            (Some(stage), _) => Some(ctx.upstream_dir(stage)?.join(outputs::train::ADAPTER)),
            (None, dir) => dir.clone(),
        })
    }
}

fn source_dir(
    ctx: &StageContext,
    stage: &Option<String>,
    dir: &Option<PathBuf>,
) -> Result<PathBuf, PipelineError> {
    match (stage, dir) {
        (Some(stage), _) => Ok(ctx.upstream_dir(stage)?.to_path_buf()),
        (None, Some(dir)) => Ok(dir.clone()),
        (None, None) => Err(PipelineError::Config {
            path: Default::default(),
            message: "[eval]: no input given".into(),
        }),
    }
}

impl Stage for EvalStage {
    fn memory_plan(&self, ctx: &PlanContext) -> Option<Result<Verdict, PlanError>> {
        Some(crate::plan::inference::eval_verdict(&self.config, ctx))
    }

    fn name(&self) -> &'static str {
        "eval"
    }

    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(&self.config)
    }

    fn inputs(&self) -> Vec<Input> {
        let c = &self.config;
        let mut inputs: Vec<Input> = [&c.from, &c.candidates_from, &c.model_from, &c.adapter_from]
            .into_iter()
            .flatten()
            .map(|stage| Input::Stage(stage.clone()))
            .collect();
        let files: Vec<PathBuf> = [&c.ingest_dir, &c.candidates_dir, &c.model, &c.adapter]
            .into_iter()
            .flatten()
            .cloned()
            .collect();
        inputs.push(Input::Files(files));
        inputs
    }

    fn outputs(&self) -> Vec<Output> {
        vec![
            Output::dataset(outputs::eval::RUN, "run"),
            Output::dataset(outputs::eval::METRICS, "metrics"),
            Output::summary(outputs::eval::FIRST_STAGE_TREC),
            Output::summary(outputs::eval::RERANKED_TREC),
            Output::summary(outputs::eval::METRICS_JSON),
        ]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let ingest = self.ingest_dir(ctx)?;
        let candidates = self.candidates_dir(ctx)?.join(outputs::mine::CANDIDATES);
        let adapter = self.adapter_dir(ctx)?;
        let shard = ctx.shard();
        let evaluated = Evaluated::read(&ingest, &candidates, &self.config, shard)?;
        let device = ctx.device().candle().map_err(EvalStageError::Device)?;
        let model = self.model_dir(ctx)?;
        let prompt = self.config.prompt_settings();
        let mut reranker =
            Reranker::load_with_prompt(&model, adapter.as_deref(), prompt.as_ref(), &device)
                .map_err(EvalStageError::from)?;
        reranker
            .set_pixel_bounds((self.config.min_pixels, self.config.max_pixels))
            .and_then(|()| reranker.set_image_backend(self.config.image_processor))
            .map_err(EvalStageError::from)?;
        log_image_tokens(&reranker, &evaluated);
        let pairs: usize = evaluated.lists.iter().map(|l| l.ranked.len()).sum();
        ctx.add_records(pairs as u64);
        let bar = ctx.progress(pairs as u64, "reranking pairs");
        let (reranked, rejects) = rerank(bar, &reranker, &evaluated, &self.config)?;
        let rejected = rejects.len();
        for reject in rejects {
            ctx.reject(reject)?;
        }
        let first_stage = evaluated.first_stage_run();
        let first_values = evaluate_queries(&first_stage, &evaluated.qrels, &Metric::DEFAULT)
            .map_err(EvalStageError::from)?;
        let reranked_values = evaluate_queries(&reranked, &evaluated.qrels, &Metric::DEFAULT)
            .map_err(EvalStageError::from)?;

        let mut runs = ctx.create_dataset(outputs::eval::RUN, "run")?;
        write_runs(
            &mut runs,
            &[(FIRST_STAGE, &first_stage), (RERANKED, &reranked)],
        )?;
        runs.finish()?;
        let mut metrics = ctx.create_dataset(outputs::eval::METRICS, "metrics")?;
        write_query_metrics(
            &mut metrics,
            &[(FIRST_STAGE, &first_values), (RERANKED, &reranked_values)],
            &evaluated.groups,
        )?;
        metrics.finish()?;

        let header = Header {
            model: ctx.run_relative(&model),
            adapter: adapter.as_deref().map(|a| ctx.run_relative(a)),
            score: self.config.score,
            interpolate: self.config.interpolate,
            k: self.config.k,
            splits: evaluated.splits.iter().cloned().collect(),
            retrievers: evaluated.retrievers(),
            scored_pairs: pairs - rejected,
            rejected_pairs: rejected,
            permutations: self.config.permutations,
            seed: ctx.seed(),
        };
        if !shard.is_all() {
            let queries = first_values.values().next().map_or(0, BTreeMap::len);
            let scored = header.scored_pairs;
            parts::save_header(ctx.dir(), shard, &header)?;
            progress::multi().suspend(|| {
                println!(
                    "{}: shard {shard}: {queries} queries evaluated ({scored} pairs reranked); the metrics over \
                     every query come when the plain run after the array merges the shards",
                    ctx.name(),
                )
            });
            return Ok(());
        }
        parts::remove_headers(ctx.dir(), |_| true)?;
        let summary = header.summarise(first_values, reranked_values, &evaluated.groups)?;
        parts::write_whole(ctx.dir(), &first_stage, &reranked, &summary)?;
        print_summary(ctx.name(), &summary);
        Ok(())
    }

    /// Writes the TREC files and `metrics.json` of a job array's queries from its parts, as one run would have.
    fn merge_parts(&self, dir: &Path, parts: u32) -> Result<(), StageError> {
        let (summary, first_stage, reranked) = parts::merge(dir, parts)?;
        parts::write_whole(dir, &first_stage, &reranked, &summary)?;
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        print_summary(&name, &summary);
        Ok(())
    }
}

/// The per-query values of every default metric of `model` (with `adapter`) reranking the lists an eval stage
/// with `config` reranked, read from `ingest` and `candidates` (the stage directories): what the release gate
/// scores the previous release with, so that both models are judged on the same queries, candidates, splits, `k`,
/// score and prompt bounds. Pairs the model cannot score are left out of its run, as in the stage, and counted.
pub fn rerank_lists(
    ingest: &Path,
    candidates: &Path,
    config: &EvalConfig,
    model: &Path,
    adapter: Option<&Path>,
    device: &candle_core::Device,
) -> Result<(PerQuery, usize), EvalStageError> {
    let evaluated = Evaluated::read(
        ingest,
        &candidates.join(outputs::mine::CANDIDATES),
        config,
        Shard::ALL,
    )?;
    let prompt = config.prompt_settings();
    let mut reranker = Reranker::load_with_prompt(model, adapter, prompt.as_ref(), device)
        .map_err(EvalStageError::from)?;
    reranker
        .set_pixel_bounds((config.min_pixels, config.max_pixels))
        .and_then(|()| reranker.set_image_backend(config.image_processor))
        .map_err(EvalStageError::from)?;
    let pairs: usize = evaluated.lists.iter().map(|l| l.ranked.len()).sum();
    let bar = progress::bar(pairs as u64, "gate: reranking pairs with the baseline");
    let (run, rejects) = rerank(bar, &reranker, &evaluated, config)?;
    let values =
        evaluate_queries(&run, &evaluated.qrels, &Metric::DEFAULT).map_err(EvalStageError::from)?;
    Ok((values, rejects.len()))
}

/// The table the stage prints at the end.
fn print_summary(stage: &str, summary: &EvalSummary) {
    progress::multi().suspend(|| {
        println!(
            "{stage}: {} queries evaluated ({} pairs reranked)\n{}",
            summary.comparison.queries,
            summary.scored_pairs,
            summary.comparison.table()
        )
    });
}

/// The evaluated queries with everything their pairs need.
struct Evaluated {
    splits: BTreeSet<String>,
    /// The lists of the evaluated queries that exist in the queries dataset.
    lists: Vec<CandidateList>,
    queries: BTreeMap<String, QueryInfo>,
    docs: HashMap<String, DocInfo>,
    /// Where the evaluated images are; their bytes are read a list or a batch at a time.
    images: ImageTable,
    qrels: super::Qrels,
    /// qid -> task (or dataset) of every evaluated query.
    groups: BTreeMap<String, String>,
}

impl Evaluated {
    /// Reads the lists and queries of `shard`'s slice, after the checks over the whole input (so that every shard
    /// of an array evaluates the same splits and fails alike when there is nothing to evaluate).
    fn read(
        ingest: &Path,
        candidates: &Path,
        config: &EvalConfig,
        shard: Shard,
    ) -> Result<Self, EvalStageError> {
        let all_lists = inputs::read_candidates(candidates, config.k)?;
        let mut queries = inputs::read_queries(&ingest.join(outputs::ingest::QUERIES))?;
        let splits: BTreeSet<String> = match &config.splits {
            Some(splits) => splits.iter().cloned().collect(),
            None => all_lists
                .iter()
                .filter_map(|list| queries.get(&list.qid).map(|q| q.split.clone()))
                .collect(),
        };
        queries.retain(|_, query| splits.contains(&query.split));
        let names = splits.iter().cloned().collect::<Vec<_>>().join(", ");
        if queries.is_empty() {
            return Err(EvalStageError::NoQueries(names));
        }
        let mut lists: Vec<CandidateList> = all_lists
            .into_iter()
            .filter(|list| queries.contains_key(&list.qid))
            .collect();
        if lists.is_empty() {
            return Err(EvalStageError::NoQueries(names));
        }
        queries.retain(|qid, _| shard.owns(qid));
        lists.retain(|list| shard.owns(&list.qid));
        let wanted_docs: HashSet<&str> = lists
            .iter()
            .flat_map(|list| list.ranked.iter().map(|(did, _)| did.as_str()))
            .collect();
        let docs = inputs::read_documents(&ingest.join(outputs::ingest::CORPUS), &wanted_docs)?;
        let wanted_images: HashSet<&str> = lists
            .iter()
            .filter_map(|list| queries.get(&list.qid)?.image_id.as_deref())
            .chain(docs.values().filter_map(|doc| doc.image_id.as_deref()))
            .collect();
        let images = ImageTable::locate(
            &Dataset::open(&ingest.join(outputs::ingest::IMAGES))?,
            &wanted_images,
        )?;
        let qids: BTreeSet<&str> = queries.keys().map(String::as_str).collect();
        let qrels = inputs::read_qrels(&ingest.join(outputs::ingest::QRELS), &qids)?;
        let groups = queries
            .iter()
            .map(|(qid, query)| (qid.clone(), query.group.clone()))
            .collect();
        Ok(Self {
            splits,
            lists,
            queries,
            docs,
            images,
            qrels,
            groups,
        })
    }

    fn first_stage_run(&self) -> Run {
        self.lists
            .iter()
            .map(|list| {
                let scores = list
                    .ranked
                    .iter()
                    .map(|(did, score)| (did.clone(), f64::from(*score)))
                    .collect();
                (list.qid.clone(), scores)
            })
            .collect()
    }

    fn retrievers(&self) -> Vec<String> {
        let distinct: BTreeSet<&str> = self.lists.iter().map(|l| l.retriever.as_str()).collect();
        distinct.into_iter().map(str::to_owned).collect()
    }

    /// The encoded images of a list's query or of a batch's documents, read now.
    fn read_images<'a>(
        &self,
        ids: impl IntoIterator<Item = Option<&'a str>>,
    ) -> Result<HashMap<String, Vec<u8>>, EvalStageError> {
        Ok(self.images.read(ids.into_iter().flatten())?)
    }
}

/// Logs how many tokens the evaluated images become within the reranker's pixel bounds.
fn log_image_tokens(reranker: &Reranker, evaluated: &Evaluated) {
    let Some(processor) = reranker.image_processor() else {
        return;
    };
    if let Some(counts) = evaluated.images.token_counts(processor) {
        let params = processor.params();
        tracing::info!(
            "images at {} to {} pixels: {counts}",
            params.min_pixels,
            params.max_pixels
        );
    }
}

/// Scores every pair of every list, a batch at a time. A pair that cannot be prepared (unknown document, broken
/// image, text-only model with an image) becomes a reject and is left out of the reranked run; a failing model
/// stops the stage.
fn rerank(
    bar: ProgressBar,
    reranker: &Reranker,
    evaluated: &Evaluated,
    config: &EvalConfig,
) -> Result<(Run, Vec<Reject>), EvalStageError> {
    let mut run = Run::new();
    let mut rejects = Vec::new();
    for list in &evaluated.lists {
        let Some(query) = evaluated.queries.get(&list.qid) else {
            continue;
        };
        let reject = |did: &str, reason: &str, detail: String| {
            Reject::new("candidates", reason, detail).with_id(format!("{} {did}", list.qid))
        };
        let query_images = evaluated.read_images([query.image_id.as_deref()])?;
        let query_image = match prepare_image(reranker, &query_images, query.image_id.as_deref()) {
            Ok(image) => image,
            Err(detail) => {
                let detail = format!("query image: {detail}");
                rejects.extend(
                    list.ranked
                        .iter()
                        .map(|(did, _)| reject(did, "query_image", detail.clone())),
                );
                bar.inc(list.ranked.len() as u64);
                continue;
            }
        };
        let scores = run.entry(list.qid.clone()).or_default();
        for chunk in list.ranked.chunks(config.batch) {
            let mut prepared: Vec<PreparedPair> = Vec::with_capacity(chunk.len());
            let mut dids = Vec::with_capacity(chunk.len());
            let doc_images = evaluated.read_images(chunk.iter().map(|(did, _)| {
                evaluated
                    .docs
                    .get(did)
                    .and_then(|doc| doc.image_id.as_deref())
            }))?;
            for (did, retriever) in chunk {
                match prepare_pair(
                    reranker,
                    evaluated,
                    &doc_images,
                    query,
                    query_image.as_ref(),
                    did,
                    config,
                ) {
                    Ok(pair) => {
                        prepared.push(pair);
                        dids.push((did, *retriever));
                    }
                    Err((reason, detail)) => rejects.push(reject(did, reason, detail)),
                }
            }
            for ((did, retriever), score) in dids
                .into_iter()
                .zip(reranker.score(&prepared, config.batch)?)
            {
                let value = config.ranking_score(retriever, &score);
                if value.is_finite() {
                    scores.insert(did.clone(), value);
                } else {
                    rejects.push(reject(
                        did,
                        "non_finite_score",
                        format!("the reranker scored the pair {score:?}"),
                    ));
                }
            }
            bar.inc(chunk.len() as u64);
        }
    }
    bar.finish_and_clear();
    Ok((run, rejects))
}

fn prepare_image(
    reranker: &Reranker,
    images: &HashMap<String, Vec<u8>>,
    image_id: Option<&str>,
) -> Result<Option<ImagePatches>, String> {
    let Some(image_id) = image_id else {
        return Ok(None);
    };
    let bytes = images
        .get(image_id)
        .ok_or_else(|| format!("image {image_id} is not in the images dataset"))?;
    reranker
        .image(ImageInput::Encoded(bytes))
        .map(Some)
        .map_err(|e| format!("image {image_id}: {e}"))
}

fn prepare_pair(
    reranker: &Reranker,
    evaluated: &Evaluated,
    doc_images: &HashMap<String, Vec<u8>>,
    query: &QueryInfo,
    query_image: Option<&ImagePatches>,
    did: &str,
    config: &EvalConfig,
) -> Result<PreparedPair, (&'static str, String)> {
    let doc = evaluated.docs.get(did).ok_or_else(|| {
        (
            "unknown_document",
            format!("document {did} is not in the corpus"),
        )
    })?;
    let doc_image = prepare_image(reranker, doc_images, doc.image_id.as_deref())
        .map_err(|detail| ("document_image", detail))?;
    let query_side = PairSide {
        text: query.text.as_deref(),
        image: query_image,
    };
    let doc_side = PairSide {
        text: doc.text.as_deref(),
        image: doc_image.as_ref(),
    };
    let instruction = query.instruction.as_deref().unwrap_or("");
    reranker
        .prompt(instruction, query_side, doc_side, config.max_len)
        .map_err(|e| ("prompt", e.to_string()))
}
