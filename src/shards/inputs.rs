//! The stage's inputs: the negatives rows, and the prompt parts of the queries and documents they name.
//!
//! Only what the negatives name is kept in memory: the queries and corpus datasets are streamed once and filtered
//! to those ids, so memory follows the size of the training set, not of the corpus.

use super::columns::{lists, optional, string_list, strings, struct_dids};
use super::ShardsError;
use crate::dataset::Dataset;
use crate::schema;
use crate::schema::NegativeKind;
use std::collections::{HashMap, HashSet};

/// One row of the `negatives` dataset, with where it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct NegativesRow {
    pub qid: String,
    pub positives: Vec<String>,
    /// Hard negatives in their listed (rank) order, then random negatives in their listed order.
    pub negatives: Vec<(String, NegativeKind)>,
    /// The part file the row is in.
    pub source: String,
    /// 1-based row within that part.
    pub row: u64,
}

/// Reads every row of a `negatives` dataset, part by part, checking each batch against the kind's schema.
pub fn read_negatives(dataset: &Dataset) -> Result<Vec<NegativesRow>, ShardsError> {
    let kind = schema::get("negatives").map_err(|source| ShardsError::Schema {
        path: dataset.path().to_path_buf(),
        source,
    })?;
    let mut rows = Vec::new();
    for part in dataset.parts() {
        let source = part.display().to_string();
        let mut row_in_part = 0u64;
        for batch in Dataset::open(part)?.batches()? {
            let batch = batch?;
            kind.check(&batch).map_err(|source| ShardsError::Schema {
                path: part.clone(),
                source,
            })?;
            let qid = strings(&batch, part, "qid")?;
            let positives = lists(&batch, part, "positives")?;
            let hard = lists(&batch, part, "hard")?;
            let random = lists(&batch, part, "random")?;
            for i in 0..batch.num_rows() {
                row_in_part += 1;
                let hard_dids = struct_dids(hard, i, part, "hard")?;
                let random_dids = struct_dids(random, i, part, "random")?;
                let negatives = hard_dids
                    .into_iter()
                    .map(|did| (did, NegativeKind::Hard))
                    .chain(
                        random_dids
                            .into_iter()
                            .map(|did| (did, NegativeKind::Random)),
                    )
                    .collect();
                rows.push(NegativesRow {
                    qid: qid.value(i).to_string(),
                    positives: string_list(positives, i, part, "positives")?,
                    negatives,
                    source: source.clone(),
                    row: row_in_part,
                });
            }
        }
    }
    Ok(rows)
}

/// The query side of the prompt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct QueryParts {
    pub qid: String,
    pub instruction: Option<String>,
    pub text: Option<String>,
    pub image_id: Option<String>,
}

/// The document side of the prompt.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DocParts {
    pub did: String,
    pub text: Option<String>,
    pub image_id: Option<String>,
}

/// Records interned by id: each kept once, addressed by a dense index.
#[derive(Debug, Default)]
pub struct Table<T> {
    pub rows: Vec<T>,
    index: HashMap<String, u32>,
}

impl<T> Table<T> {
    pub fn get(&self, id: &str) -> Option<u32> {
        self.index.get(id).copied()
    }

    pub fn row(&self, at: u32) -> &T {
        &self.rows[at as usize]
    }

    /// Adds a record under `id` unless one is there already (the first occurrence wins).
    fn insert(&mut self, id: &str, row: T) {
        if !self.index.contains_key(id) {
            self.index.insert(id.to_string(), self.rows.len() as u32);
            self.rows.push(row);
        }
    }
}

/// The queries among `wanted`, from a `queries` dataset.
pub fn read_queries(
    dataset: &Dataset,
    wanted: &HashSet<&str>,
) -> Result<Table<QueryParts>, ShardsError> {
    let mut table = Table::default();
    let path = dataset.path();
    for batch in dataset.batches()? {
        let batch = batch?;
        let qid = strings(&batch, path, "qid")?;
        let text = strings(&batch, path, "text")?;
        let image_id = strings(&batch, path, "image_id")?;
        let instruction = strings(&batch, path, "instruction")?;
        for i in 0..batch.num_rows() {
            let id = qid.value(i);
            if wanted.contains(id) {
                let parts = QueryParts {
                    qid: id.to_string(),
                    instruction: optional(instruction, i),
                    text: optional(text, i),
                    image_id: optional(image_id, i),
                };
                table.insert(id, parts);
            }
        }
    }
    Ok(table)
}

/// The documents among `wanted`, from a `corpus` dataset.
pub fn read_docs(
    dataset: &Dataset,
    wanted: &HashSet<&str>,
) -> Result<Table<DocParts>, ShardsError> {
    let mut table = Table::default();
    let path = dataset.path();
    for batch in dataset.batches()? {
        let batch = batch?;
        let did = strings(&batch, path, "did")?;
        let text = strings(&batch, path, "text")?;
        let image_id = strings(&batch, path, "image_id")?;
        for i in 0..batch.num_rows() {
            let id = did.value(i);
            if wanted.contains(id) {
                let parts = DocParts {
                    did: id.to_string(),
                    text: optional(text, i),
                    image_id: optional(image_id, i),
                };
                table.insert(id, parts);
            }
        }
    }
    Ok(table)
}
