//! Reading what the eval stage needs: the first-stage lists (`candidates`), and from the ingest stage the
//! queries and documents on those lists, the qrels of the evaluated queries, and the images they show.
//!
//! Only what the lists reference is kept in memory: the corpus and the images dataset are streamed and filtered.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray, RecordBatch, StringArray};
use arrow::datatypes::{Float32Type, Int32Type};

use super::stage_error::EvalStageError;
use super::Qrels;
use crate::dataset::Dataset;

/// One query's first-stage list, best first, cut to K.
#[derive(Debug, Clone, PartialEq)]
pub struct CandidateList {
    pub qid: String,
    /// `(did, retriever score)` in rank order.
    pub ranked: Vec<(String, f32)>,
    /// The retriever's fingerprint.
    pub retriever: String,
}

/// A query as the reranker sees it, with the split and task it is evaluated under.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct QueryInfo {
    pub text: Option<String>,
    pub image_id: Option<String>,
    pub instruction: Option<String>,
    /// The M-BEIR task name, or the dataset name when the input has no task: the macro-average group.
    pub group: String,
    pub split: String,
}

/// A document as the reranker sees it.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DocInfo {
    pub text: Option<String>,
    pub image_id: Option<String>,
}

/// Reads every `candidates` row, each list cut to its first `k` entries by rank.
pub fn read_candidates(path: &Path, k: usize) -> Result<Vec<CandidateList>, EvalStageError> {
    let mut lists = Vec::new();
    for batch in Dataset::open(path)?.batches()? {
        let batch = batch?;
        let qids = strings(&batch, "qid", path)?;
        let retrievers = strings(&batch, "retriever", path)?;
        let ranked = column(&batch, "ranked", path)?.as_list::<i32>();
        for row in 0..batch.num_rows() {
            let entries = ranked.value(row);
            let entries = entries.as_struct();
            let dids = entries
                .column_by_name("did")
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| bad_column(path, "ranked.did", "missing or not utf8"))?;
            let scores = entries
                .column_by_name("score")
                .and_then(|c| c.as_primitive_opt::<Float32Type>())
                .ok_or_else(|| bad_column(path, "ranked.score", "missing or not float32"))?;
            let ranks = entries
                .column_by_name("rank")
                .and_then(|c| c.as_primitive_opt::<arrow::datatypes::UInt32Type>())
                .ok_or_else(|| bad_column(path, "ranked.rank", "missing or not uint32"))?;
            let mut order: Vec<usize> = (0..entries.len()).collect();
            order.sort_by_key(|&i| ranks.value(i));
            let ranked = order
                .into_iter()
                .take(k)
                .map(|i| (dids.value(i).to_owned(), scores.value(i)))
                .collect();
            lists.push(CandidateList {
                qid: qids.value(row).to_owned(),
                ranked,
                retriever: retrievers.value(row).to_owned(),
            });
        }
    }
    lists.sort_by(|a, b| a.qid.cmp(&b.qid));
    if let Some(pair) = lists.windows(2).find(|pair| pair[0].qid == pair[1].qid) {
        return Err(bad_column(
            path,
            "qid",
            &format!("query {:?} has two lists", pair[0].qid),
        ));
    }
    Ok(lists)
}

/// Every query of the queries dataset, by qid.
pub fn read_queries(path: &Path) -> Result<BTreeMap<String, QueryInfo>, EvalStageError> {
    let mut queries = BTreeMap::new();
    for batch in Dataset::open(path)?.batches()? {
        let batch = batch?;
        let qids = strings(&batch, "qid", path)?;
        let texts = strings(&batch, "text", path)?;
        let images = strings(&batch, "image_id", path)?;
        let instructions = strings(&batch, "instruction", path)?;
        let tasks = strings(&batch, "task", path)?;
        let datasets = strings(&batch, "dataset", path)?;
        let splits = strings(&batch, "split", path)?;
        for row in 0..batch.num_rows() {
            let group = optional(tasks, row).unwrap_or_else(|| datasets.value(row).to_owned());
            let query = QueryInfo {
                text: optional(texts, row),
                image_id: optional(images, row),
                instruction: optional(instructions, row),
                group,
                split: splits.value(row).to_owned(),
            };
            if queries.insert(qids.value(row).to_owned(), query).is_some() {
                return Err(bad_column(
                    path,
                    "qid",
                    &format!("query {:?} appears twice", qids.value(row)),
                ));
            }
        }
    }
    Ok(queries)
}

/// The documents among `wanted`, by did.
pub fn read_documents(
    path: &Path,
    wanted: &HashSet<&str>,
) -> Result<HashMap<String, DocInfo>, EvalStageError> {
    let mut docs = HashMap::with_capacity(wanted.len());
    for batch in Dataset::open(path)?.batches()? {
        let batch = batch?;
        let dids = strings(&batch, "did", path)?;
        let texts = strings(&batch, "text", path)?;
        let images = strings(&batch, "image_id", path)?;
        for row in 0..batch.num_rows() {
            let did = dids.value(row);
            if wanted.contains(did) {
                let doc = DocInfo {
                    text: optional(texts, row),
                    image_id: optional(images, row),
                };
                docs.insert(did.to_owned(), doc);
            }
        }
    }
    Ok(docs)
}

/// The judgements of the queries in `queries`.
pub fn read_qrels(path: &Path, queries: &BTreeSet<&str>) -> Result<Qrels, EvalStageError> {
    let mut qrels = Qrels::new();
    for batch in Dataset::open(path)?.batches()? {
        let batch = batch?;
        let qids = strings(&batch, "qid", path)?;
        let dids = strings(&batch, "did", path)?;
        let relevance = column(&batch, "relevance", path)?
            .as_primitive_opt::<Int32Type>()
            .ok_or_else(|| bad_column(path, "relevance", "not int32"))?;
        for row in 0..batch.num_rows() {
            let qid = qids.value(row);
            if queries.contains(qid) {
                qrels
                    .entry(qid.to_owned())
                    .or_default()
                    .insert(dids.value(row).to_owned(), i64::from(relevance.value(row)));
            }
        }
    }
    Ok(qrels)
}

pub(super) fn column<'b>(
    batch: &'b RecordBatch,
    name: &'static str,
    path: &Path,
) -> Result<&'b std::sync::Arc<dyn Array>, EvalStageError> {
    batch
        .column_by_name(name)
        .ok_or_else(|| bad_column(path, name, "missing"))
}

pub(super) fn strings<'b>(
    batch: &'b RecordBatch,
    name: &'static str,
    path: &Path,
) -> Result<&'b StringArray, EvalStageError> {
    column(batch, name, path)?
        .as_string_opt::<i32>()
        .ok_or_else(|| bad_column(path, name, "not utf8"))
}

fn optional(array: &StringArray, row: usize) -> Option<String> {
    array.is_valid(row).then(|| array.value(row).to_owned())
}

pub(super) fn bad_column(path: &Path, column: &str, problem: &str) -> EvalStageError {
    EvalStageError::Column {
        path: PathBuf::from(path),
        column: column.to_owned(),
        problem: problem.to_owned(),
    }
}
