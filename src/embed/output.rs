//! The `doc_embeddings` and `query_embeddings` datasets (kind `embeddings`), in input order.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field};

use super::items::Item;
use super::EmbedError;
use crate::dataset::{DatasetWriter, WriteOptions};
use crate::schema;
use crate::shard::Shard;

/// Rows per written batch.
const BATCH_ROWS: usize = 4096;

/// Writes this shard's part of the dataset in `dir`: one row per item that has a vector, in item order.
pub fn write(
    dir: &Path,
    shard: Shard,
    dim: usize,
    model: &str,
    rows: &[(&Item, &[f32])],
) -> Result<(), EmbedError> {
    let schema =
        schema::get("embeddings").map_err(|source| crate::dataset::DatasetError::Schema {
            path: dir.to_path_buf(),
            source,
        })?;
    let arrow = schema.arrow_with_width(dim as i32);
    let mut writer =
        DatasetWriter::create_with(dir, schema, arrow.clone(), shard, WriteOptions::default())?;
    for chunk in rows.chunks(BATCH_ROWS) {
        let ids = StringArray::from_iter_values(chunk.iter().map(|(item, _)| item.id.as_str()));
        let kinds = StringArray::from_iter_values(chunk.iter().map(|(item, _)| item.side.as_str()));
        let mut values = Vec::with_capacity(chunk.len() * dim);
        for (_, vector) in chunk {
            values.extend_from_slice(vector);
        }
        let item = Arc::new(Field::new("item", DataType::Float32, false));
        let vectors = FixedSizeListArray::try_new(
            item,
            dim as i32,
            Arc::new(Float32Array::from(values)),
            None,
        )?;
        let models = StringArray::from_iter_values(std::iter::repeat_n(model, chunk.len()));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(ids),
            Arc::new(kinds),
            Arc::new(vectors),
            Arc::new(models),
        ];
        writer.write(&RecordBatch::try_new(arrow.clone(), columns)?)?;
    }
    writer.finish()?;
    Ok(())
}
