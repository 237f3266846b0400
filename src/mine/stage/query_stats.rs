//! The `query_stats` dataset (schemas/mine_stats.json): each mined query's share of the statistics, so that the
//! table of a stage run as a job array can be merged from its parts exactly.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, AsArray, BooleanArray, Float32Builder, ListArray, ListBuilder, RecordBatch,
    StringArray, UInt32Array, UInt32Builder,
};
use arrow::datatypes::{Float32Type, UInt32Type};

use super::error::MineStageError;
use crate::dataset::{Dataset, DatasetWriter};
use crate::mine::{DropCounts, FilterKind, QueryStats};

/// Rows per written batch.
const BATCH_ROWS: usize = 4096;

pub(super) fn write(
    writer: &mut DatasetWriter,
    queries: &[QueryStats],
) -> Result<(), MineStageError> {
    let path = writer.path().to_path_buf();
    for chunk in queries.chunks(BATCH_ROWS) {
        let scores = |pick: fn(&QueryStats) -> &[f32]| -> ArrayRef {
            let mut list = ListBuilder::new(Float32Builder::new())
                .with_field(item_field(arrow::datatypes::DataType::Float32));
            for query in chunk {
                list.values().append_slice(pick(query));
                list.append(true);
            }
            Arc::new(list.finish())
        };
        let mut dropped = ListBuilder::new(UInt32Builder::new())
            .with_field(item_field(arrow::datatypes::DataType::UInt32));
        for query in chunk {
            for kind in FilterKind::ALL {
                dropped
                    .values()
                    .append_value(count(query.dropped.get(kind)));
            }
            dropped.append(true);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(chunk.iter().map(|q| &q.qid))),
            scores(|q| &q.positives),
            scores(|q| &q.hard),
            scores(|q| &q.random),
            Arc::new(dropped.finish()),
            Arc::new(UInt32Array::from_iter_values(
                chunk.iter().map(|q| count(q.short)),
            )),
            Arc::new(UInt32Array::from_iter_values(
                chunk.iter().map(|q| count(q.groups)),
            )),
            Arc::new(BooleanArray::from_iter(
                chunk.iter().map(|q| Some(q.without_positives)),
            )),
        ];
        let batch = RecordBatch::try_new(writer.arrow_schema(), columns).map_err(|source| {
            MineStageError::Arrow {
                path: path.clone(),
                source,
            }
        })?;
        writer.write(&batch)?;
    }
    Ok(())
}

/// Every row of the dataset under `dir` (all the parts a job array wrote).
pub(super) fn read(dir: &Path) -> Result<Vec<QueryStats>, MineStageError> {
    let mut queries = Vec::new();
    for batch in Dataset::open(dir)?.batches()? {
        let batch = batch?;
        let bad = |column: &'static str| MineStageError::Column {
            path: dir.to_path_buf(),
            column,
            problem: "missing, or not of the type schemas/mine_stats.json gives".into(),
        };
        let qids = batch
            .column_by_name("qid")
            .and_then(|c| c.as_string_opt::<i32>())
            .ok_or_else(|| bad("qid"))?;
        let list = |column: &'static str| {
            batch
                .column_by_name(column)
                .and_then(|c| c.as_list_opt::<i32>())
                .ok_or_else(|| bad(column))
        };
        let (positives, hard, random, dropped) = (
            list("positive_scores")?,
            list("hard_scores")?,
            list("random_scores")?,
            list("dropped")?,
        );
        let number = |column: &'static str| {
            batch
                .column_by_name(column)
                .and_then(|c| c.as_primitive_opt::<UInt32Type>())
                .ok_or_else(|| bad(column))
        };
        let (short, groups) = (number("short")?, number("groups")?);
        let without = batch
            .column_by_name("without_positives")
            .and_then(|c| c.as_boolean_opt())
            .ok_or_else(|| bad("without_positives"))?;
        for row in 0..batch.num_rows() {
            queries.push(QueryStats {
                qid: qids.value(row).to_string(),
                positives: floats(positives, row),
                hard: floats(hard, row),
                random: floats(random, row),
                dropped: drop_counts(dropped, row),
                short: short.value(row) as usize,
                groups: groups.value(row) as usize,
                without_positives: without.value(row),
            });
        }
    }
    Ok(queries)
}

fn floats(list: &ListArray, row: usize) -> Vec<f32> {
    list.value(row)
        .as_primitive::<Float32Type>()
        .values()
        .to_vec()
}

fn drop_counts(list: &ListArray, row: usize) -> DropCounts {
    let values = list.value(row);
    let values = values.as_primitive::<UInt32Type>();
    let at = |i: usize| {
        if i < values.len() {
            values.value(i) as usize
        } else {
            0
        }
    };
    DropCounts {
        rank_window: at(0),
        max_score: at(1),
        relative_margin: at(2),
        absolute_margin: at(3),
    }
}

fn count(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

fn item_field(data_type: arrow::datatypes::DataType) -> arrow::datatypes::FieldRef {
    Arc::new(arrow::datatypes::Field::new("item", data_type, false))
}
