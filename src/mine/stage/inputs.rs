//! Reading the mine stage's inputs: the ingest stage's corpus, queries and qrels, and the embed stage's vectors,
//! into the in-memory layout the search wants.
//!
//! Documents are numbered in (scope, did) order, so that each scope (a candidate pool, or the whole corpus)
//! is one contiguous range of rows: one [`CorpusPart`](crate::mine::CorpusPart) per scope. Queries are kept in
//! (scope, qid) order for the same reason. A document or query without an embedding is left out and becomes a
//! reject row (in the shard that owns its id, so that a job array lists each once).

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, FixedSizeListArray, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Float32Type, Int32Type};

use super::config::{MineConfig, Scope};
use super::error::MineStageError;
use crate::dataset::Dataset;
use crate::mine::MineError;
use crate::pipeline::Reject;
use crate::schema::outputs;
use crate::shard::Shard;

/// The documents that have embeddings, in (scope, did) order.
pub(super) struct Corpus {
    pub ids: Vec<String>,
    /// The scope key of each document (its pool, or "" when the scope is the whole corpus).
    scopes: Vec<String>,
    pub vectors: Vec<f32>,
}

impl Corpus {
    /// The rows of the documents in `scope` (empty when it has none).
    pub fn scope_range(&self, scope: &str) -> Range<usize> {
        let start = self.scopes.partition_point(|s| s.as_str() < scope);
        let end = self.scopes.partition_point(|s| s.as_str() <= scope);
        start..end
    }
}

/// A query this shard mines, with what it is mined for.
pub(super) struct QueryRecord {
    pub qid: String,
    pub scope: String,
    pub candidates: bool,
    pub negatives: bool,
    /// Every relevant did in the qrels (relevance > 0), sorted.
    pub positives: Vec<String>,
}

/// Everything read, ready to search.
pub(super) struct Loaded {
    pub corpus: Corpus,
    /// Queries with embeddings, in (scope, qid) order; row i of `query_vectors` is query i.
    pub queries: Vec<QueryRecord>,
    pub query_vectors: Vec<f32>,
    pub dim: usize,
    /// The embedding model's fingerprint: the retriever of every list this stage writes.
    pub model: String,
    pub rejects: Vec<Reject>,
    /// Input records this shard answers for (its queries and documents), the base of the reject share.
    pub records: u64,
}

/// The dataset directories read.
pub(super) struct Paths {
    pub corpus: PathBuf,
    pub queries: PathBuf,
    pub qrels: PathBuf,
    pub doc_embeddings: PathBuf,
    pub query_embeddings: PathBuf,
}

impl Paths {
    pub fn new(ingest: &Path, embed: &Path) -> Self {
        Self {
            corpus: ingest.join(outputs::ingest::CORPUS),
            queries: ingest.join(outputs::ingest::QUERIES),
            qrels: ingest.join(outputs::ingest::QRELS),
            doc_embeddings: embed.join(outputs::embed::DOC_EMBEDDINGS),
            query_embeddings: embed.join(outputs::embed::QUERY_EMBEDDINGS),
        }
    }
}

pub(super) fn load(
    paths: &Paths,
    config: &MineConfig,
    shard: Shard,
) -> Result<Loaded, MineStageError> {
    let docs = read_corpus(&paths.corpus, config.scope)?;
    let mut queries = read_queries(&paths.queries, config, shard)?;
    read_positives(&paths.qrels, &mut queries)?;
    let embedded = read_embeddings(paths, &docs, &queries)?;

    let mut rejects = Vec::new();
    let mut records = 0u64;
    let mut corpus = Corpus {
        ids: Vec::new(),
        scopes: Vec::new(),
        vectors: Vec::new(),
    };
    for (index, (scope, did)) in docs.into_iter().enumerate() {
        let owned = shard.owns(&did);
        records += u64::from(owned);
        match embedded.doc(index) {
            Some(vector) => {
                corpus.vectors.extend_from_slice(vector);
                corpus.ids.push(did);
                corpus.scopes.push(scope);
            }
            None if owned => rejects.push(no_embedding(&paths.corpus, "document", did)),
            None => {}
        }
    }
    let mut kept = Vec::with_capacity(queries.len());
    let mut query_vectors = Vec::new();
    for (index, query) in queries.into_iter().enumerate() {
        records += 1;
        match embedded.query(index) {
            Some(vector) => {
                query_vectors.extend_from_slice(vector);
                kept.push(query);
            }
            None => rejects.push(no_embedding(&paths.queries, "query", query.qid)),
        }
    }
    Ok(Loaded {
        corpus,
        queries: kept,
        query_vectors,
        dim: embedded.dim,
        model: embedded.model,
        rejects,
        records,
    })
}

fn no_embedding(dataset: &Path, what: &str, id: String) -> Reject {
    Reject::new(
        dataset.display().to_string(),
        "no_embedding",
        format!("the embeddings dataset has no vector for this {what}: it is left out of mining"),
    )
    .with_id(id)
}

/// (scope, did) of every document, sorted.
fn read_corpus(path: &Path, scope: Scope) -> Result<Vec<(String, String)>, MineStageError> {
    let mut docs = Vec::new();
    for batch in Dataset::open(path)?.batches()? {
        let batch = batch?;
        let dids = strings(&batch, "did", path)?;
        let pools = strings(&batch, "pool", path)?;
        for row in 0..batch.num_rows() {
            let key = match scope {
                Scope::Pool => pools.value(row).to_string(),
                Scope::Corpus => String::new(),
            };
            docs.push((key, dids.value(row).to_string()));
        }
    }
    docs.sort_unstable();
    Ok(docs)
}

/// The queries of this shard in the splits that get candidates or negatives, sorted by (scope, qid).
fn read_queries(
    path: &Path,
    config: &MineConfig,
    shard: Shard,
) -> Result<Vec<QueryRecord>, MineStageError> {
    let mut queries = Vec::new();
    for batch in Dataset::open(path)?.batches()? {
        let batch = batch?;
        let qids = strings(&batch, "qid", path)?;
        let splits = strings(&batch, "split", path)?;
        let pools = strings(&batch, "pool", path)?;
        for row in 0..batch.num_rows() {
            let (qid, split) = (qids.value(row), splits.value(row));
            let candidates = config.wants_candidates(split);
            let negatives = config.wants_negatives(split);
            if !(candidates || negatives) || !shard.owns(qid) {
                continue;
            }
            queries.push(QueryRecord {
                qid: qid.to_string(),
                scope: match config.scope {
                    Scope::Pool => pools.value(row).to_string(),
                    Scope::Corpus => String::new(),
                },
                candidates,
                negatives,
                positives: Vec::new(),
            });
        }
    }
    queries.sort_unstable_by(|a, b| (&a.scope, &a.qid).cmp(&(&b.scope, &b.qid)));
    if let Some(pair) = queries.windows(2).find(|pair| pair[0].qid == pair[1].qid) {
        return Err(MineStageError::Column {
            path: path.to_path_buf(),
            column: "qid",
            problem: format!("query id {:?} appears twice", pair[0].qid),
        });
    }
    Ok(queries)
}

/// Attaches each mined-for-negatives query's relevant documents (relevance > 0, trec_eval's convention).
fn read_positives(path: &Path, queries: &mut [QueryRecord]) -> Result<(), MineStageError> {
    let index: HashMap<&str, usize> = queries
        .iter()
        .enumerate()
        .filter(|(_, query)| query.negatives)
        .map(|(i, query)| (query.qid.as_str(), i))
        .collect();
    let mut found: Vec<(usize, String)> = Vec::new();
    for batch in Dataset::open(path)?.batches()? {
        let batch = batch?;
        let qids = strings(&batch, "qid", path)?;
        let dids = strings(&batch, "did", path)?;
        let relevance = batch
            .column_by_name("relevance")
            .and_then(|column| column.as_primitive_opt::<Int32Type>())
            .ok_or_else(|| missing_column(path, "relevance", "int32"))?;
        for row in 0..batch.num_rows() {
            if relevance.value(row) <= 0 {
                continue;
            }
            if let Some(&query) = index.get(qids.value(row)) {
                found.push((query, dids.value(row).to_string()));
            }
        }
    }
    for (query, did) in found {
        queries[query].positives.push(did);
    }
    for query in queries.iter_mut() {
        query.positives.sort_unstable();
        query.positives.dedup();
    }
    Ok(())
}

/// The embedding of each document and query (by position in the lists handed in), where there is one.
struct Embedded {
    dim: usize,
    model: String,
    docs: Vectors,
    queries: Vectors,
}

impl Embedded {
    fn doc(&self, index: usize) -> Option<&[f32]> {
        self.docs.get(index, self.dim)
    }

    fn query(&self, index: usize) -> Option<&[f32]> {
        self.queries.get(index, self.dim)
    }
}

/// One side's vectors, row i for the i-th id asked for.
struct Vectors {
    values: Vec<f32>,
    present: Vec<bool>,
}

impl Vectors {
    fn new(rows: usize, dim: usize) -> Self {
        Self {
            values: vec![0.0; rows * dim],
            present: vec![false; rows],
        }
    }

    fn get(&self, index: usize, dim: usize) -> Option<&[f32]> {
        self.present[index].then(|| &self.values[index * dim..(index + 1) * dim])
    }
}

/// Reads the vectors of the listed documents and queries from the embed stage's two datasets; rows for other ids
/// (other shards' queries, splits not mined) are skipped. Both datasets must have the same width and every row
/// the same model, and no id may have two vectors.
fn read_embeddings(
    paths: &Paths,
    docs: &[(String, String)],
    queries: &[QueryRecord],
) -> Result<Embedded, MineStageError> {
    let doc_dataset = Dataset::open(&paths.doc_embeddings)?;
    let query_dataset = Dataset::open(&paths.query_embeddings)?;
    let dim = vector_width(&doc_dataset, &paths.doc_embeddings)?;
    let query_dim = vector_width(&query_dataset, &paths.query_embeddings)?;
    if query_dim != dim {
        return Err(MineStageError::Mine(MineError::DimensionMismatch {
            queries: query_dim,
            documents: dim,
        }));
    }
    let doc_index: HashMap<&str, usize> = docs
        .iter()
        .enumerate()
        .map(|(i, (_, did))| (did.as_str(), i))
        .collect();
    let query_index: HashMap<&str, usize> = queries
        .iter()
        .enumerate()
        .map(|(i, query)| (query.qid.as_str(), i))
        .collect();
    let mut model = None;
    let mut read = |dataset: &Dataset, path: &Path, kind: &str, index: &HashMap<&str, usize>| {
        let mut vectors = Vectors::new(index.len(), dim);
        read_side(dataset, path, kind, index, dim, &mut model, &mut vectors)?;
        Ok::<_, MineStageError>(vectors)
    };
    let doc_vectors = read(&doc_dataset, &paths.doc_embeddings, "doc", &doc_index)?;
    let query_vectors = read(
        &query_dataset,
        &paths.query_embeddings,
        "query",
        &query_index,
    )?;
    Ok(Embedded {
        dim,
        model: model.ok_or_else(|| MineStageError::NoEmbeddings {
            path: paths.doc_embeddings.clone(),
        })?,
        docs: doc_vectors,
        queries: query_vectors,
    })
}

/// Reads one embeddings dataset whose rows are all of `kind` into `vectors`, for the ids in `index`. `model`
/// holds the first row's model across both datasets.
fn read_side(
    dataset: &Dataset,
    path: &Path,
    kind: &str,
    index: &HashMap<&str, usize>,
    dim: usize,
    model: &mut Option<String>,
    vectors: &mut Vectors,
) -> Result<(), MineStageError> {
    let mut row_base = 0u64;
    for batch in dataset.batches()? {
        let batch = batch?;
        let ids = strings(&batch, "id", path)?;
        let kinds = strings(&batch, "kind", path)?;
        let models = strings(&batch, "model", path)?;
        let lists = batch
            .column_by_name("vector")
            .and_then(|column| column.as_fixed_size_list_opt())
            .ok_or_else(|| missing_column(path, "vector", "fixed_size_list<float32>"))?;
        let values = vector_values(lists, path)?;
        for row in 0..batch.num_rows() {
            let at = row_base + row as u64 + 1;
            check_model(model, models.value(row), path, at)?;
            if kinds.value(row) != kind {
                return Err(row_error(
                    path,
                    at,
                    format!(
                        "kind must be `{kind}` in this dataset, found {:?}",
                        kinds.value(row)
                    ),
                ));
            }
            let Some(&index) = index.get(ids.value(row)) else {
                continue;
            };
            if lists.is_null(row) {
                return Err(row_error(
                    path,
                    at,
                    format!("no vector for {:?}", ids.value(row)),
                ));
            }
            if std::mem::replace(&mut vectors.present[index], true) {
                return Err(row_error(
                    path,
                    at,
                    format!("a second vector for {kind} {:?}", ids.value(row)),
                ));
            }
            let offset = lists.value_offset_at(row);
            vectors.values[index * dim..(index + 1) * dim]
                .copy_from_slice(&values[offset..offset + dim]);
        }
        row_base += batch.num_rows() as u64;
    }
    Ok(())
}

/// Every row must come from the model of the first row read.
fn check_model(
    first: &mut Option<String>,
    model: &str,
    path: &Path,
    row: u64,
) -> Result<(), MineStageError> {
    match first {
        None => *first = Some(model.to_string()),
        Some(first) if first != model => {
            return Err(MineStageError::MixedModels {
                path: path.to_path_buf(),
                first: first.clone(),
                second: model.to_string(),
                row,
            })
        }
        Some(_) => {}
    }
    Ok(())
}

/// The embedding width, from the dataset's schema.
fn vector_width(dataset: &Dataset, path: &Path) -> Result<usize, MineStageError> {
    let schema = dataset.schema()?;
    let width = schema
        .field_with_name("vector")
        .ok()
        .and_then(|field| match field.data_type() {
            DataType::FixedSizeList(item, width) if item.data_type() == &DataType::Float32 => {
                usize::try_from(*width).ok()
            }
            _ => None,
        })
        .filter(|&width| width > 0);
    width.ok_or_else(|| missing_column(path, "vector", "fixed_size_list<float32> of width >= 1"))
}

fn vector_values<'a>(
    vectors: &'a FixedSizeListArray,
    path: &Path,
) -> Result<&'a [f32], MineStageError> {
    let values = vectors
        .values()
        .as_primitive_opt::<Float32Type>()
        .ok_or_else(|| missing_column(path, "vector", "fixed_size_list<float32>"))?;
    if values.null_count() > 0 {
        return Err(MineStageError::Column {
            path: path.to_path_buf(),
            column: "vector",
            problem: "a vector holds a null value".into(),
        });
    }
    Ok(values.values())
}

fn strings<'a>(
    batch: &'a RecordBatch,
    column: &'static str,
    path: &Path,
) -> Result<&'a StringArray, MineStageError> {
    let array = batch
        .column_by_name(column)
        .and_then(|column| column.as_string_opt::<i32>())
        .ok_or_else(|| missing_column(path, column, "utf8"))?;
    if array.null_count() > 0 {
        return Err(MineStageError::Column {
            path: path.to_path_buf(),
            column,
            problem: "holds nulls".into(),
        });
    }
    Ok(array)
}

fn missing_column(path: &Path, column: &'static str, ty: &str) -> MineStageError {
    MineStageError::Column {
        path: path.to_path_buf(),
        column,
        problem: format!("missing, or not of type {ty}"),
    }
}

fn row_error(path: &Path, row: u64, problem: String) -> MineStageError {
    MineStageError::Row {
        path: path.to_path_buf(),
        row,
        problem,
    }
}
