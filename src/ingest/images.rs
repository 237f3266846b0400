//! Loading the images that kept records point at, writing each distinct one once.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, LargeBinaryBuilder, RecordBatch, StringBuilder, UInt32Builder};

use super::IngestError;
use crate::dataset::DatasetWriter;
use crate::media::{ImageLoader, ImageRecord, ImageReject};
use crate::pipeline::StageContext;

/// References loaded per batch: enough to keep every core busy, few enough that the bytes held at once stay
/// small whatever the dataset size.
const CHUNK: usize = 256;

/// For each distinct reference, the image id it resolved to or why it was refused.
pub type Resolved = HashMap<String, Result<String, ImageReject>>;

/// Loads `references` (distinct, in first-use order), writes every distinct image once to `writer`, and records
/// each local file read as an observed input of the stage.
pub fn load_and_write(
    ctx: &mut StageContext,
    loader: &ImageLoader,
    references: &[String],
    writer: &mut DatasetWriter,
) -> Result<Resolved, IngestError> {
    let bar = ctx.progress(references.len() as u64, "images");
    let mut resolved = Resolved::with_capacity(references.len());
    let mut written: HashSet<String> = HashSet::new();
    for chunk in references.chunks(CHUNK) {
        let outcomes = loader.load(chunk);
        let mut fresh: Vec<ImageRecord> = Vec::new();
        for (reference, outcome) in chunk.iter().zip(outcomes) {
            if outcome.is_ok() {
                if let Some(path) = local_file(loader.root(), reference) {
                    ctx.observe(&path)?;
                }
            }
            let id = outcome.map(|record| {
                let id = record.image_id.clone();
                if written.insert(id.clone()) {
                    fresh.push(record);
                }
                id
            });
            resolved.insert(reference.clone(), id);
        }
        if !fresh.is_empty() {
            writer.write(&batch(&fresh, writer)?)?;
        }
        bar.inc(chunk.len() as u64);
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

fn batch(images: &[ImageRecord], writer: &DatasetWriter) -> Result<RecordBatch, IngestError> {
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
