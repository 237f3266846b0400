use std::fs::{self, File};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::{DatasetError, KIND_METADATA_KEY, PART_EXTENSION};
use crate::digest::HashingWriter;
use crate::schema::{self, DatasetSchema};
use crate::shard::Shard;

/// How part files are laid out.
#[derive(Debug, Clone, Copy)]
pub struct WriteOptions {
    /// Upper bound on rows per row group; readers stream a row group at a time.
    pub max_row_group_rows: usize,
    /// A row group is closed once its buffered data passes this size, so that wide rows (image bytes) still give
    /// row groups a streaming reader can hold.
    pub max_row_group_bytes: usize,
    pub zstd_level: i32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            max_row_group_rows: 64 * 1024,
            max_row_group_bytes: 64 << 20,
            zstd_level: 3,
        }
    }
}

/// A finished part file, as recorded in a stage manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WrittenPart {
    pub path: PathBuf,
    pub rows: u64,
    pub bytes: u64,
    pub sha256: String,
}

/// Writes one part of a dataset, checking every batch against the dataset kind's schema.
pub struct DatasetWriter {
    schema: &'static DatasetSchema,
    final_path: PathBuf,
    tmp_path: PathBuf,
    writer: ArrowWriter<HashingWriter<BufWriter<File>>>,
    arrow: SchemaRef,
    rows: u64,
}

impl DatasetWriter {
    /// Starts part `shard` of the dataset in directory `dir`, of kind `kind` (a file in `schemas/`).
    pub fn create(dir: &Path, kind: &str, shard: Shard) -> Result<Self, DatasetError> {
        let schema = schema::get(kind).map_err(|source| DatasetError::Schema {
            path: dir.to_path_buf(),
            source,
        })?;
        Self::create_with(dir, schema, schema.arrow(), shard, WriteOptions::default())
    }

    /// Like [`DatasetWriter::create`], with an explicit Arrow schema (for kinds with an open vector width) and
    /// layout options.
    pub fn create_with(
        dir: &Path,
        schema: &'static DatasetSchema,
        arrow: SchemaRef,
        shard: Shard,
        options: WriteOptions,
    ) -> Result<Self, DatasetError> {
        let path = dir.join(format!("{}.{PART_EXTENSION}", shard.part_name()));
        Self::create_at(path, schema, arrow, options)
    }

    /// Writes a single file at `path` (not a part of a sharded dataset), still through a temporary name.
    pub fn create_at(
        final_path: PathBuf,
        schema: &'static DatasetSchema,
        arrow: SchemaRef,
        options: WriteOptions,
    ) -> Result<Self, DatasetError> {
        let dir = final_path.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).map_err(DatasetError::io(dir))?;
        let name = final_path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp_path = dir.join(format!(".{name}.tmp"));
        let file = File::create(&tmp_path).map_err(DatasetError::io(&tmp_path))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(
                ZstdLevel::try_new(options.zstd_level).map_err(DatasetError::parquet(&tmp_path))?,
            ))
            .set_max_row_group_row_count(Some(options.max_row_group_rows.max(1)))
            .set_max_row_group_bytes(Some(options.max_row_group_bytes.max(1)))
            .set_key_value_metadata(Some(vec![KeyValue::new(
                KIND_METADATA_KEY.to_string(),
                schema.kind.clone(),
            )]))
            .build();
        let sink = HashingWriter::new(BufWriter::with_capacity(1 << 20, file));
        let writer = ArrowWriter::try_new(sink, arrow.clone(), Some(props))
            .map_err(DatasetError::parquet(&tmp_path))?;
        Ok(Self {
            schema,
            final_path,
            tmp_path,
            writer,
            arrow,
            rows: 0,
        })
    }

    /// Appends a batch. A batch that does not match the schema is refused with the field named, and nothing of it
    /// is written.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), DatasetError> {
        self.schema
            .check(batch)
            .map_err(|source| DatasetError::Schema {
                path: self.final_path.clone(),
                source,
            })?;
        self.writer
            .write(batch)
            .map_err(DatasetError::parquet(&self.tmp_path))?;
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Where the file will be once finished.
    pub fn path(&self) -> &Path {
        &self.final_path
    }

    /// The Arrow schema batches must have.
    pub fn arrow_schema(&self) -> SchemaRef {
        self.arrow.clone()
    }

    /// Closes the file, syncs it and renames it into place. Until this returns, only the temporary file exists.
    pub fn finish(self) -> Result<WrittenPart, DatasetError> {
        let sink = self
            .writer
            .into_inner()
            .map_err(DatasetError::parquet(&self.tmp_path))?;
        let (buffered, sha256, bytes) = sink.finish();
        let file = buffered.into_inner().map_err(|e| DatasetError::Io {
            path: self.tmp_path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(DatasetError::io(&self.tmp_path))?;
        drop(file);
        fs::rename(&self.tmp_path, &self.final_path).map_err(DatasetError::io(&self.final_path))?;
        Ok(WrittenPart {
            path: self.final_path,
            rows: self.rows,
            bytes,
            sha256,
        })
    }
}
