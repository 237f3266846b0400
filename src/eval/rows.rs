//! The eval stage's datasets: both runs as `run` rows, and every query's metric values as `metrics` rows; and
//! reading them back, which is how the merge after a job array gathers what its shards computed.
//!
//! Scores and values are float64 columns, so a value read back has the bits it was written with: the merge
//! recomputes nothing that a shard already computed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Builder, RecordBatch, StringBuilder, UInt32Builder,
};
use arrow::datatypes::Float64Type;

use super::inputs::{bad_column, column, strings};
use super::metrics::PerQuery;
use super::stage_error::EvalStageError;
use super::{ranked_documents, EvalError, Metric, Run};
use crate::dataset::{Dataset, DatasetError, DatasetWriter};

/// One row per ranked document of each `(run name, run)`, ranks 1..n in trec_eval's order, queries in id order.
pub(super) fn write_runs(
    writer: &mut DatasetWriter,
    runs: &[(&str, &Run)],
) -> Result<(), EvalStageError> {
    let (mut qid, mut did, mut rank, mut score, mut run_name) = (
        StringBuilder::new(),
        StringBuilder::new(),
        UInt32Builder::new(),
        Float64Builder::new(),
        StringBuilder::new(),
    );
    for (name, run) in runs {
        for (query, scores) in *run {
            for (index, (doc, value)) in ranked_documents(scores).into_iter().enumerate() {
                qid.append_value(query);
                did.append_value(doc);
                rank.append_value(u32::try_from(index + 1).unwrap_or(u32::MAX));
                score.append_value(value);
                run_name.append_value(name);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(qid.finish()),
        Arc::new(did.finish()),
        Arc::new(rank.finish()),
        Arc::new(score.finish()),
        Arc::new(run_name.finish()),
    ];
    write_batch(writer, columns)
}

/// Reads a `run` dataset (every part) back as run name -> run.
pub(super) fn read_runs(path: &Path) -> Result<BTreeMap<String, Run>, EvalStageError> {
    let mut runs: BTreeMap<String, Run> = BTreeMap::new();
    for batch in Dataset::open(path)?.batches()? {
        let batch = batch?;
        let (qids, dids, names) = (
            strings(&batch, "qid", path)?,
            strings(&batch, "did", path)?,
            strings(&batch, "run_name", path)?,
        );
        let scores = floats(&batch, "score", path)?;
        for row in 0..batch.num_rows() {
            let (qid, did) = (qids.value(row), dids.value(row));
            let previous = runs
                .entry(names.value(row).to_owned())
                .or_default()
                .entry(qid.to_owned())
                .or_default()
                .insert(did.to_owned(), scores.value(row));
            if previous.is_some() {
                return Err(bad_column(
                    path,
                    "did",
                    &format!("document {did} is ranked twice for query {qid}"),
                ));
            }
        }
    }
    Ok(runs)
}

/// One row per run, query and metric (queries in id order, metrics by name), with the query's task from
/// `task_of`.
pub(super) fn write_query_metrics(
    writer: &mut DatasetWriter,
    runs: &[(&str, &PerQuery)],
    task_of: &BTreeMap<String, String>,
) -> Result<(), EvalStageError> {
    let (mut run_name, mut qid, mut task, mut metric, mut value) = (
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        StringBuilder::new(),
        Float64Builder::new(),
    );
    for (name, per_query) in runs {
        let mut by_query: BTreeMap<&str, BTreeMap<String, f64>> = BTreeMap::new();
        for (m, values) in *per_query {
            for (query, v) in values {
                by_query
                    .entry(query.as_str())
                    .or_default()
                    .insert(m.to_string(), *v);
            }
        }
        for (query, values) in by_query {
            let group = task_of
                .get(query)
                .ok_or_else(|| EvalError::MissingGroup(query.to_owned()))?;
            for (m, v) in values {
                run_name.append_value(name);
                qid.append_value(query);
                task.append_value(group);
                metric.append_value(m);
                value.append_value(v);
            }
        }
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(run_name.finish()),
        Arc::new(qid.finish()),
        Arc::new(task.finish()),
        Arc::new(metric.finish()),
        Arc::new(value.finish()),
    ];
    write_batch(writer, columns)
}

/// Per-query values read back from a `metrics` dataset (every part).
pub(super) struct QueryMetrics {
    /// run name -> its per-query values.
    pub runs: BTreeMap<String, PerQuery>,
    /// query id -> task.
    pub task_of: BTreeMap<String, String>,
}

/// Reads a `metrics` dataset back. A value given twice, or a query given two tasks, is an error: the parts of
/// a job array hold disjoint queries.
pub(super) fn read_query_metrics(path: &Path) -> Result<QueryMetrics, EvalStageError> {
    let mut read = QueryMetrics {
        runs: BTreeMap::new(),
        task_of: BTreeMap::new(),
    };
    for batch in Dataset::open(path)?.batches()? {
        let batch = batch?;
        let (names, qids, tasks, metrics) = (
            strings(&batch, "run_name", path)?,
            strings(&batch, "qid", path)?,
            strings(&batch, "task", path)?,
            strings(&batch, "metric", path)?,
        );
        let values = floats(&batch, "value", path)?;
        for row in 0..batch.num_rows() {
            let (qid, task) = (qids.value(row), tasks.value(row));
            let metric: Metric = metrics.value(row).parse()?;
            let known = read
                .task_of
                .entry(qid.to_owned())
                .or_insert_with(|| task.to_owned());
            if known != task {
                return Err(bad_column(
                    path,
                    "task",
                    &format!("query {qid} has two tasks, {known} and {task}"),
                ));
            }
            let previous = read
                .runs
                .entry(names.value(row).to_owned())
                .or_default()
                .entry(metric)
                .or_default()
                .insert(qid.to_owned(), values.value(row));
            if previous.is_some() {
                return Err(bad_column(
                    path,
                    "value",
                    &format!(
                        "{metric} of query {qid} in run {} is given twice",
                        names.value(row)
                    ),
                ));
            }
        }
    }
    Ok(read)
}

fn floats<'b>(
    batch: &'b RecordBatch,
    name: &'static str,
    path: &Path,
) -> Result<&'b arrow::array::PrimitiveArray<Float64Type>, EvalStageError> {
    let array = column(batch, name, path)?
        .as_primitive_opt::<Float64Type>()
        .ok_or_else(|| bad_column(path, name, "not float64"))?;
    if array.null_count() > 0 {
        return Err(bad_column(path, name, "has nulls"));
    }
    Ok(array)
}

fn write_batch(writer: &mut DatasetWriter, columns: Vec<ArrayRef>) -> Result<(), EvalStageError> {
    let batch = RecordBatch::try_new(writer.arrow_schema(), columns).map_err(|source| {
        DatasetError::Arrow {
            path: writer.path().to_owned(),
            source,
        }
    })?;
    writer.write(&batch)?;
    Ok(())
}
