//! Reading the sft shards back as groups: rows of one group are contiguous, the positive first.

use std::collections::HashSet;

use super::ExportError;
use crate::dataset::Dataset;
use crate::schema;
use crate::schema::NegativeKind;
use crate::shards::columns::{bools, optional, strings, u64s};
use crate::shards::POSITIVE_KIND;

/// A query or document of a group: its id and prompt parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: String,
    pub text: Option<String>,
    pub image_id: Option<String>,
}

/// One group as read from the sft rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportGroup {
    pub group_id: u64,
    pub instruction: Option<String>,
    pub query: Record,
    pub positive: Record,
    /// In group order.
    pub negatives: Vec<(Record, NegativeKind)>,
}

/// Calls `visit` with every group of an sft dataset, in order, and returns how many there were. Fails on rows
/// that break the layout (a group that does not start with its positive, or whose rows are not contiguous).
pub fn for_each_group(
    sft: &Dataset,
    mut visit: impl FnMut(ExportGroup) -> Result<(), ExportError>,
) -> Result<u64, ExportError> {
    let path = sft.path().to_path_buf();
    let kind = schema::get("sft").map_err(|source| crate::shards::ShardsError::Schema {
        path: path.clone(),
        source,
    })?;
    let malformed = |message: String| ExportError::Malformed {
        path: path.clone(),
        message,
    };
    let mut seen = HashSet::new();
    let mut current: Option<ExportGroup> = None;
    let mut count = 0u64;
    let mut row_number = 0u64;
    for batch in sft.batches()? {
        let batch = batch?;
        kind.check(&batch)
            .map_err(|source| crate::shards::ShardsError::Schema {
                path: path.clone(),
                source,
            })?;
        let group_id = u64s(&batch, &path, "group_id")?;
        let qid = strings(&batch, &path, "qid")?;
        let did = strings(&batch, &path, "did")?;
        let label = bools(&batch, &path, "label")?;
        let negative_kind = strings(&batch, &path, "negative_kind")?;
        let instruction = strings(&batch, &path, "instruction")?;
        let query_text = strings(&batch, &path, "query_text")?;
        let query_image = strings(&batch, &path, "query_image_id")?;
        let doc_text = strings(&batch, &path, "doc_text")?;
        let doc_image = strings(&batch, &path, "doc_image_id")?;
        for i in 0..batch.num_rows() {
            row_number += 1;
            let id = group_id.value(i);
            let doc = Record {
                id: did.value(i).to_string(),
                text: optional(doc_text, i),
                image_id: optional(doc_image, i),
            };
            let kind = negative_kind.value(i);
            if label.value(i) {
                if kind != POSITIVE_KIND {
                    return Err(malformed(format!(
                        "row {row_number}: a positive with negative_kind `{kind}`"
                    )));
                }
                if !seen.insert(id) {
                    return Err(malformed(format!(
                        "row {row_number}: group {id} starts a second time (a second positive, or rows out of place)"
                    )));
                }
                if let Some(done) = current.take() {
                    visit(done)?;
                    count += 1;
                }
                current = Some(ExportGroup {
                    group_id: id,
                    instruction: optional(instruction, i),
                    query: Record {
                        id: qid.value(i).to_string(),
                        text: optional(query_text, i),
                        image_id: optional(query_image, i),
                    },
                    positive: doc,
                    negatives: Vec::new(),
                });
                continue;
            }
            let negative = match kind {
                "hard" => NegativeKind::Hard,
                "random" => NegativeKind::Random,
                other => {
                    return Err(malformed(format!(
                        "row {row_number}: a negative with negative_kind `{other}` (hard or random expected)"
                    )))
                }
            };
            match current.as_mut() {
                Some(group) if group.group_id == id => group.negatives.push((doc, negative)),
                _ => {
                    return Err(malformed(format!(
                        "row {row_number}: a negative of group {id} outside that group's rows (groups start with their positive)"
                    )))
                }
            }
        }
    }
    if let Some(done) = current.take() {
        visit(done)?;
        count += 1;
    }
    Ok(count)
}
