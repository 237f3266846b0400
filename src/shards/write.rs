//! The sft and cl datasets, as Arrow batches, one shard at a time.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, ListBuilder, RecordBatch, StringBuilder, UInt64Builder,
};
use arrow::datatypes::{DataType, Field};

use super::groups::Group;
use super::inputs::{DocParts, QueryParts, Table};
use super::plan::GroupSize;
use super::{kind_name, ShardsError, CL, SFT};
use crate::dataset::{DatasetWriter, WriteOptions, WrittenPart};
use crate::schema;
use crate::shard::Shard;

/// sft rows per written batch (a batch always holds whole groups).
const BATCH_ROWS: u64 = 8192;

/// The query and document tables the groups index into.
#[derive(Clone, Copy)]
pub struct Parts<'a> {
    pub queries: &'a Table<QueryParts>,
    pub docs: &'a Table<DocParts>,
}

fn len(value: &Option<String>) -> u64 {
    value.as_ref().map_or(0, |s| s.len() as u64)
}

/// The rows and value bytes a group adds to its sft and cl shards (u64 ids count 8 bytes, a bool 1).
pub fn group_size(group: &Group, parts: Parts) -> GroupSize {
    let query = parts.queries.row(group.query);
    let query_bytes = 8
        + query.qid.len() as u64
        + len(&query.instruction)
        + len(&query.text)
        + len(&query.image_id);
    let docs = std::iter::once((group.positive, None))
        .chain(group.negatives.iter().map(|&(doc, kind)| (doc, Some(kind))));
    let mut size = GroupSize {
        cl_bytes: query_bytes,
        ..GroupSize::default()
    };
    for (doc, kind) in docs {
        let doc = parts.docs.row(doc);
        let did = doc.did.len() as u64;
        let kind = kind_name(kind).len() as u64;
        size.sft_rows += 1;
        size.sft_bytes += query_bytes + did + 1 + kind + len(&doc.text) + len(&doc.image_id);
        size.cl_bytes += did + kind;
    }
    size
}

/// Writes shard `shard` of both datasets under `dir`: `sft/part-I-of-N.parquet` and `cl/part-I-of-N.parquet`.
pub fn write_shard(
    dir: &Path,
    shard: Shard,
    groups: &[Group],
    parts: Parts,
) -> Result<(WrittenPart, WrittenPart), ShardsError> {
    let mut sft = writer(dir, SFT, shard)?;
    let mut cl = writer(dir, CL, shard)?;
    let mut start = 0;
    while start < groups.len() {
        let mut end = start;
        let mut rows = 0;
        while end < groups.len()
            && (end == start || rows + 1 + groups[end].negatives.len() as u64 <= BATCH_ROWS)
        {
            rows += 1 + groups[end].negatives.len() as u64;
            end += 1;
        }
        let chunk = &groups[start..end];
        sft.write(&sft_batch(&sft, chunk, parts)?)?;
        cl.write(&cl_batch(&cl, chunk, parts)?)?;
        start = end;
    }
    Ok((sft.finish()?, cl.finish()?))
}

fn writer(dir: &Path, kind: &str, shard: Shard) -> Result<DatasetWriter, ShardsError> {
    let schema = schema::get(kind).map_err(|source| ShardsError::Schema {
        path: dir.join(kind),
        source,
    })?;
    Ok(DatasetWriter::create_with(
        &dir.join(kind),
        schema,
        schema.arrow(),
        shard,
        WriteOptions::default(),
    )?)
}

/// The query's prompt parts, appended to the three query columns.
struct QueryColumns {
    instruction: StringBuilder,
    text: StringBuilder,
    image_id: StringBuilder,
}

impl QueryColumns {
    fn new() -> Self {
        Self {
            instruction: StringBuilder::new(),
            text: StringBuilder::new(),
            image_id: StringBuilder::new(),
        }
    }

    fn append(&mut self, query: &QueryParts) {
        self.instruction.append_option(query.instruction.as_deref());
        self.text.append_option(query.text.as_deref());
        self.image_id.append_option(query.image_id.as_deref());
    }

    fn finish(mut self) -> [ArrayRef; 3] {
        [
            Arc::new(self.instruction.finish()),
            Arc::new(self.text.finish()),
            Arc::new(self.image_id.finish()),
        ]
    }
}

/// One row per document: the positive first (label true, kind `none`), then the negatives in group order.
fn sft_batch(
    writer: &DatasetWriter,
    groups: &[Group],
    parts: Parts,
) -> Result<RecordBatch, ShardsError> {
    let mut group_id = UInt64Builder::new();
    let mut qid = StringBuilder::new();
    let mut did = StringBuilder::new();
    let mut label = BooleanBuilder::new();
    let mut kind = StringBuilder::new();
    let mut query_columns = QueryColumns::new();
    let mut doc_text = StringBuilder::new();
    let mut doc_image = StringBuilder::new();
    for group in groups {
        let query = parts.queries.row(group.query);
        let docs = std::iter::once((group.positive, None))
            .chain(group.negatives.iter().map(|&(doc, kind)| (doc, Some(kind))));
        for (doc, negative) in docs {
            let doc = parts.docs.row(doc);
            group_id.append_value(group.group_id);
            qid.append_value(&query.qid);
            did.append_value(&doc.did);
            label.append_value(negative.is_none());
            kind.append_value(kind_name(negative));
            query_columns.append(query);
            doc_text.append_option(doc.text.as_deref());
            doc_image.append_option(doc.image_id.as_deref());
        }
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(group_id.finish()),
        Arc::new(qid.finish()),
        Arc::new(did.finish()),
        Arc::new(label.finish()),
        Arc::new(kind.finish()),
    ];
    columns.extend(query_columns.finish());
    columns.push(Arc::new(doc_text.finish()));
    columns.push(Arc::new(doc_image.finish()));
    Ok(RecordBatch::try_new(writer.arrow_schema(), columns)?)
}

fn id_list() -> ListBuilder<StringBuilder> {
    ListBuilder::new(StringBuilder::new()).with_field(Arc::new(Field::new(
        "item",
        DataType::Utf8,
        false,
    )))
}

/// One row per group: its positive and its negatives' ids and kinds, in group order.
fn cl_batch(
    writer: &DatasetWriter,
    groups: &[Group],
    parts: Parts,
) -> Result<RecordBatch, ShardsError> {
    let mut group_id = UInt64Builder::new();
    let mut qid = StringBuilder::new();
    let mut positive = StringBuilder::new();
    let mut negatives = id_list();
    let mut kinds = id_list();
    let mut query_columns = QueryColumns::new();
    for group in groups {
        let query = parts.queries.row(group.query);
        group_id.append_value(group.group_id);
        qid.append_value(&query.qid);
        positive.append_value(&parts.docs.row(group.positive).did);
        for &(doc, kind) in &group.negatives {
            negatives.values().append_value(&parts.docs.row(doc).did);
            kinds.values().append_value(kind_name(Some(kind)));
        }
        negatives.append(true);
        kinds.append(true);
        query_columns.append(query);
    }
    let mut columns: Vec<ArrayRef> = vec![
        Arc::new(group_id.finish()),
        Arc::new(qid.finish()),
        Arc::new(positive.finish()),
        Arc::new(negatives.finish()),
        Arc::new(kinds.finish()),
    ];
    columns.extend(query_columns.finish());
    Ok(RecordBatch::try_new(writer.arrow_schema(), columns)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::NegativeKind;

    #[test]
    fn group_size_counts_every_row_and_value() {
        let mut queries = Table::default();
        queries.rows.push(QueryParts {
            qid: "q".into(),
            instruction: Some("find".into()),
            text: Some("cat".into()),
            image_id: None,
        });
        let mut docs = Table::default();
        for (did, text) in [("p", "a cat"), ("n", "a dog")] {
            docs.rows.push(DocParts {
                did: did.into(),
                text: Some(text.into()),
                image_id: None,
            });
        }
        let group = Group {
            group_id: 1,
            query: 0,
            positive: 0,
            negatives: vec![(1, NegativeKind::Hard)],
        };
        let size = group_size(
            &group,
            Parts {
                queries: &queries,
                docs: &docs,
            },
        );
        // query: 8 + "q" + "find" + "cat" = 16; positive: "p" + label + "none" + "a cat" = 11; negative: "n" + 1 + "hard" + "a dog" = 11.
        assert_eq!(size.sft_rows, 2);
        assert_eq!(size.sft_bytes, 16 + 11 + 16 + 11);
        assert_eq!(size.cl_bytes, 16 + 1 + 4 + 1 + 4);
    }
}
