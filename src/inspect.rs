//! `umrank inspect`: what is in a dataset or a manifest, laid out for a person or as JSON.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field, Schema};
use arrow::util::display::{ArrayFormatter, FormatOptions};

use crate::dataset::{Dataset, DatasetError};
use crate::media::preprocess::{
    ImageTokenCounts, PreprocessError, Qwen2VlParams, Qwen2VlProcessor,
};
use crate::pipeline::{InputRecord, Manifest, PipelineError};
use crate::schema;

/// Longest cell shown in the human layout; longer values are cut with an ellipsis.
const MAX_CELL: usize = 48;

/// Why a path could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
    #[error("{0}: not a manifest (no manifest.json there)")]
    NoManifest(String),
    #[error("{path}: {source}")]
    Arrow {
        path: String,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("image pixel bounds: {0}")]
    Bounds(#[from] PreprocessError),
}

/// What a path holds.
pub enum Inspected {
    Manifest(Box<Manifest>),
    Dataset(DatasetView),
}

/// The head of a dataset.
pub struct DatasetView {
    pub path: String,
    pub kind: Option<String>,
    pub parts: usize,
    pub rows: u64,
    pub schema: Arc<Schema>,
    /// The first rows, with binary values replaced by their length so that image bytes never flood a terminal.
    pub head: Option<RecordBatch>,
    /// For an images dataset: how many vision tokens its images become within the pixel bounds asked for.
    pub image_tokens: Option<(u64, u64, ImageTokenCounts)>,
}

/// Reads a manifest (a `manifest*.json` file, or a stage directory holding `manifest.json`) or a dataset (a Parquet
/// file or a directory of parts). An images dataset's image token counts are computed within `(min_pixels,
/// max_pixels)`.
pub fn inspect(path: &Path, rows: usize, pixels: (u64, u64)) -> Result<Inspected, InspectError> {
    let is_json = path.extension().is_some_and(|e| e == "json");
    let stage_manifest = path.join("manifest.json");
    if is_json || stage_manifest.is_file() {
        let file = if is_json {
            path.to_path_buf()
        } else {
            stage_manifest
        };
        let manifest = Manifest::read(&file)?
            .ok_or_else(|| InspectError::NoManifest(file.display().to_string()))?;
        return Ok(Inspected::Manifest(Box::new(manifest)));
    }
    let dataset = Dataset::open(path)?;
    let mut head = None;
    if rows > 0 {
        if let Some(batch) = dataset.batches_of(rows)?.next() {
            let batch = batch?;
            head = Some(
                printable(&batch.slice(0, rows.min(batch.num_rows()))).map_err(|source| {
                    InspectError::Arrow {
                        path: path.display().to_string(),
                        source,
                    }
                })?,
            );
        }
    }
    let kind = dataset.kind()?;
    let image_tokens = match kind.as_deref() {
        Some("images") => image_tokens(&dataset, pixels)?.map(|c| (pixels.0, pixels.1, c)),
        _ => None,
    };
    Ok(Inspected::Dataset(DatasetView {
        path: path.display().to_string(),
        kind,
        parts: dataset.parts().len(),
        rows: dataset.num_rows()?,
        schema: dataset.schema()?,
        head,
        image_tokens,
    }))
}

/// The token counts of an images dataset's images within `(min_pixels, max_pixels)` at Qwen2-VL's patch
/// geometry.
fn image_tokens(
    dataset: &Dataset,
    (min_pixels, max_pixels): (u64, u64),
) -> Result<Option<ImageTokenCounts>, InspectError> {
    let processor = Qwen2VlProcessor::new(Qwen2VlParams {
        min_pixels,
        max_pixels,
        ..Qwen2VlParams::default()
    })?;
    Ok(image_token_counts(dataset, None, &processor)?)
}

/// How many vision tokens `processor` makes of the images of an images dataset (of those in `wanted`, when
/// given), from their stored sizes alone: the bytes are not read. Images whose size the processor refuses are
/// left out.
pub fn image_token_counts(
    dataset: &Dataset,
    wanted: Option<&HashSet<&str>>,
    processor: &Qwen2VlProcessor,
) -> Result<Option<ImageTokenCounts>, DatasetError> {
    let mut counts = Vec::new();
    let mut seen = HashSet::new();
    for group in dataset.row_groups(&["image_id", "width", "height"]) {
        let (_, batch) = group?;
        let missing = |name: &str| DatasetError::Rows {
            path: dataset.path().to_path_buf(),
            detail: format!("column `{name}` is missing or of the wrong type"),
        };
        let ids = batch
            .column_by_name("image_id")
            .and_then(|c| c.as_any().downcast_ref::<StringArray>())
            .ok_or_else(|| missing("image_id"))?;
        let size = |name: &str| {
            batch
                .column_by_name(name)
                .and_then(|c| c.as_any().downcast_ref::<UInt32Array>())
                .ok_or_else(|| missing(name))
        };
        let (widths, heights) = (size("width")?, size("height")?);
        for row in 0..batch.num_rows() {
            let id = ids.value(row);
            // An image that records of two shards use is in both parts: count it once.
            if wanted.is_some_and(|w| !w.contains(id)) || !seen.insert(id.to_string()) {
                continue;
            }
            if let Ok(tokens) = processor.num_vision_tokens(heights.value(row), widths.value(row)) {
                counts.push(tokens);
            }
        }
    }
    Ok(ImageTokenCounts::of(counts))
}

/// Replaces binary columns by "<N bytes>" strings.
fn printable(batch: &RecordBatch) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        let sizes: Option<Vec<Option<String>>> = match column.data_type() {
            DataType::Binary => column
                .as_any()
                .downcast_ref::<arrow::array::BinaryArray>()
                .map(|a| {
                    a.iter()
                        .map(|v| v.map(|b| format!("<{} bytes>", b.len())))
                        .collect()
                }),
            DataType::LargeBinary => column
                .as_any()
                .downcast_ref::<arrow::array::LargeBinaryArray>()
                .map(|a| {
                    a.iter()
                        .map(|v| v.map(|b| format!("<{} bytes>", b.len())))
                        .collect()
                }),
            _ => None,
        };
        match sizes {
            Some(sizes) => {
                fields.push(Field::new(field.name(), DataType::Utf8, true));
                columns.push(Arc::new(StringArray::from(sizes)));
            }
            None => {
                fields.push(field.as_ref().clone());
                columns.push(column.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

impl Inspected {
    /// The human layout.
    pub fn render(&self) -> String {
        match self {
            Inspected::Manifest(m) => render_manifest(m),
            Inspected::Dataset(d) => render_dataset(d),
        }
    }

    /// The machine layout: a manifest as written, or a dataset's schema, counts and first rows.
    pub fn to_json(&self) -> Result<serde_json::Value, InspectError> {
        match self {
            Inspected::Manifest(m) => Ok(serde_json::to_value(m.as_ref()).unwrap_or_default()),
            Inspected::Dataset(d) => dataset_json(d),
        }
    }
}

fn render_manifest(m: &Manifest) -> String {
    let mut out = String::new();
    let line =
        |out: &mut String, key: &str, value: String| out.push_str(&format!("{key:<10}{value}\n"));
    line(
        &mut out,
        "stage",
        format!("{} (kind {}), shard {}", m.stage, m.kind, m.shard),
    );
    line(
        &mut out,
        "finished",
        format!(
            "{} after {:.1}s (umrank {}, device {}, seed {})",
            m.finished_at, m.elapsed_seconds, m.umrank_version, m.device, m.seed
        ),
    );
    line(&mut out, "config", m.config.to_string());
    line(
        &mut out,
        "hash",
        format!(
            "config {}  fingerprint {}",
            short(&m.config_hash),
            short(&m.fingerprint)
        ),
    );
    let share = if m.records > 0 {
        format!(" ({:.2}%)", 100.0 * m.rejects as f64 / m.records as f64)
    } else {
        String::new()
    };
    line(
        &mut out,
        "records",
        format!(
            "{} read, {} rejected{share}",
            thousands(m.records),
            m.rejects
        ),
    );
    out.push_str("inputs\n");
    if m.inputs.is_empty() {
        out.push_str("  (none)\n");
    }
    for input in &m.inputs {
        out.push_str(&match input {
            InputRecord::Stage { name, dir, hash } => {
                format!(
                    "  stage {name:<20} {}  hash {}\n",
                    dir.display(),
                    short(hash)
                )
            }
            InputRecord::File {
                path, size, sha256, ..
            } => {
                format!(
                    "  file  {}  {}  sha256 {}\n",
                    path.display(),
                    bytes(*size),
                    short(sha256)
                )
            }
        });
    }
    if !m.observed.is_empty() {
        out.push_str(&format!(
            "observed  {} more files read (size and mtime tracked)\n",
            m.observed.len()
        ));
    }
    out.push_str("outputs\n");
    let width = m
        .outputs
        .iter()
        .map(|o| o.path.display().to_string().len())
        .max()
        .unwrap_or(0);
    for o in &m.outputs {
        let rows = o
            .rows
            .map(|r| format!("{} rows", thousands(r)))
            .unwrap_or_default();
        out.push_str(&format!(
            "  {:<width$}  {:>14}  {:>10}  sha256 {}\n",
            o.path.display().to_string(),
            rows,
            bytes(o.bytes),
            short(&o.sha256)
        ));
    }
    out
}

fn render_dataset(d: &DatasetView) -> String {
    let mut out = String::new();
    let kind_schema = d.kind.as_deref().and_then(|k| schema::get(k).ok());
    let kind = match (&d.kind, kind_schema) {
        (Some(k), Some(s)) => format!("{k}: {}", s.doc),
        (Some(k), None) => k.clone(),
        (None, _) => "(not written by umrank)".into(),
    };
    out.push_str(&format!("dataset   {}\n", d.path));
    out.push_str(&format!("kind      {kind}\n"));
    out.push_str(&format!("parts     {}\n", d.parts));
    out.push_str(&format!("rows      {}\n", thousands(d.rows)));
    if let Some((min, max, counts)) = &d.image_tokens {
        out.push_str(&format!("tokens    {counts}, at {min} to {max} pixels\n"));
    }
    out.push_str("schema\n");
    let width = d
        .schema
        .fields()
        .iter()
        .map(|f| f.name().len())
        .max()
        .unwrap_or(0);
    let types: Vec<String> = d
        .schema
        .fields()
        .iter()
        .map(|f| f.data_type().to_string())
        .collect();
    let type_width = types.iter().map(|t| t.len().min(40)).max().unwrap_or(0);
    for (field, ty) in d.schema.fields().iter().zip(&types) {
        let doc = kind_schema
            .and_then(|s| s.field_doc(field.name()))
            .unwrap_or("");
        let null = if field.is_nullable() {
            "null"
        } else {
            "not null"
        };
        out.push_str(&format!(
            "  {:<width$}  {:<type_width$}  {null:<8}  {doc}\n",
            field.name(),
            cut(ty, 40)
        ));
    }
    if let Some(head) = &d.head {
        out.push_str(&format!("first {} rows\n", head.num_rows()));
        out.push_str(&table(head));
    }
    out
}

/// A plain aligned table of a batch, cells cut to [`MAX_CELL`].
fn table(batch: &RecordBatch) -> String {
    let options = FormatOptions::default().with_null("null");
    let header: Vec<String> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    let mut rows: Vec<Vec<String>> = vec![header];
    let formatters: Vec<Option<ArrayFormatter>> = batch
        .columns()
        .iter()
        .map(|c| ArrayFormatter::try_new(c.as_ref(), &options).ok())
        .collect();
    for r in 0..batch.num_rows() {
        rows.push(
            formatters
                .iter()
                .map(|f| match f {
                    Some(f) => cut(&f.value(r).to_string().replace('\n', " "), MAX_CELL),
                    None => "?".into(),
                })
                .collect(),
        );
    }
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(&format!("  {}\n", cells.join("  ").trim_end()));
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out.push_str(&format!("  {}\n", rule.join("  ")));
        }
    }
    out
}

fn dataset_json(d: &DatasetView) -> Result<serde_json::Value, InspectError> {
    let kind_schema = d.kind.as_deref().and_then(|k| schema::get(k).ok());
    let fields: Vec<serde_json::Value> = d
        .schema
        .fields()
        .iter()
        .map(|f| {
            serde_json::json!({
                "name": f.name(),
                "type": f.data_type().to_string(),
                "nullable": f.is_nullable(),
                "doc": kind_schema.and_then(|s| s.field_doc(f.name())),
            })
        })
        .collect();
    let rows = match &d.head {
        Some(head) => rows_json(head).map_err(|source| InspectError::Arrow {
            path: d.path.clone(),
            source,
        })?,
        None => Vec::new(),
    };
    Ok(serde_json::json!({
        "path": d.path,
        "kind": d.kind,
        "parts": d.parts,
        "rows": d.rows,
        "schema": fields,
        "first_rows": rows,
        "image_tokens": d.image_tokens.as_ref().map(|(min, max, counts)| serde_json::json!({
            "min_pixels": min,
            "max_pixels": max,
            "counts": counts,
        })),
    }))
}

fn rows_json(batch: &RecordBatch) -> Result<Vec<serde_json::Value>, arrow::error::ArrowError> {
    let mut writer = arrow::json::ArrayWriter::new(Vec::new());
    writer.write(batch)?;
    writer.finish()?;
    let bytes = writer.into_inner();
    let rows: Vec<serde_json::Value> = if bytes.is_empty() {
        Vec::new()
    } else {
        serde_json::from_slice(&bytes)
            .map_err(|e| arrow::error::ArrowError::JsonError(e.to_string()))?
    };
    Ok(rows)
}

fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let kept: String = s.chars().take(max - 1).collect();
        format!("{kept}…")
    }
}

fn short(hash: &str) -> &str {
    &hash[..hash.len().min(12)]
}

fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(cut("abcdef", 4), "abc…");
        assert_eq!(cut("abc", 4), "abc");
    }
}
