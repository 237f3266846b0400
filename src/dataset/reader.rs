use std::collections::BTreeSet;
use std::fs::{self, File};
use std::path::{Path, PathBuf};

use arrow::array::{RecordBatch, RecordBatchReader};
use arrow::datatypes::SchemaRef;
use parquet::arrow::arrow_reader::{
    ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::arrow::ProjectionMask;
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

    /// Streams `columns` of every row group, part after part, with where each group is: `(group, rows)`. With
    /// [`Self::read_rows`], a reader can note where rows are in one pass over small columns and read a large
    /// column (image bytes) only for the rows it needs, when it needs them.
    pub fn row_groups<'a>(
        &'a self,
        columns: &'a [&'a str],
    ) -> impl Iterator<Item = Result<(RowGroupAt, RecordBatch), DatasetError>> + 'a {
        let groups = self.parts.iter().enumerate().flat_map(|(part, path)| {
            let count = footer(path).map(|r| r.metadata().num_row_groups());
            let (count, error) = match count {
                Ok(count) => (count, None),
                Err(e) => (0, Some(Err(e))),
            };
            error
                .into_iter()
                .chain((0..count).map(move |row_group| Ok(RowGroupAt { part, row_group })))
        });
        groups.map(move |at| {
            let at = at?;
            let batch = self.read_group(at, None, columns)?;
            Ok((at, batch))
        })
    }

    /// `columns` of the rows `rows` (indexes within the group, ascending) of row group `at`, in that order.
    pub fn read_rows(
        &self,
        at: RowGroupAt,
        rows: &[usize],
        columns: &[&str],
    ) -> Result<RecordBatch, DatasetError> {
        let mut selectors = Vec::with_capacity(2 * rows.len());
        let mut next = 0;
        for &row in rows {
            if row < next {
                return Err(DatasetError::Rows {
                    path: self.part_path(at)?.to_path_buf(),
                    detail: format!("row {row} comes after row {}: rows must ascend", next - 1),
                });
            }
            if row > next {
                selectors.push(RowSelector::skip(row - next));
            }
            selectors.push(RowSelector::select(1));
            next = row + 1;
        }
        self.read_group(at, Some(RowSelection::from(selectors)), columns)
    }

    fn part_path(&self, at: RowGroupAt) -> Result<&Path, DatasetError> {
        self.parts
            .get(at.part)
            .map(PathBuf::as_path)
            .ok_or_else(|| DatasetError::Rows {
                path: self.path.clone(),
                detail: format!("no part {} (the dataset has {})", at.part, self.parts.len()),
            })
    }

    /// One row group's `columns`, all rows or the `selection`, as one batch.
    fn read_group(
        &self,
        at: RowGroupAt,
        selection: Option<RowSelection>,
        columns: &[&str],
    ) -> Result<RecordBatch, DatasetError> {
        let path = self.part_path(at)?;
        let builder = self.builder(path)?;
        let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
        let rows = builder
            .metadata()
            .row_groups()
            .get(at.row_group)
            .map_or(0, |g| g.num_rows() as usize);
        let mut builder = builder
            .with_row_groups(vec![at.row_group])
            .with_projection(mask)
            .with_batch_size(rows.max(1));
        if let Some(selection) = selection {
            builder = builder.with_row_selection(selection);
        }
        let reader = builder.build().map_err(DatasetError::parquet(path))?;
        let schema = reader.schema();
        let batches =
            reader
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| DatasetError::Arrow {
                    path: path.to_path_buf(),
                    source,
                })?;
        arrow::compute::concat_batches(&schema, &batches).map_err(|source| DatasetError::Arrow {
            path: path.to_path_buf(),
            source,
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

/// Where a row group is: its part file (index in [`Dataset::parts`]) and its index in that file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RowGroupAt {
    pub part: usize,
    pub row_group: usize,
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
