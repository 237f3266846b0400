//! sentence-transformers' column layout for (anchor, positive, negatives) training: one Parquet file with string
//! columns `anchor`, `positive`, `negative_1` .. `negative_N`, one row per group. A cell is the record's text, or,
//! for an image-only record, the path of its image file (relative to the Parquet file's directory); a record with
//! both is written as its text (and counted). N is fixed for the file: a group with fewer negatives is skipped, a
//! group with more keeps its first N (hard ones first).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use super::images::ImageFiles;
use super::sink::{temporary, Sink};
use super::{ExportError, ExportGroup, Record};

/// Rows per written batch.
const BATCH_ROWS: usize = 8192;

/// The column names for `negatives` negative columns.
pub fn columns(negatives: usize) -> Vec<String> {
    let mut names = vec!["anchor".to_string(), "positive".to_string()];
    names.extend((1..=negatives).map(|i| format!("negative_{i}")));
    names
}

/// The records that become cells (query, positive, the first `negatives` negatives), or none for a short group.
fn records(group: &ExportGroup, negatives: usize) -> Option<impl Iterator<Item = &Record>> {
    (group.negatives.len() >= negatives).then(|| {
        [&group.query, &group.positive]
            .into_iter()
            .chain(group.negatives.iter().take(negatives).map(|(r, _)| r))
    })
}

/// The images the group's row references: those of its image-only records.
pub fn images_used(group: &ExportGroup, negatives: usize) -> Vec<String> {
    records(group, negatives)
        .into_iter()
        .flatten()
        .filter(|r| r.text.is_none())
        .filter_map(|r| r.image_id.clone())
        .collect()
}

/// The group's cells, or why it has none.
pub fn row(
    group: &ExportGroup,
    negatives: usize,
    images: &ImageFiles,
    images_dropped: &mut u64,
) -> Result<Result<Vec<String>, &'static str>, ExportError> {
    let Some(records) = records(group, negatives) else {
        return Ok(Err("short_group"));
    };
    let mut cells = Vec::with_capacity(2 + negatives);
    let mut dropped = 0;
    for record in records {
        match cell(record, images)? {
            Some((value, lost_image)) => {
                dropped += u64::from(lost_image);
                cells.push(value);
            }
            None => return Ok(Err("empty_record")),
        }
    }
    *images_dropped += dropped;
    Ok(Ok(cells))
}

/// The text, or the image path for an image-only record; with whether an image was left out.
fn cell(record: &Record, images: &ImageFiles) -> Result<Option<(String, bool)>, ExportError> {
    match (&record.text, &record.image_id) {
        (Some(text), image) => Ok(Some((text.clone(), image.is_some()))),
        (None, Some(id)) => {
            let path = images.path(id).ok_or_else(|| ExportError::Malformed {
                path: PathBuf::from(id),
                message: format!("image of `{}` was not written", record.id),
            })?;
            Ok(Some((path.to_string(), false)))
        }
        (None, None) => Ok(None),
    }
}

/// The Parquet file being written.
pub struct SentenceSink {
    path: PathBuf,
    tmp: PathBuf,
    schema: SchemaRef,
    writer: ArrowWriter<File>,
    pending: Vec<Vec<String>>,
}

impl SentenceSink {
    pub fn create(path: &Path, negatives: usize) -> Result<Self, ExportError> {
        let tmp = temporary(path)?;
        let fields: Vec<Field> = columns(negatives)
            .into_iter()
            .map(|name| Field::new(name, DataType::Utf8, false))
            .collect();
        let schema = Arc::new(Schema::new(fields));
        let parquet = |source| ExportError::parquet(&tmp)(source);
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(3).map_err(parquet)?))
            .build();
        let file = File::create(&tmp).map_err(ExportError::io(&tmp))?;
        let writer = ArrowWriter::try_new(file, schema.clone(), Some(props)).map_err(parquet)?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            schema,
            writer,
            pending: Vec::new(),
        })
    }

    fn flush(&mut self) -> Result<(), ExportError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.pending);
        let columns: Vec<ArrayRef> = (0..self.schema.fields().len())
            .map(|c| {
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| &r[c]))) as ArrayRef
            })
            .collect();
        let batch = RecordBatch::try_new(self.schema.clone(), columns)?;
        self.writer
            .write(&batch)
            .map_err(ExportError::parquet(&self.tmp))
    }
}

/// One row of cells per group, written in batches.
impl Sink<Vec<String>> for SentenceSink {
    fn put(&mut self, row: Vec<String>) -> Result<(), ExportError> {
        self.pending.push(row);
        if self.pending.len() >= BATCH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    fn finish(mut self) -> Result<(), ExportError> {
        self.flush()?;
        let file = self
            .writer
            .into_inner()
            .map_err(ExportError::parquet(&self.tmp))?;
        file.sync_all().map_err(ExportError::io(&self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(ExportError::io(&self.path))
    }
}
