//! The `[embed]` table, the stage, and the run itself ([`embed_into`]).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use candle_core::DType;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::items::{self, BadRecord, Images, Item, Side};
use super::model::{load_model, EmbedModel, ModelOptions, Prepared, PreparedImage};
use super::plan::{plan, PlanInput};
use super::store::{references_path, Store, REFERENCES_HEADER};
use super::{output, EmbedError};
use crate::dataset::Dataset;
use crate::device::DeviceSpec;
use crate::digest::Fingerprint;
use crate::modality::Modality;
use crate::pipeline::{Input, Output, PipelineError, Reject, Stage, StageContext, StageError};
use crate::plan::{PlanContext, PlanError, Verdict};
use crate::schema::outputs;
use crate::shard::Shard;

/// The precision weights and activations are held in; vectors are always written as f32.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    Bf16,
    F16,
}

impl Precision {
    pub fn dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
            Precision::F16 => DType::F16,
        }
    }
}

/// The `[embed]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbedConfig {
    /// The upstream stage (an ingest) whose corpus, queries and images datasets are embedded.
    #[serde(default)]
    pub from: Option<String>,
    /// Without `from`: the corpus, queries and images dataset directories.
    #[serde(default)]
    pub corpus: Option<PathBuf>,
    #[serde(default)]
    pub queries: Option<PathBuf>,
    #[serde(default)]
    pub images: Option<PathBuf>,
    /// The model directory (Hugging Face layout). With `model_from`, relative to that stage's directory (default:
    /// the directory itself).
    #[serde(default)]
    pub model: Option<PathBuf>,
    /// An upstream stage whose output is the model directory (e.g. a stage that trains an embedder).
    #[serde(default)]
    pub model_from: Option<String>,
    /// Inputs per forward pass. Not part of the store's key: a stored vector is reused whatever batch size
    /// computed it.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_precision")]
    pub dtype: Precision,
    /// Vectors per store chunk: how much work a kill can lose.
    #[serde(default = "default_cache_rows")]
    pub cache_rows: usize,
    /// The embedding store directory, which runs that point at the same one share [default: `<stage>/store`].
    #[serde(default)]
    pub store: Option<PathBuf>,
    /// Bounds on an image's pixels before a GME model patches it, in place of its preprocessor_config.json's
    /// (fewer pixels, fewer image tokens) [default: the model's].
    #[serde(default)]
    pub min_pixels: Option<u64>,
    /// The upper bound; see `min_pixels`.
    #[serde(default)]
    pub max_pixels: Option<u64>,
}

fn default_batch_size() -> usize {
    32
}

fn default_precision() -> Precision {
    Precision::F32
}

fn default_cache_rows() -> usize {
    1024
}

impl EmbedConfig {
    /// Embeds the datasets of upstream stage `from` with the model in `model`; everything else default.
    pub fn new(from: &str, model: PathBuf) -> Self {
        Self {
            from: Some(from.to_string()),
            corpus: None,
            queries: None,
            images: None,
            model: Some(model),
            model_from: None,
            batch_size: default_batch_size(),
            dtype: default_precision(),
            cache_rows: default_cache_rows(),
            store: None,
            min_pixels: None,
            max_pixels: None,
        }
    }
}

/// Where the datasets to embed are.
#[derive(Debug, Clone)]
pub struct EmbedSources {
    pub corpus: PathBuf,
    pub queries: PathBuf,
    /// Needed only when some record has an image.
    pub images: Option<PathBuf>,
}

/// What a run did, for logs and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EmbedReport {
    /// Records of this shard read (documents and queries, including rejected ones).
    pub records: u64,
    pub rejected: u64,
    /// Distinct inputs (records with equal content embed once).
    pub inputs: usize,
    /// Inputs whose vectors came from the store.
    pub cached: usize,
    /// Inputs run through the model.
    pub embedded: usize,
    pub batches_run: usize,
    /// The store's directory for this model.
    pub cache_dir: PathBuf,
}

impl EmbedReport {
    /// The statistics file's JSON: what a run embedded and what it reused, for logs and tests.
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "records": self.records,
            "rejected": self.rejected,
            "inputs": self.inputs,
            "reused": self.cached,
            "embedded": self.embedded,
            "batches_run": self.batches_run,
        })
    }
}

/// `<stage>/embed_stats.json`, or `embed_stats.<part>.json` for one shard: the last run's [`EmbedReport`].
pub fn stats_path(stage_dir: &Path, shard: Shard) -> PathBuf {
    if shard.is_all() {
        stage_dir.join("embed_stats.json")
    } else {
        stage_dir.join(format!("embed_stats.{}.json", shard.part_name()))
    }
}

/// Embeds queries and documents (see the module docs of [`crate::embed`]).
pub struct EmbedStage {
    config: EmbedConfig,
}

fn config_error(message: String) -> PipelineError {
    PipelineError::Config {
        path: Default::default(),
        message: format!("[embed]: {message}"),
    }
}

impl EmbedStage {
    pub fn new(config: EmbedConfig) -> Result<Self, PipelineError> {
        let paths = [&config.corpus, &config.queries];
        match (&config.from, paths.iter().all(|p| p.is_some())) {
            (Some(_), _) if paths.iter().any(|p| p.is_some()) || config.images.is_some() => {
                return Err(config_error(
                    "give `from` (an ingest stage) or `corpus`, `queries` and `images`, not both".into(),
                ))
            }
            (None, false) => {
                return Err(config_error(
                    "give `from` (an ingest stage) or the `corpus` and `queries` (and `images`) directories"
                        .into(),
                ))
            }
            _ => {}
        }
        if config.model.is_none() && config.model_from.is_none() {
            return Err(config_error(
                "give `model` (a model directory) or `model_from` (the stage that wrote one)"
                    .into(),
            ));
        }
        if config.batch_size == 0 || config.cache_rows == 0 {
            return Err(config_error(
                "`batch_size` and `cache_rows` must be positive".into(),
            ));
        }
        Ok(Self { config })
    }

    fn sources(&self, ctx: &StageContext) -> Result<EmbedSources, PipelineError> {
        if let Some(from) = &self.config.from {
            let dir = ctx.upstream_dir(from)?;
            return Ok(EmbedSources {
                corpus: dir.join("corpus"),
                queries: dir.join("queries"),
                images: Some(dir.join("images")),
            });
        }
        let get = |p: &Option<PathBuf>| p.clone().unwrap_or_default();
        Ok(EmbedSources {
            corpus: get(&self.config.corpus),
            queries: get(&self.config.queries),
            images: self.config.images.clone(),
        })
    }

    fn model_dir(&self, ctx: &StageContext) -> Result<PathBuf, PipelineError> {
        match (&self.config.model_from, &self.config.model) {
            (Some(stage), Some(sub)) => Ok(ctx.upstream_dir(stage)?.join(sub)),
            (Some(stage), None) => Ok(ctx.upstream_dir(stage)?.to_path_buf()),
            (None, Some(dir)) => Ok(dir.clone()),
            (None, None) => Err(config_error("no model given".into())),
        }
    }
}

impl Stage for EmbedStage {
    fn memory_plan(&self, ctx: &PlanContext) -> Option<Result<Verdict, PlanError>> {
        let model = match (&self.config.model_from, &self.config.model) {
            (Some(stage), Some(sub)) => (ctx.stage_dir)(stage).join(sub),
            (Some(stage), None) => (ctx.stage_dir)(stage),
            (None, Some(dir)) => dir.clone(),
            (None, None) => return None,
        };
        let model_bytes = self.config.dtype.dtype().size_in_bytes() as u64;
        let batch = self.config.batch_size as u64;
        Some(crate::plan::inference::embed_verdict(
            &model,
            batch,
            model_bytes,
            ctx,
        ))
    }

    fn name(&self) -> &'static str {
        "embed"
    }

    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(&self.config)
    }

    fn inputs(&self) -> Vec<Input> {
        let mut inputs = Vec::new();
        match &self.config.from {
            Some(from) => inputs.push(Input::Stage(from.clone())),
            None => {
                let files = [
                    &self.config.corpus,
                    &self.config.queries,
                    &self.config.images,
                ];
                inputs.push(Input::Files(files.into_iter().flatten().cloned().collect()));
            }
        }
        match (&self.config.model_from, &self.config.model) {
            (Some(stage), _) if Some(stage) != self.config.from.as_ref() => {
                inputs.push(Input::Stage(stage.clone()))
            }
            (Some(_), _) => {}
            (None, Some(dir)) => inputs.push(Input::Files(vec![dir.clone()])),
            (None, None) => {}
        }
        inputs
    }

    fn outputs(&self) -> Vec<Output> {
        vec![
            Output::dataset(outputs::embed::DOC_EMBEDDINGS, "embeddings"),
            Output::dataset(outputs::embed::QUERY_EMBEDDINGS, "embeddings"),
        ]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let sources = self.sources(ctx)?;
        let dir = self.model_dir(ctx)?;
        let device = ctx
            .device()
            .candle()
            .map_err(|source| EmbedError::Compute {
                what: "device",
                source,
            })?;
        let options = ModelOptions {
            device,
            dtype: self.config.dtype.dtype(),
            batch_size: self.config.batch_size,
            pixels: (self.config.min_pixels, self.config.max_pixels),
        };
        tracing::info!("{}: loading {}", ctx.name(), dir.display());
        let model = load_model(&dir, &options)?;
        embed_into(ctx, &self.config, &sources, model.as_ref())?;
        Ok(())
    }
}

/// Embeds this shard's records of `sources` with `model` into the stage's two datasets, resuming from and
/// filling the cache. The model is passed in (rather than loaded from the config) so that callers can run any
/// [`EmbedModel`]; `config.batch_size` and `config.cache_rows` apply.
pub fn embed_into(
    ctx: &mut StageContext,
    config: &EmbedConfig,
    sources: &EmbedSources,
    model: &dyn EmbedModel,
) -> Result<EmbedReport, EmbedError> {
    let shard = ctx.shard();
    let takes = model.takes_instructions();
    let (mut items, mut bad) =
        items::read(&Dataset::open(&sources.corpus)?, Side::Doc, shard, takes)?;
    let (queries, bad_queries) =
        items::read(&Dataset::open(&sources.queries)?, Side::Query, shard, takes)?;
    items.extend(queries);
    bad.extend(bad_queries);
    check_modalities(&items, model)?;
    let images = match &sources.images {
        Some(path) => Images::read(&Dataset::open(path)?, &items)?,
        None if items.iter().any(|i| i.image_id.is_some()) => {
            return Err(EmbedError::Config(
                "some records have images but no images dataset was given".into(),
            ))
        }
        None => Images::read_none(),
    };
    let mut report = EmbedReport {
        records: (items.len() + bad.len()) as u64,
        ..EmbedReport::default()
    };
    ctx.add_records(report.records);

    let units = distinct_inputs(&items, &images);
    report.inputs = units.len();
    let key = store_key(model.fingerprint(), ctx.device());
    let root = config
        .store
        .clone()
        .unwrap_or_else(|| ctx.dir().join("store"));
    let mut store = Store::open(&root, &key, model.dim(), config.cache_rows)?;
    report.cache_dir = store.dir().to_path_buf();
    let wanted: HashSet<&str> = units.iter().map(|&u| items[u].key.as_str()).collect();
    let mut vectors = store.load(&wanted)?;

    // Only what the store lacks is planned: the batches hold new and changed content alone.
    let missing: Vec<usize> = units
        .iter()
        .copied()
        .filter(|&u| !vectors.contains_key(&items[u].key))
        .collect();
    report.cached = units.len() - missing.len();
    let lengths: Vec<PlanInput> = missing
        .iter()
        .map(|&u| {
            let item = &items[u];
            let size = item.image_id.as_deref().and_then(|id| images.size(id));
            PlanInput {
                modality: item.modality,
                length: model.length(item.text.as_deref(), size),
                key: &item.key,
            }
        })
        .collect();
    let batches = plan(&lengths, config.batch_size);
    let mut failed: HashMap<String, String> = HashMap::new();
    let bar = ctx.progress(missing.len() as u64, "embed");
    for batch in &batches {
        let batch_items: Vec<&Item> = batch.iter().map(|&b| &items[missing[b]]).collect();
        let result = embed_batch(model, &batch_items, &images, &mut failed);
        let (keys, embedded) = match result {
            Ok(done) => done,
            Err(e) => {
                // Keep what finished before the failure: the rerun resumes after it.
                store.flush()?;
                return Err(e);
            }
        };
        store.add(&keys, &embedded)?;
        report.embedded += keys.len();
        report.batches_run += 1;
        for (key, vector) in keys.into_iter().zip(embedded) {
            vectors.insert(key.to_string(), vector);
        }
        bar.inc(batch.len() as u64);
    }
    store.flush()?;
    bar.finish_and_clear();

    report.rejected = reject_all(ctx, &bad, &items, &images, &failed)?;
    for (side, name) in [
        (Side::Doc, outputs::embed::DOC_EMBEDDINGS),
        (Side::Query, outputs::embed::QUERY_EMBEDDINGS),
    ] {
        let rows: Vec<(&Item, &[f32])> = items
            .iter()
            .filter(|i| i.side == side)
            .filter_map(|i| vectors.get(&i.key).map(|v| (i, v.as_slice())))
            .collect();
        output::write(
            &ctx.output_path(name),
            shard,
            model.dim(),
            model.fingerprint(),
            &rows,
        )?;
    }
    let stats = stats_path(ctx.dir(), shard);
    let json = serde_json::to_vec_pretty(&report.to_json()).map_err(|source| EmbedError::Json {
        path: stats.clone(),
        source,
    })?;
    crate::atomic::write_atomically(&stats, &json).map_err(|e| EmbedError::Io {
        path: e.path,
        source: e.source,
    })?;
    let references = references_path(ctx.dir(), shard);
    let mut lines = format!("{REFERENCES_HEADER}\n");
    for chunk in store.references() {
        lines.push_str(&chunk);
        lines.push('\n');
    }
    crate::atomic::write_atomically(&references, lines.as_bytes()).map_err(|e| EmbedError::Io {
        path: e.path,
        source: e.source,
    })?;
    tracing::info!(
        "{}: {} distinct inputs, {} from the store, {} embedded in {} batches",
        ctx.name(),
        report.inputs,
        report.cached,
        report.embedded,
        report.batches_run,
    );
    Ok(report)
}

/// An input modality the model cannot embed is a configuration error, found before any work: it would fail
/// every such record the same way.
fn check_modalities(items: &[Item], model: &dyn EmbedModel) -> Result<(), EmbedError> {
    let mut unsupported: Vec<(Modality, Side, usize, &str)> = Vec::new();
    for item in items.iter().filter(|i| !model.supports(i.modality)) {
        match unsupported
            .iter_mut()
            .find(|(m, s, _, _)| *m == item.modality && *s == item.side)
        {
            Some(entry) => entry.2 += 1,
            None => unsupported.push((item.modality, item.side, 1, &item.id)),
        }
    }
    if unsupported.is_empty() {
        return Ok(());
    }
    let what: Vec<String> = unsupported
        .iter()
        .map(|(m, s, n, first)| format!("{n} {m} {}s (first: {first})", s.as_str()))
        .collect();
    Err(EmbedError::Config(format!(
        "the model cannot embed {}; choose a model for these modalities, or ingest without them",
        what.join(", ")
    )))
}

/// One representative item per distinct content key, in item order, leaving out items whose image is not in
/// the images dataset (they are rejected).
fn distinct_inputs(items: &[Item], images: &Images) -> Vec<usize> {
    let mut seen = HashSet::new();
    items
        .iter()
        .enumerate()
        .filter(|(_, item)| has_image(item, images))
        .filter(|(_, item)| seen.insert(item.key.as_str()))
        .map(|(i, _)| i)
        .collect()
}

fn has_image(item: &Item, images: &Images) -> bool {
    item.image_id
        .as_deref()
        .is_none_or(|id| images.bytes(id).is_some())
}

/// Preprocesses the batch's images in parallel and runs the model on the items whose image could be prepared;
/// the others are noted in `failed` with the reason. Returns the embedded keys and their vectors.
fn embed_batch<'a>(
    model: &dyn EmbedModel,
    batch: &[&'a Item],
    images: &Images,
    failed: &mut HashMap<String, String>,
) -> Result<(Vec<&'a str>, Vec<Vec<f32>>), EmbedError> {
    let prepared: Vec<Option<Result<PreparedImage, String>>> = batch
        .par_iter()
        .map(|item| {
            let id = item.image_id.as_deref()?;
            let bytes = images.bytes(id)?;
            Some(model.prepare_image(bytes).map_err(|e| e.to_string()))
        })
        .collect();
    let mut keys = Vec::with_capacity(batch.len());
    let mut inputs = Vec::with_capacity(batch.len());
    for (item, image) in batch.iter().zip(&prepared) {
        let image = match image {
            Some(Ok(image)) => Some(image),
            Some(Err(reason)) => {
                failed.insert(item.key.clone(), reason.clone());
                continue;
            }
            None => None,
        };
        keys.push(item.key.as_str());
        inputs.push(Prepared {
            instruction: item.instruction.as_deref(),
            text: item.text.as_deref(),
            image,
        });
    }
    if inputs.is_empty() {
        return Ok((keys, Vec::new()));
    }
    let vectors = model.embed(&inputs)?;
    if vectors.len() != inputs.len() || vectors.iter().any(|v| v.len() != model.dim()) {
        return Err(EmbedError::Batch(format!(
            "the model returned {} vectors for {} inputs (expected width {})",
            vectors.len(),
            inputs.len(),
            model.dim()
        )));
    }
    Ok((keys, vectors))
}

/// Records the rejects in a fixed order: unreadable records as read, then items without a usable image in item
/// order. Returns how many.
fn reject_all(
    ctx: &mut StageContext,
    bad: &[BadRecord],
    items: &[Item],
    images: &Images,
    failed: &HashMap<String, String>,
) -> Result<u64, EmbedError> {
    let mut count = 0;
    for record in bad {
        ctx.reject(
            Reject::new(&record.source_file, record.reason, &record.detail)
                .at_line(record.source_line)
                .with_id(&record.id),
        )?;
        count += 1;
    }
    for item in items {
        let (reason, detail) = if !has_image(item, images) {
            (
                "image_not_found",
                format!(
                    "image {} is not in the images dataset",
                    item.image_id.as_deref().unwrap_or_default()
                ),
            )
        } else if let Some(reason) = failed.get(&item.key) {
            ("image_unusable", reason.clone())
        } else {
            continue;
        };
        ctx.reject(
            Reject::new(&item.source_file, reason, detail)
                .at_line(item.source_line)
                .with_id(&item.id),
        )?;
        count += 1;
    }
    Ok(count)
}

/// The store directory of a model: its fingerprint (weights, config, tokenizer, preprocessing, dtype) and the
/// device kind, whose kernels round differently (on the CPU, the kernel family this machine's matrix products
/// take). Batch size, shard and item ids are deliberately not in it: the item's content key
/// ([`items::content_key`]) is the rest of what determines a vector.
fn store_key(model: &str, device: DeviceSpec) -> String {
    let device_kind = match device {
        DeviceSpec::Cpu => format!("cpu {}", crate::device::cpu_kernels()),
        DeviceSpec::Cuda(_) => "cuda".to_string(),
    };
    let mut fp = Fingerprint::new();
    fp.part("format", b"umrank embedding store 1")
        .part("model", model.as_bytes())
        .part("device", device_kind.as_bytes());
    fp.finish()
}
