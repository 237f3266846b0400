//! The `candidates` and `negatives` datasets, as Arrow batches (schemas/candidates.json, schemas/negatives.json).

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float32Array, ListArray, RecordBatch, StringArray, StructArray, UInt32Array,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Schema};
use arrow::error::ArrowError;
use serde::Serialize;

use super::error::MineStageError;
use crate::dataset::DatasetWriter;
use crate::mine::{FilterConfig, Hit, QueryNegatives};
use crate::schema::NegativeKind;

/// Rows per written batch.
const BATCH_ROWS: usize = 4096;

/// One query's first-stage list.
pub(super) struct CandidateRow {
    pub qid: String,
    pub hits: Vec<Hit>,
}

/// One query's negatives, with what the filter saw.
pub(super) struct NegativeRow {
    pub qid: String,
    /// Every relevant did of the query.
    pub positives: Vec<String>,
    pub negatives: QueryNegatives,
    pub min_positive: Option<f32>,
}

/// The `filter` column: the settings that applied and the query's own threshold, as one JSON object.
#[derive(Serialize)]
struct FilterProvenance {
    #[serde(flatten)]
    config: FilterConfig,
    /// The weakest positive's score.
    min_positive: Option<f32>,
    /// The score every kept candidate is below (the lowest of the active rules').
    ceiling: Option<f32>,
}

/// Writes the rows in the order given; `ids` maps document numbers to dids.
pub(super) fn write_candidates(
    writer: &mut DatasetWriter,
    rows: &[CandidateRow],
    ids: &[String],
    retriever: &str,
    k: u32,
) -> Result<(), MineStageError> {
    let schema = writer.arrow_schema();
    let path = writer.path().to_path_buf();
    let arrow = |source| MineStageError::Arrow {
        path: path.clone(),
        source,
    };
    for chunk in rows.chunks(BATCH_ROWS) {
        let mut hits = Ranked::default();
        let mut offsets = vec![0i32];
        for row in chunk {
            for (position, hit) in row.hits.iter().enumerate() {
                hits.push(&ids[hit.doc as usize], hit.score, Some(position as u32 + 1));
            }
            offsets.push(hits.len());
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                chunk.iter().map(|row| &row.qid),
            )),
            list_of_structs(&schema, "ranked", offsets, hits.columns()).map_err(&arrow)?,
            Arc::new(StringArray::from(vec![retriever; chunk.len()])),
            Arc::new(UInt32Array::from(vec![k; chunk.len()])),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(&arrow)?;
        writer.write(&batch)?;
    }
    Ok(())
}

pub(super) fn write_negatives(
    writer: &mut DatasetWriter,
    rows: &[NegativeRow],
    ids: &[String],
    retriever: &str,
) -> Result<(), MineStageError> {
    let schema = writer.arrow_schema();
    let path = writer.path().to_path_buf();
    let arrow = |source| MineStageError::Arrow {
        path: path.clone(),
        source,
    };
    for chunk in rows.chunks(BATCH_ROWS) {
        let mut positives: Vec<&str> = Vec::new();
        let mut positive_offsets = vec![0i32];
        let (mut hard, mut random) = (Ranked::default(), Ranked::default());
        let (mut hard_offsets, mut random_offsets) = (vec![0i32], vec![0i32]);
        let mut filters = Vec::with_capacity(chunk.len());
        for row in chunk {
            positives.extend(row.positives.iter().map(String::as_str));
            positive_offsets.push(offset(positives.len()));
            for negative in &row.negatives.negatives {
                let did = &ids[negative.doc as usize];
                match negative.kind {
                    NegativeKind::Hard => hard.push(did, negative.score, negative.rank),
                    NegativeKind::Random => random.push(did, negative.score, None),
                }
            }
            hard_offsets.push(hard.len());
            random_offsets.push(random.len());
            filters.push(filter_json(row).map_err(|source| MineStageError::Json {
                path: path.clone(),
                source,
            })?);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                chunk.iter().map(|row| &row.qid),
            )),
            list_of_strings(&schema, "positives", positive_offsets, positives).map_err(&arrow)?,
            list_of_structs(&schema, "hard", hard_offsets, hard.columns()).map_err(&arrow)?,
            list_of_structs(&schema, "random", random_offsets, random.columns_unranked())
                .map_err(&arrow)?,
            Arc::new(UInt32Array::from_iter_values(
                chunk.iter().map(|row| row.negatives.short() as u32),
            )),
            Arc::new(StringArray::from(filters)),
            Arc::new(StringArray::from(vec![retriever; chunk.len()])),
        ];
        let batch = RecordBatch::try_new(schema.clone(), columns).map_err(&arrow)?;
        writer.write(&batch)?;
    }
    Ok(())
}

fn filter_json(row: &NegativeRow) -> Result<String, serde_json::Error> {
    serde_json::to_string(&FilterProvenance {
        config: row.negatives.filter,
        min_positive: row.min_positive,
        ceiling: row.negatives.ceiling,
    })
}

/// The columns of a list of (did, score, rank) structs, flattened over many rows.
#[derive(Default)]
struct Ranked<'a> {
    dids: Vec<&'a str>,
    scores: Vec<f32>,
    ranks: Vec<u32>,
}

impl<'a> Ranked<'a> {
    fn push(&mut self, did: &'a str, score: f32, rank: Option<u32>) {
        self.dids.push(did);
        self.scores.push(score);
        if let Some(rank) = rank {
            self.ranks.push(rank);
        }
    }

    fn len(&self) -> i32 {
        offset(self.dids.len())
    }

    fn columns(self) -> Vec<ArrayRef> {
        vec![
            Arc::new(StringArray::from(self.dids)),
            Arc::new(Float32Array::from(self.scores)),
            Arc::new(UInt32Array::from(self.ranks)),
        ]
    }

    fn columns_unranked(self) -> Vec<ArrayRef> {
        vec![
            Arc::new(StringArray::from(self.dids)),
            Arc::new(Float32Array::from(self.scores)),
        ]
    }
}

/// List offsets are i32: a batch holds at most [`BATCH_ROWS`] rows of lists bounded by k or N, far below that.
fn offset(len: usize) -> i32 {
    i32::try_from(len).unwrap_or(i32::MAX)
}

/// A `list<struct>` column with the item field exactly as the dataset schema declares it.
fn list_of_structs(
    schema: &Schema,
    column: &str,
    offsets: Vec<i32>,
    children: Vec<ArrayRef>,
) -> Result<ArrayRef, ArrowError> {
    let item = list_item(schema, column)?;
    let DataType::Struct(fields) = item.data_type() else {
        return Err(ArrowError::SchemaError(format!(
            "`{column}` is not a list of structs"
        )));
    };
    let values = StructArray::try_new(fields.clone(), children, None)?;
    Ok(Arc::new(ListArray::try_new(
        item,
        OffsetBuffer::new(offsets.into()),
        Arc::new(values),
        None,
    )?))
}

fn list_of_strings(
    schema: &Schema,
    column: &str,
    offsets: Vec<i32>,
    values: Vec<&str>,
) -> Result<ArrayRef, ArrowError> {
    Ok(Arc::new(ListArray::try_new(
        list_item(schema, column)?,
        OffsetBuffer::new(offsets.into()),
        Arc::new(StringArray::from(values)),
        None,
    )?))
}

fn list_item(schema: &Schema, column: &str) -> Result<arrow::datatypes::FieldRef, ArrowError> {
    match schema.field_with_name(column)?.data_type() {
        DataType::List(item) => Ok(item.clone()),
        _ => Err(ArrowError::SchemaError(format!("`{column}` is not a list"))),
    }
}
