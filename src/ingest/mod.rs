//! The ingest stage: user data in (M-BEIR, FlagEmbedding jsonl, ms-swift reranker jsonl, or Parquet in our own
//! schema), the `corpus`, `queries`, `qrels` and `images` datasets out.
//!
//! Every input line is parsed in every shard (cheap), so cross-record checks agree across shards; each shard then
//! keeps, loads images for, and rejects only the records it owns. A record whose image cannot be loaded is
//! rejected with the image's reason; the image file itself is never touched.

mod collect;
mod flag;
mod images;
mod instructions;
mod jsonl;
mod lines;
pub mod mbeir;
mod output;
pub mod records;
mod swift;
mod table;

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use self::collect::{reject, Collection};
use self::images::ImageSink;
use self::output::{DocRow, QueryRow};
use crate::dataset::{Dataset, DatasetError};
use crate::media::{ImageLoader, LoadOptions, LoaderError};
use crate::pipeline::{Input, Output, PipelineError, Stage, StageContext, StageError};
use crate::schema::outputs;

/// Why an ingest could not run (row-level problems are rejects, not errors).
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}:{line}: {message}")]
    Format {
        file: String,
        line: u64,
        message: String,
    },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Loader(#[from] LoaderError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
}

impl IngestError {
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.to_path_buf();
        move |source| Self::Io { path, source }
    }
}

/// Input formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// M-BEIR: query/<split>/*.jsonl, cand_pool/local/*.jsonl, qrels/<split>/*.txt, instructions TSV.
    Mbeir,
    /// FlagEmbedding jsonl: {"query", "pos": [..], "neg": [..], "prompt"} per line (text only).
    Flag,
    /// ms-swift reranker jsonl: messages / positive_messages / negative_messages, with their images.
    Swift,
    /// umrank's own datasets: corpus/, queries/, qrels/ and images/ Parquet directories under the root.
    Parquet,
}

/// The `[ingest]` table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    #[serde(default = "default_format")]
    pub format: Format,
    /// The dataset root. With `from`, it is relative to that stage's directory (default `mbeir`, the world's
    /// output); otherwise relative to the current directory.
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Read the root from this upstream stage's output instead of from outside the pipeline.
    #[serde(default)]
    pub from: Option<String>,
    /// Only this split (M-BEIR: the directory under query/ and qrels/); train, val and test by default.
    #[serde(default)]
    pub split: Option<String>,
    /// M-BEIR: the query, pool and qrels files, each one glob or a list of globs relative to the root. The
    /// defaults follow the published layout (see [`mbeir::Layout::mbeir`]); the stage's resolved config shows them.
    #[serde(default)]
    pub queries: Option<Globs>,
    #[serde(default)]
    pub pool: Option<Globs>,
    #[serde(default)]
    pub qrels: Option<Globs>,
    #[serde(default)]
    pub instructions: Option<String>,
    /// M-BEIR: only queries of these task ids (M-BEIR's 0-8), with their judgements; the other queries of the
    /// files read (M-BEIR's train files mix a dataset's tasks) are left out, counted in the log. All by default.
    #[serde(default)]
    pub tasks: Option<Vec<i32>>,
    /// Input files for the jsonl formats (flag, swift), a glob relative to the root [default: *.jsonl].
    #[serde(default)]
    pub files: Option<String>,
    /// Largest image accepted, in pixels (decompression-bomb guard).
    #[serde(default = "default_max_pixels")]
    pub max_pixels: u64,
}

/// One glob, or a list of globs whose matches are merged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Globs {
    One(String),
    Many(Vec<String>),
}

impl Globs {
    fn to_vec(&self) -> Vec<String> {
        match self {
            Globs::One(glob) => vec![glob.clone()],
            Globs::Many(globs) => globs.clone(),
        }
    }
}

fn default_format() -> Format {
    Format::Mbeir
}

fn default_max_pixels() -> u64 {
    LoadOptions::default().max_pixels
}

impl IngestConfig {
    /// A config for `format` reading `root`, everything else default.
    pub fn new(format: Format, root: PathBuf) -> Self {
        Self {
            format,
            root: Some(root),
            from: None,
            split: None,
            queries: None,
            pool: None,
            qrels: None,
            instructions: None,
            tasks: None,
            files: None,
            max_pixels: default_max_pixels(),
        }
    }

    fn layout(&self) -> mbeir::Layout {
        let mut layout = mbeir::Layout::mbeir(self.split.as_deref());
        let overrides = [
            (&self.queries, &mut layout.queries),
            (&self.pool, &mut layout.pool),
            (&self.qrels, &mut layout.qrels),
        ];
        for (given, slot) in overrides {
            if let Some(given) = given {
                *slot = given.to_vec();
            }
        }
        if let Some(given) = &self.instructions {
            layout.instructions = given.clone();
        }
        layout
    }

    /// Fills in the M-BEIR layout's default globs, so that the resolved config (and `run --check`) shows exactly
    /// which files the stage reads.
    fn resolve_layout(mut self) -> Self {
        if self.format == Format::Mbeir {
            let layout = self.layout();
            self.queries = Some(Globs::Many(layout.queries));
            self.pool = Some(Globs::Many(layout.pool));
            self.qrels = Some(Globs::Many(layout.qrels));
            self.instructions = Some(layout.instructions);
        }
        self
    }
}

/// Reads user data into umrank's datasets.
pub struct IngestStage {
    config: IngestConfig,
}

impl IngestStage {
    pub fn new(config: IngestConfig) -> Result<Self, PipelineError> {
        if config.root.is_none() && config.from.is_none() {
            return Err(PipelineError::Config {
                path: Default::default(),
                message: "[ingest]: give `root` (a directory) or `from` (an upstream stage)".into(),
            });
        }
        for pattern in [&config.queries, &config.pool, &config.qrels]
            .into_iter()
            .flatten()
            .flat_map(Globs::to_vec)
        {
            glob::Pattern::new(&pattern).map_err(|e| PipelineError::Config {
                path: Default::default(),
                message: format!("[ingest]: bad glob `{pattern}`: {e}"),
            })?;
        }
        if config.tasks.is_some() && config.format != Format::Mbeir {
            return Err(PipelineError::Config {
                path: Default::default(),
                message:
                    "[ingest]: `tasks` filters M-BEIR queries; the other formats carry no task id"
                        .into(),
            });
        }
        Ok(Self {
            config: config.resolve_layout(),
        })
    }

    fn jsonl_glob(&self) -> &str {
        self.config.files.as_deref().unwrap_or("*.jsonl")
    }

    fn root(&self, upstream: Option<&Path>) -> PathBuf {
        match (upstream, &self.config.root) {
            (Some(dir), Some(root)) => dir.join(root),
            (Some(dir), None) => dir.join(crate::schema::outputs::world::MBEIR),
            (None, Some(root)) => root.clone(),
            (None, None) => PathBuf::from("."),
        }
    }
}

impl Stage for IngestStage {
    fn name(&self) -> &'static str {
        "ingest"
    }

    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(&self.config)
    }

    fn inputs(&self) -> Vec<Input> {
        if let Some(from) = &self.config.from {
            return vec![Input::Stage(from.clone())];
        }
        let root = self.root(None);
        let files = match self.config.format {
            Format::Mbeir => mbeir::Files::resolve(&root, &self.config.layout()).map(|f| f.all()),
            Format::Flag | Format::Swift => mbeir::glob_files(&root, self.jsonl_glob()),
            Format::Parquet => Ok(TABLES
                .iter()
                .map(|t| root.join(t))
                .filter(|p| p.exists())
                .collect()),
        };
        match files {
            Ok(files) if !files.is_empty() => vec![Input::Files(files)],
            _ => vec![Input::Files(vec![root])],
        }
    }

    fn outputs(&self) -> Vec<Output> {
        vec![
            Output::dataset(outputs::ingest::CORPUS, "corpus"),
            Output::dataset(outputs::ingest::QUERIES, "queries"),
            Output::dataset(outputs::ingest::QRELS, "qrels"),
            Output::dataset(outputs::ingest::IMAGES, "images"),
        ]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let upstream = match &self.config.from {
            Some(from) => Some(ctx.upstream_dir(from)?.to_path_buf()),
            None => None,
        };
        let root = self.root(upstream.as_deref());
        let mut collection = Collection::new(ctx.shard());
        match self.config.format {
            Format::Mbeir => {
                let files = mbeir::Files::resolve(&root, &self.config.layout())?;
                if files.queries.is_empty() && files.pool.is_empty() {
                    let layout = self.config.layout();
                    return Err(Box::new(IngestError::Config(format!(
                        "no M-BEIR files under {} (looked for {} and {})",
                        root.display(),
                        layout.queries.join(", "),
                        layout.pool.join(", ")
                    ))));
                }
                let options = mbeir::ReadOptions {
                    seed: ctx.seed(),
                    tasks: self.config.tasks.clone(),
                };
                mbeir::read(&root, &files, &options, &mut collection)?;
            }
            Format::Flag | Format::Swift => {
                let files = mbeir::glob_files(&root, self.jsonl_glob())?;
                if files.is_empty() {
                    return Err(Box::new(IngestError::Config(format!(
                        "no input files matching {} under {}",
                        self.jsonl_glob(),
                        root.display()
                    ))));
                }
                let split = self.config.split.as_deref().unwrap_or("train");
                let parse = match self.config.format {
                    Format::Flag => flag::parse,
                    _ => swift::parse,
                };
                for file in &files {
                    jsonl::read(&root, file, split, &mut collection, parse)?;
                }
            }
            Format::Parquet => table::read(&root, &mut collection)?,
        }
        let images = match self.config.format {
            Format::Parquet => {
                ImageSource::Table(Dataset::open(&root.join(outputs::ingest::IMAGES))?)
            }
            _ => ImageSource::Files(ImageLoader::new(
                &root,
                LoadOptions {
                    max_pixels: self.config.max_pixels,
                    ..LoadOptions::default()
                },
            )?),
        };
        write_outputs(ctx, images, self.config.max_pixels, collection)?;
        Ok(())
    }
}

/// The datasets of the `parquet` format, under its root.
const TABLES: [&str; 4] = ["corpus", "queries", "qrels", "images"];

/// Where the images of the records come from: files named by the records, or an images dataset they key into.
enum ImageSource {
    Files(ImageLoader),
    Table(Dataset),
}

/// Loads the images of the kept records, rejects the records whose image failed and the queries left without a
/// positive, and writes the four datasets.
///
/// Documents go first: whether a query keeps a positive depends on which documents make it into the corpus, so
/// the images of the positives that other shards own are checked here too (not written). Then the queries that
/// still have a positive get their images, and the judgements are checked against what was kept.
fn write_outputs(
    ctx: &mut StageContext,
    source: ImageSource,
    max_pixels: u64,
    mut collection: Collection,
) -> Result<(), IngestError> {
    let mut images = ctx.create_dataset(outputs::ingest::IMAGES, "images")?;
    let mut sink = ImageSink::new(&mut images);

    let doc_references = distinct(collection.docs.iter().map(|d| &d.image));
    let doc_images = source.resolve(ctx, &doc_references, max_pixels, Some(&mut sink))?;
    let mut late_rejects = Vec::new();
    for doc in &collection.docs {
        if let Err(e) = image_of(&doc_images, &doc.image) {
            late_rejects.push((doc.did.clone(), image_reject(&doc.origin, &doc.did, e)));
        }
    }
    for (did, rejected) in late_rejects {
        collection.drop_doc(&did);
        collection.reject_owned(rejected);
    }
    for did in foreign_docs_without_image(ctx, &source, max_pixels, &collection)? {
        collection.drop_doc(&did);
    }
    collection.reject_queries_without_positives();

    let query_references = distinct(collection.queries.iter().map(|q| &q.image));
    let query_images = source.resolve(ctx, &query_references, max_pixels, Some(&mut sink))?;
    drop(sink);
    images.finish()?;

    let mut kept_queries = Vec::with_capacity(collection.queries.len());
    let mut rejected_queries = Vec::new();
    for query in std::mem::take(&mut collection.queries) {
        match image_of(&query_images, &query.image) {
            Ok(image_id) => kept_queries.push((query, image_id)),
            Err(e) => rejected_queries.push(image_reject(&query.origin, &query.qid, e)),
        }
    }
    for rejected in rejected_queries {
        collection.reject_owned(rejected);
    }

    let doc_rows: Vec<DocRow> = collection
        .docs
        .iter()
        .map(|doc| DocRow {
            doc,
            image_id: image_of(&doc_images, &doc.image).ok().flatten(),
        })
        .collect();
    let mut corpus = ctx.create_dataset(outputs::ingest::CORPUS, "corpus")?;
    output::write_docs(&mut corpus, &doc_rows)?;
    corpus.finish()?;
    drop(doc_rows);

    let query_rows: Vec<QueryRow> = kept_queries
        .iter()
        .map(|(query, image_id)| QueryRow {
            query,
            image_id: image_id.clone(),
        })
        .collect();
    let mut queries = ctx.create_dataset(outputs::ingest::QUERIES, "queries")?;
    output::write_queries(&mut queries, &query_rows)?;
    queries.finish()?;
    drop(query_rows);

    collection.queries = kept_queries.into_iter().map(|(query, _)| query).collect();
    let qrels = collection.finish_qrels();
    let mut qrel_writer = ctx.create_dataset(outputs::ingest::QRELS, "qrels")?;
    output::write_qrels(&mut qrel_writer, &qrels)?;
    qrel_writer.finish()?;

    if collection.repeats > 0 {
        tracing::info!(
            "ingest: {} records listed more than once with the same content, kept once",
            collection.repeats
        );
    }
    if collection.skipped() > 0 {
        tracing::info!(
            "ingest: {} queries of other tasks left out (`tasks`)",
            collection.skipped()
        );
    }
    ctx.add_records(collection.records);
    collection
        .rejects
        .sort_by(|a, b| (&a.source, a.line).cmp(&(&b.source, b.line)));
    for r in collection.rejects {
        ctx.reject(r)?;
    }
    Ok(())
}

impl ImageSource {
    /// Resolves image references, writing each image into `sink` (or only checking it, without one).
    fn resolve(
        &self,
        ctx: &mut StageContext,
        references: &[String],
        max_pixels: u64,
        sink: Option<&mut ImageSink>,
    ) -> Result<images::Resolved, IngestError> {
        match self {
            ImageSource::Files(loader) => images::load_files(ctx, loader, references, sink),
            ImageSource::Table(input) => {
                images::copy_from_table(ctx, input, references, max_pixels, sink)
            }
        }
    }
}

/// The relevant documents of this shard's queries that another shard owns and that will lack from the corpus
/// because their image fails: the owning shard rejects them, this one must drop the judgements that name them.
/// Only judged documents are checked, so a job array loads few images twice.
fn foreign_docs_without_image(
    ctx: &mut StageContext,
    source: &ImageSource,
    max_pixels: u64,
    collection: &Collection,
) -> Result<Vec<String>, IngestError> {
    let foreign = collection.foreign_positives();
    if foreign.is_empty() {
        return Ok(Vec::new());
    }
    let references: Vec<(String, String)> = foreign
        .into_iter()
        .filter_map(|did| collection.doc_image(&did).map(|image| (did, image)))
        .collect();
    let mut seen = HashSet::new();
    let images: Vec<String> = references
        .iter()
        .map(|(_, image)| image.clone())
        .filter(|image| seen.insert(image.clone()))
        .collect();
    let resolved = source.resolve(ctx, &images, max_pixels, None)?;
    Ok(references
        .into_iter()
        .filter(|(_, image)| matches!(resolved.get(image), Some(Err(_))))
        .map(|(did, _)| did)
        .collect())
}

/// The image id a record's reference resolved to (`None` for a record without image), or why it was refused.
fn image_of<'a>(
    resolved: &'a images::Resolved,
    reference: &Option<String>,
) -> Result<Option<String>, &'a crate::media::ImageReject> {
    match reference {
        None => Ok(None),
        Some(r) => match resolved.get(r) {
            Some(Ok(id)) => Ok(Some(id.clone())),
            Some(Err(e)) => Err(e),
            None => Ok(None),
        },
    }
}

fn image_reject(
    origin: &records::Origin,
    id: &str,
    e: &crate::media::ImageReject,
) -> crate::pipeline::Reject {
    reject(
        origin,
        &format!("image_{}", e.code.as_str()),
        e.detail.clone(),
    )
    .with_id(id)
}

/// The distinct references among `references`, in first-use order.
fn distinct<'a>(references: impl Iterator<Item = &'a Option<String>>) -> Vec<String> {
    let mut seen = HashSet::new();
    references
        .flatten()
        .filter(|r| seen.insert(r.as_str()))
        .cloned()
        .collect()
}

/// `path` relative to `root` for messages and the source columns, with `/` separators.
pub(crate) fn relative(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    rel.components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join("/")
}
