//! Parquet in umrank's own schema: `corpus/`, `queries/`, `qrels/` and `images/` datasets under the root, as
//! another umrank (or any tool writing schemas/) produced them. The records go through the same checks as every
//! other format, and every image is validated again.

use std::path::Path;

use arrow::array::{Array, Int32Array, RecordBatch, StringArray};

use super::collect::Collection;
use super::records::{Doc, Modality, Origin, Qrel, Query};
use super::{relative, IngestError};
use crate::dataset::Dataset;
use crate::schema;

/// Reads the three record datasets into `out`. Image fields hold image ids, resolved later against `images/`.
pub fn read(root: &Path, out: &mut Collection) -> Result<(), IngestError> {
    each_row(root, "corpus", |batch, row, origin| {
        let did = text_of(batch, "did", row);
        let parts = parse_parts(batch, row);
        match (did, parts) {
            (Some(did), Ok((modality, body, image))) => {
                let dataset = text_of(batch, "dataset", row).unwrap_or_default();
                out.add_doc(Doc {
                    did,
                    modality,
                    text: body,
                    image,
                    pool: text_of(batch, "pool", row).unwrap_or_else(|| dataset.clone()),
                    dataset,
                    origin,
                });
            }
            (did, Err(detail)) => {
                let key = did.unwrap_or_else(|| format!("{}:{}", origin.file, origin.line));
                out.reject_line(&key, &origin, "modality_mismatch", detail)
            }
            (None, Ok(_)) => {}
        }
    })?;
    each_row(root, "queries", |batch, row, origin| {
        let qid = text_of(batch, "qid", row).unwrap_or_default();
        match parse_parts(batch, row) {
            Ok((modality, body, image)) => {
                let dataset = text_of(batch, "dataset", row).unwrap_or_default();
                let query = Query {
                    qid,
                    modality,
                    text: body,
                    image,
                    instruction: text_of(batch, "instruction", row),
                    task_id: int(batch, "task_id", row),
                    pool: text_of(batch, "pool", row).unwrap_or_else(|| dataset.clone()),
                    dataset,
                    split: text_of(batch, "split", row).unwrap_or_default(),
                    origin,
                };
                out.add_query(query, &[]);
            }
            Err(detail) => out.reject_line(&qid, &origin, "modality_mismatch", detail),
        }
    })?;
    each_row(root, "qrels", |batch, row, origin| {
        out.add_qrel(Qrel {
            qid: text_of(batch, "qid", row).unwrap_or_default(),
            did: text_of(batch, "did", row).unwrap_or_default(),
            relevance: int(batch, "relevance", row).unwrap_or(0),
            origin,
        })
    })
}

/// Calls `f` on every row of dataset `kind` under `root`, after checking each batch against the kind's schema
/// (a file in another schema is an error naming the file and the field, not a pile of row rejects).
fn each_row(
    root: &Path,
    kind: &str,
    mut f: impl FnMut(&RecordBatch, usize, Origin),
) -> Result<(), IngestError> {
    let dir = root.join(kind);
    let dataset = Dataset::open(&dir)?;
    let contract = schema::get(kind).map_err(|e| IngestError::Config(e.to_string()))?;
    for part in dataset.parts() {
        let file = relative(root, part);
        let mut line = 0u64;
        for batch in Dataset::open(part)?.batches()? {
            let batch = batch?;
            contract.check(&batch).map_err(|e| IngestError::Format {
                file: file.clone(),
                line: line + 1,
                message: e.to_string(),
            })?;
            for row in 0..batch.num_rows() {
                line += 1;
                f(
                    &batch,
                    row,
                    Origin {
                        file: file.clone(),
                        line,
                    },
                );
            }
        }
    }
    Ok(())
}

fn parse_parts(
    batch: &RecordBatch,
    row: usize,
) -> Result<(Modality, Option<String>, Option<String>), String> {
    let modality: Modality = text_of(batch, "modality", row)
        .unwrap_or_default()
        .parse()?;
    let text = text_of(batch, "text", row).filter(|_| modality.has_text());
    let image = text_of(batch, "image_id", row).filter(|_| modality.has_image());
    if modality.has_text() && text.is_none() {
        return Err(format!("modality `{modality}` but no text"));
    }
    if modality.has_image() && image.is_none() {
        return Err(format!("modality `{modality}` but no image_id"));
    }
    Ok((modality, text, image))
}

fn text_of(batch: &RecordBatch, column: &str, row: usize) -> Option<String> {
    let col = batch
        .column_by_name(column)?
        .as_any()
        .downcast_ref::<StringArray>()?;
    (!col.is_null(row)).then(|| col.value(row).to_string())
}

fn int(batch: &RecordBatch, column: &str, row: usize) -> Option<i32> {
    let col = batch
        .column_by_name(column)?
        .as_any()
        .downcast_ref::<Int32Array>()?;
    (!col.is_null(row)).then(|| col.value(row))
}
