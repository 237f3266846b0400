//! The corpus, queries and qrels datasets, as Arrow batches.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int32Builder, RecordBatch, StringBuilder, UInt64Builder};

use super::records::{mbeir_task_name, Doc, Qrel, Query};
use super::IngestError;
use crate::dataset::DatasetWriter;

/// Rows per written batch.
pub const BATCH_ROWS: usize = 8192;

/// A kept document with its image resolved to an image id.
pub struct DocRow<'a> {
    pub doc: &'a Doc,
    pub image_id: Option<String>,
}

/// A kept query with its image resolved and its instruction chosen.
pub struct QueryRow<'a> {
    pub query: &'a Query,
    pub image_id: Option<String>,
}

pub fn write_docs(writer: &mut DatasetWriter, rows: &[DocRow]) -> Result<(), IngestError> {
    for chunk in rows.chunks(BATCH_ROWS) {
        let mut did = StringBuilder::new();
        let mut modality = StringBuilder::new();
        let mut text = StringBuilder::new();
        let mut image_id = StringBuilder::new();
        let mut dataset = StringBuilder::new();
        let mut pool = StringBuilder::new();
        let mut file = StringBuilder::new();
        let mut line = UInt64Builder::new();
        for row in chunk {
            let d = row.doc;
            did.append_value(&d.did);
            modality.append_value(d.modality.as_str());
            text.append_option(d.text.as_deref());
            image_id.append_option(row.image_id.as_deref());
            dataset.append_value(&d.dataset);
            pool.append_value(&d.pool);
            file.append_value(&d.origin.file);
            line.append_value(d.origin.line);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(did.finish()),
            Arc::new(modality.finish()),
            Arc::new(text.finish()),
            Arc::new(image_id.finish()),
            Arc::new(dataset.finish()),
            Arc::new(pool.finish()),
            Arc::new(file.finish()),
            Arc::new(line.finish()),
        ];
        writer.write(&RecordBatch::try_new(writer.arrow_schema(), columns)?)?;
    }
    Ok(())
}

pub fn write_queries(writer: &mut DatasetWriter, rows: &[QueryRow]) -> Result<(), IngestError> {
    for chunk in rows.chunks(BATCH_ROWS) {
        let mut qid = StringBuilder::new();
        let mut modality = StringBuilder::new();
        let mut text = StringBuilder::new();
        let mut image_id = StringBuilder::new();
        let mut instruction = StringBuilder::new();
        let mut task_id = Int32Builder::new();
        let mut task = StringBuilder::new();
        let mut dataset = StringBuilder::new();
        let mut pool = StringBuilder::new();
        let mut split = StringBuilder::new();
        let mut file = StringBuilder::new();
        let mut line = UInt64Builder::new();
        for row in chunk {
            let q = row.query;
            qid.append_value(&q.qid);
            modality.append_value(q.modality.as_str());
            text.append_option(q.text.as_deref());
            image_id.append_option(row.image_id.as_deref());
            instruction.append_option(q.instruction.as_deref());
            task_id.append_option(q.task_id);
            task.append_option(q.task_id.and_then(mbeir_task_name));
            dataset.append_value(&q.dataset);
            pool.append_value(&q.pool);
            split.append_value(&q.split);
            file.append_value(&q.origin.file);
            line.append_value(q.origin.line);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(qid.finish()),
            Arc::new(modality.finish()),
            Arc::new(text.finish()),
            Arc::new(image_id.finish()),
            Arc::new(instruction.finish()),
            Arc::new(task_id.finish()),
            Arc::new(task.finish()),
            Arc::new(dataset.finish()),
            Arc::new(pool.finish()),
            Arc::new(split.finish()),
            Arc::new(file.finish()),
            Arc::new(line.finish()),
        ];
        writer.write(&RecordBatch::try_new(writer.arrow_schema(), columns)?)?;
    }
    Ok(())
}

pub fn write_qrels(writer: &mut DatasetWriter, qrels: &[Qrel]) -> Result<(), IngestError> {
    for chunk in qrels.chunks(BATCH_ROWS) {
        let mut qid = StringBuilder::new();
        let mut did = StringBuilder::new();
        let mut relevance = Int32Builder::new();
        for q in chunk {
            qid.append_value(&q.qid);
            did.append_value(&q.did);
            relevance.append_value(q.relevance);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(qid.finish()),
            Arc::new(did.finish()),
            Arc::new(relevance.finish()),
        ];
        writer.write(&RecordBatch::try_new(writer.arrow_schema(), columns)?)?;
    }
    Ok(())
}
