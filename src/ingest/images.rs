//! Loading the images that kept records point at, writing each distinct one once.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, LargeBinaryBuilder, RecordBatch, StringBuilder, UInt32Builder};

use super::IngestError;
use crate::dataset::{Dataset, DatasetWriter};
use crate::media::record::image_id;
use crate::media::validate::validate;
use crate::media::{ImageLoader, ImageRecord, ImageReject, RejectCode};
use crate::pipeline::StageContext;

/// References loaded per batch: enough to keep every core busy, few enough that the bytes held at once stay
/// small whatever the dataset size.
const CHUNK: usize = 256;

/// For each distinct reference, the image id it resolved to or why it was refused.
pub type Resolved = HashMap<String, Result<String, ImageReject>>;

/// The images dataset being written, with the ids already in it: however many records, and however many calls,
/// point at an image, it is written once.
pub struct ImageSink<'a> {
    writer: &'a mut DatasetWriter,
    written: HashSet<String>,
}

impl<'a> ImageSink<'a> {
    pub fn new(writer: &'a mut DatasetWriter) -> Self {
        Self {
            writer,
            written: HashSet::new(),
        }
    }

    /// Writes the records not written before.
    fn write(&mut self, records: Vec<ImageRecord>) -> Result<(), IngestError> {
        let fresh: Vec<ImageRecord> = records
            .into_iter()
            .filter(|record| self.written.insert(record.image_id.clone()))
            .collect();
        if !fresh.is_empty() {
            let batch = batch_of(&fresh, self.writer)?;
            self.writer.write(&batch)?;
        }
        Ok(())
    }
}

/// Loads `references` (distinct, in first-use order), writes every image into `sink` (or only checks them, with
/// no sink: for records that another shard writes), and records each local file read as an observed input of
/// the stage.
pub fn load_files(
    ctx: &mut StageContext,
    loader: &ImageLoader,
    references: &[String],
    mut sink: Option<&mut ImageSink>,
) -> Result<Resolved, IngestError> {
    let bar = ctx.progress(references.len() as u64, "images");
    let mut resolved = Resolved::with_capacity(references.len());
    for chunk in references.chunks(CHUNK) {
        let outcomes = loader.load(chunk);
        let mut loaded: Vec<ImageRecord> = Vec::new();
        for (reference, outcome) in chunk.iter().zip(outcomes) {
            if outcome.is_ok() {
                if let Some(path) = local_file(loader.root(), reference) {
                    ctx.observe(&path)?;
                }
            }
            let id = outcome.map(|record| {
                let id = record.image_id.clone();
                loaded.push(record);
                id
            });
            resolved.insert(reference.clone(), id);
        }
        if let Some(sink) = sink.as_deref_mut() {
            sink.write(loaded)?;
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(resolved)
}

/// Copies the images that `references` (image ids) name from an input images dataset into `sink` (or only checks
/// them, with no sink), validating each again; ids absent from it, or whose bytes fail validation or do not hash
/// to their id, are refused.
pub fn copy_from_table(
    ctx: &StageContext,
    input: &Dataset,
    references: &[String],
    max_pixels: u64,
    mut sink: Option<&mut ImageSink>,
) -> Result<Resolved, IngestError> {
    let wanted: HashSet<&str> = references.iter().map(String::as_str).collect();
    let bar = ctx.progress(references.len() as u64, "images");
    let mut resolved = Resolved::with_capacity(references.len());
    for batch in input.batches_of(256)? {
        let batch = batch?;
        let ids = batch
            .column(0)
            .as_any()
            .downcast_ref::<arrow::array::StringArray>();
        let bytes = batch
            .column(1)
            .as_any()
            .downcast_ref::<arrow::array::LargeBinaryArray>();
        let (Some(ids), Some(bytes)) = (ids, bytes) else {
            return Err(IngestError::Config(format!(
                "{}: not an images dataset",
                input.path().display()
            )));
        };
        let mut fresh = Vec::new();
        for row in 0..batch.num_rows() {
            let id = ids.value(row);
            if !wanted.contains(id) || resolved.contains_key(id) {
                continue;
            }
            let data = bytes.value(row);
            let outcome = match validate(data, max_pixels) {
                Ok(_) if image_id(data) != id => Err(ImageReject::new(
                    RejectCode::Corrupt,
                    format!(
                        "{id}: the bytes hash to {}, not to their image_id",
                        image_id(data)
                    ),
                )),
                Ok(info) => {
                    fresh.push(ImageRecord::new(data.to_vec(), info));
                    Ok(id.to_string())
                }
                Err(e) => Err(e.for_reference(id)),
            };
            resolved.insert(id.to_string(), outcome);
        }
        bar.inc(fresh.len() as u64);
        if let Some(sink) = sink.as_deref_mut() {
            sink.write(fresh)?;
        }
    }
    for id in references {
        resolved.entry(id.clone()).or_insert_with(|| {
            Err(ImageReject::new(
                RejectCode::Missing,
                format!("{id}: not in the input images dataset"),
            ))
        });
    }
    bar.finish_and_clear();
    Ok(resolved)
}

/// The file a reference reads from, for change tracking: the archive for a member, nothing for a URL.
fn local_file(root: &Path, reference: &str) -> Option<std::path::PathBuf> {
    if reference.contains("://") {
        return None;
    }
    let file = reference.split("!/").next().unwrap_or(reference);
    Some(root.join(file))
}

fn batch_of(images: &[ImageRecord], writer: &DatasetWriter) -> Result<RecordBatch, IngestError> {
    let mut id = StringBuilder::new();
    let mut bytes = LargeBinaryBuilder::new();
    let mut width = UInt32Builder::new();
    let mut height = UInt32Builder::new();
    let mut format = StringBuilder::new();
    for image in images {
        id.append_value(&image.image_id);
        bytes.append_value(&image.bytes);
        width.append_value(image.width);
        height.append_value(image.height);
        format.append_value(&image.format);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(bytes.finish()),
        Arc::new(width.finish()),
        Arc::new(height.finish()),
        Arc::new(format.finish()),
    ];
    Ok(RecordBatch::try_new(writer.arrow_schema(), columns)?)
}
