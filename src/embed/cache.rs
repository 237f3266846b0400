//! The embedding cache: the resume point of the most expensive step (docs/mining.md#embedding-cache).
//!
//! It lives under the stage directory, `<stage>/cache/<cache key>/chunk-NNNNN.parquet`, where the cache key is a
//! sha256 over the model fingerprint (weights, config, tokenizer, image preprocessing, dtype) and what fixes the
//! batch plan (device kind, batch size, shard). Each chunk holds whole batches as (content key, vector) rows
//! and is written through a temporary name and renamed when complete, so a killed run leaves only complete
//! chunks. A changed model, preprocessing or plan gives another directory; an unchanged input reuses its
//! vectors. Removing `<stage>/cache` (all of it, or one key's directory) is always safe: it only costs
//! recomputation.

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, FixedSizeListArray, Float32Array, RecordBatch};
use arrow::datatypes::{Field, Float32Type};

use super::EmbedError;
use crate::dataset::{is_temporary, Dataset, DatasetWriter, WriteOptions};
use crate::schema;

/// The dataset kind of a chunk (schemas/embedding_cache.json).
const KIND: &str = "embedding_cache";
const PREFIX: &str = "chunk-";

/// An open cache directory: what it held when opened, and the batches embedded since, not yet written.
pub struct Cache {
    dir: PathBuf,
    dim: usize,
    chunk_rows: usize,
    next_chunk: u32,
    pending_keys: Vec<String>,
    pending_values: Vec<f32>,
}

impl Cache {
    /// Opens (creating) `<stage_dir>/cache/<key>`, removing temporary files an interrupted writer left.
    pub fn open(
        stage_dir: &Path,
        key: &str,
        dim: usize,
        chunk_rows: usize,
    ) -> Result<Self, EmbedError> {
        let dir = stage_dir.join("cache").join(key);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        let mut next_chunk = 0;
        for name in list(&dir)? {
            if is_temporary(&name) {
                let path = dir.join(&name);
                fs::remove_file(&path).map_err(io(&path))?;
            } else if let Some(n) = chunk_number(&name) {
                next_chunk = next_chunk.max(n + 1);
            }
        }
        Ok(Self {
            dir,
            dim,
            chunk_rows: chunk_rows.max(1),
            next_chunk,
            pending_keys: Vec::new(),
            pending_values: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cached vectors of the `wanted` keys. A chunk that cannot be read or has another width is skipped with a
    /// warning: the cache only saves work, so a damaged chunk costs its vectors, not the run.
    pub fn load(&self, wanted: &HashSet<&str>) -> Result<HashMap<String, Vec<f32>>, EmbedError> {
        let mut found = HashMap::new();
        let mut names: Vec<String> = list(&self.dir)?
            .into_iter()
            .filter(|n| chunk_number(n).is_some())
            .collect();
        names.sort();
        for name in names {
            let path = self.dir.join(&name);
            if let Err(e) = self.load_chunk(&path, wanted, &mut found) {
                tracing::warn!("{}: skipping unusable cache chunk: {e}", path.display());
            }
        }
        Ok(found)
    }

    fn load_chunk(
        &self,
        path: &Path,
        wanted: &HashSet<&str>,
        found: &mut HashMap<String, Vec<f32>>,
    ) -> Result<(), String> {
        let dataset = Dataset::open(path).map_err(|e| e.to_string())?;
        for batch in dataset.batches().map_err(|e| e.to_string())? {
            let batch = batch.map_err(|e| e.to_string())?;
            let keys = batch
                .column_by_name("key")
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or("no utf8 column `key`")?;
            let vectors = batch
                .column_by_name("vector")
                .and_then(|c| c.as_fixed_size_list_opt())
                .ok_or("no fixed-size list column `vector`")?;
            if vectors.value_length() as usize != self.dim {
                return Err(format!(
                    "vectors of width {}, the model's is {}",
                    vectors.value_length(),
                    self.dim
                ));
            }
            let values = vectors
                .values()
                .as_primitive_opt::<Float32Type>()
                .ok_or("vector items are not float32")?;
            for row in 0..batch.num_rows() {
                let key = keys.value(row);
                if wanted.contains(key) && !found.contains_key(key) {
                    let start = row * self.dim;
                    found.insert(
                        key.to_string(),
                        values.values()[start..start + self.dim].to_vec(),
                    );
                }
            }
        }
        Ok(())
    }

    /// Adds one embedded batch; writes a chunk once enough rows are pending. Chunks hold whole batches.
    pub fn add_batch(&mut self, keys: &[&str], vectors: &[Vec<f32>]) -> Result<(), EmbedError> {
        for (key, vector) in keys.iter().zip(vectors) {
            self.pending_keys.push((*key).to_string());
            self.pending_values.extend_from_slice(vector);
        }
        if self.pending_keys.len() >= self.chunk_rows {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what is pending as one chunk.
    pub fn flush(&mut self) -> Result<(), EmbedError> {
        if self.pending_keys.is_empty() {
            return Ok(());
        }
        let path = self
            .dir
            .join(format!("{PREFIX}{:05}.parquet", self.next_chunk));
        let schema = schema::get(KIND).map_err(|source| crate::dataset::DatasetError::Schema {
            path: path.clone(),
            source,
        })?;
        let arrow = schema.arrow_with_width(self.dim as i32);
        let mut writer =
            DatasetWriter::create_at(path, schema, arrow.clone(), WriteOptions::default())?;
        let keys = arrow::array::StringArray::from_iter_values(&self.pending_keys);
        let values = Float32Array::from(std::mem::take(&mut self.pending_values));
        let item = Arc::new(Field::new(
            "item",
            arrow::datatypes::DataType::Float32,
            false,
        ));
        let vectors = FixedSizeListArray::try_new(item, self.dim as i32, Arc::new(values), None)?;
        let columns: Vec<ArrayRef> = vec![Arc::new(keys), Arc::new(vectors)];
        writer.write(&RecordBatch::try_new(arrow, columns)?)?;
        writer.finish()?;
        self.pending_keys.clear();
        self.next_chunk += 1;
        Ok(())
    }
}

fn chunk_number(name: &str) -> Option<u32> {
    name.strip_prefix(PREFIX)?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}

fn list(dir: &Path) -> Result<Vec<String>, EmbedError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        let entry = entry.map_err(io(dir))?;
        names.push(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EmbedError {
    let path = path.to_path_buf();
    move |source| EmbedError::Io { path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_round_trip_and_only_wanted_keys_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut cache = Cache::open(dir.path(), "k", 2, 2).unwrap();
        cache
            .add_batch(&["a", "b"], &[vec![1.0, 2.0], vec![3.0, 4.0]])
            .unwrap();
        cache.add_batch(&["c"], &[vec![5.0, 6.0]]).unwrap();
        // Two rows were pending after the first batch, so it was written; "c" is still pending.
        let wanted: HashSet<&str> = ["a", "c"].into();
        let loaded = cache.load(&wanted).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded["a"], vec![1.0, 2.0]);
        cache.flush().unwrap();
        let reopened = Cache::open(dir.path(), "k", 2, 2).unwrap();
        assert_eq!(reopened.next_chunk, 2);
        assert_eq!(reopened.load(&wanted).unwrap()["c"], vec![5.0, 6.0]);
        // Another width is another model: its chunks are not used.
        let other = Cache::open(dir.path(), "k", 3, 2).unwrap();
        assert!(other.load(&wanted).unwrap().is_empty());
    }

    #[test]
    fn leftover_temporary_files_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let cache_dir = dir.path().join("cache/k");
        fs::create_dir_all(&cache_dir).unwrap();
        fs::write(cache_dir.join(".chunk-00000.parquet.tmp"), b"partial").unwrap();
        Cache::open(dir.path(), "k", 2, 2).unwrap();
        assert!(list(&cache_dir).unwrap().is_empty());
    }
}
