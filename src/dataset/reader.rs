use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
use parquet::file::reader::{FileReader, SerializedFileReader};

use super::{is_temporary, DatasetError, KIND_METADATA_KEY, PART_EXTENSION};
use crate::shard::Shard;

/// Rows per batch when streaming, unless the caller asks for another size.
pub const DEFAULT_BATCH_ROWS: usize = 8192;

/// A complete dataset: one Parquet file, or all N parts of a sharded directory.
#[derive(Debug, Clone)]
pub struct Dataset {
    path: PathBuf,
    parts: Vec<PathBuf>,
}

impl Dataset {
    /// Opens a dataset directory (all parts must be present) or a single Parquet file.
    pub fn open(path: &Path) -> Result<Self, DatasetError> {
        let meta = fs::metadata(path).map_err(DatasetError::io(path))?;
        let parts = if meta.is_file() {
            vec![path.to_path_buf()]
        } else {
            complete_parts(path)?
        };
        Ok(Self {
            path: path.to_path_buf(),
            parts,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The part files, in part order.
    pub fn parts(&self) -> &[PathBuf] {
        &self.parts
    }

    /// Total rows, read from the file footers without touching the data.
    pub fn num_rows(&self) -> Result<u64, DatasetError> {
        self.parts.iter().try_fold(0u64, |acc, part| {
            let reader = footer(part)?;
            Ok(acc + reader.metadata().file_metadata().num_rows() as u64)
        })
    }

    /// The Arrow schema of the first part; [`Dataset::batches`] checks that every other part agrees.
    pub fn schema(&self) -> Result<SchemaRef, DatasetError> {
        Ok(self.builder(&self.parts[0])?.schema().clone())
    }

    /// The dataset kind recorded by the writer, if any (files from other tools have none).
    pub fn kind(&self) -> Result<Option<String>, DatasetError> {
        let reader = footer(&self.parts[0])?;
        let kind = reader
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .and_then(|kvs| kvs.iter().find(|kv| kv.key == KIND_METADATA_KEY))
            .and_then(|kv| kv.value.clone());
        Ok(kind)
    }

    /// Streams the rows as record batches, part after part; at most one row group per part is in memory.
    pub fn batches(&self) -> Result<Batches, DatasetError> {
        self.batches_of(DEFAULT_BATCH_ROWS)
    }

    pub fn batches_of(&self, batch_rows: usize) -> Result<Batches, DatasetError> {
        Ok(Batches {
            dataset: self.clone(),
            schema: self.schema()?,
            batch_rows,
            next_part: 0,
            current: None,
        })
    }

    fn builder(&self, part: &Path) -> Result<ParquetRecordBatchReaderBuilder<File>, DatasetError> {
        let file = File::open(part).map_err(DatasetError::io(part))?;
        ParquetRecordBatchReaderBuilder::try_new(file).map_err(DatasetError::parquet(part))
    }
}

fn footer(part: &Path) -> Result<SerializedFileReader<File>, DatasetError> {
    let file = File::open(part).map_err(DatasetError::io(part))?;
    SerializedFileReader::new(file).map_err(DatasetError::parquet(part))
}

/// The part files of a directory, checked to be one complete set.
fn complete_parts(dir: &Path) -> Result<Vec<PathBuf>, DatasetError> {
    let mut found: Vec<(Shard, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir).map_err(DatasetError::io(dir))? {
        let entry = entry.map_err(DatasetError::io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_temporary(&name) || !name.ends_with(&format!(".{PART_EXTENSION}")) {
            continue;
        }
        if let Some(shard) = Shard::from_part_name(&name) {
            found.push((shard, entry.path()));
        }
    }
    let Some(first) = found.first() else {
        return Err(DatasetError::Empty {
            path: dir.to_path_buf(),
        });
    };
    let counts: BTreeSet<u32> = found.iter().map(|(s, _)| s.count).collect();
    if counts.len() > 1 {
        let counts: Vec<String> = counts.iter().map(|c| c.to_string()).collect();
        return Err(DatasetError::MixedCounts {
            path: dir.to_path_buf(),
            counts: counts.join(", "),
        });
    }
    let count = first.0.count;
    found.sort_by_key(|(s, _)| s.index);
    let present: BTreeSet<u32> = found.iter().map(|(s, _)| s.index).collect();
    let missing: Vec<String> = (0..count)
        .filter(|i| !present.contains(i))
        .map(|i| i.to_string())
        .collect();
    if !missing.is_empty() {
        return Err(DatasetError::Incomplete {
            path: dir.to_path_buf(),
            found: present.len(),
            count,
            missing: missing.join(", "),
        });
    }
    Ok(found.into_iter().map(|(_, p)| p).collect())
}

/// Streaming iterator over a dataset's batches.
pub struct Batches {
    dataset: Dataset,
    schema: SchemaRef,
    batch_rows: usize,
    next_part: usize,
    current: Option<(PathBuf, ParquetRecordBatchReader)>,
}

impl Batches {
    pub fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn open_next(&mut self) -> Result<bool, DatasetError> {
        let Some(part) = self.dataset.parts.get(self.next_part).cloned() else {
            return Ok(false);
        };
        self.next_part += 1;
        let builder = self.dataset.builder(&part)?;
        if builder.schema().fields() != self.schema.fields() {
            return Err(DatasetError::SchemaDrift {
                path: part,
                detail: format!("expected {:?}, found {:?}", self.schema, builder.schema()),
            });
        }
        let reader = builder
            .with_batch_size(self.batch_rows)
            .build()
            .map_err(DatasetError::parquet(&part))?;
        self.current = Some((part, reader));
        Ok(true)
    }
}

impl Iterator for Batches {
    type Item = Result<RecordBatch, DatasetError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some((part, reader)) = &mut self.current {
                match reader.next() {
                    Some(Ok(batch)) => return Some(Ok(batch)),
                    Some(Err(source)) => {
                        return Some(Err(DatasetError::Arrow {
                            path: part.clone(),
                            source,
                        }))
                    }
                    None => self.current = None,
                }
            }
            match self.open_next() {
                Ok(true) => continue,
                Ok(false) => return None,
                Err(e) => return Some(Err(e)),
            }
        }
    }
}
