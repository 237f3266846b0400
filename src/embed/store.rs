//! The embedding store: vectors by what determines them, shared across runs, snapshots, batch sizes and shard
//! counts (docs/mining.md#embedding-store).
//!
//! `<store>/<model key>/chunk-<digest>.parquet`. The model key is a sha256 over the model fingerprint (weights,
//! config, tokenizer, image preprocessing, dtype, fusion) and the device kind (CPU and CUDA kernels round
//! differently); each row's key is the item's content key (modality, instruction, text, image id = sha256 of the
//! image bytes). Nothing about the batch, the shard, the item's id or its position is in either, so every run
//! that points at the same store reuses every vector it holds for the same model and content.
//!
//! A chunk is written through a temporary name and renamed when complete, and its name is a digest of its rows:
//! a reader recomputes it and skips a chunk whose rows do not match, so a torn or damaged chunk costs its vectors,
//! never a wrong one. Equal rows give the same name, so two writers of the same vectors write the same file.
//! Removing a model key's directory, or the whole store, is always safe: it only costs recomputation.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, FixedSizeListArray, Float32Array, RecordBatch};
use arrow::datatypes::{Field, Float32Type};

use super::EmbedError;
use crate::dataset::{Dataset, DatasetWriter, WriteOptions};
use crate::digest::Fingerprint;
use crate::schema;

/// The dataset kind of a chunk (schemas/embedding_cache.json).
const KIND: &str = "embedding_cache";
const PREFIX: &str = "chunk-";
const SUFFIX: &str = ".parquet";

/// A fault-injection hook for the kill tests (docs/faults.md): `UMRANK_STORE_STALL_WRITE=N` makes the process's
/// N-th chunk write stop for good after its rows went into the temporary file and before the file is closed and
/// renamed, so that a test can `kill -9` it in the middle of a store write at a known point.
pub const STALL_WRITE_ENV: &str = "UMRANK_STORE_STALL_WRITE";

/// One model's directory of an open store, and the vectors embedded since it was opened, not yet written.
pub struct Store {
    dir: PathBuf,
    dim: usize,
    chunk_rows: usize,
    pending_keys: Vec<String>,
    pending_values: Vec<f32>,
    /// The chunks this run read a wanted vector from or wrote: what `umrank store gc` keeps for it.
    used: BTreeSet<String>,
    /// Chunks written so far, and the write to stall at ([`STALL_WRITE_ENV`]).
    written: usize,
    stall_at: Option<usize>,
}

impl Store {
    /// Opens (creating) `<root>/<model_key>`. Temporary files there may be another writer's chunk in progress, so
    /// they are left alone: readers never read them, and `umrank store gc` removes them once they are old
    /// ([`super::gc`]).
    pub fn open(
        root: &Path,
        model_key: &str,
        dim: usize,
        chunk_rows: usize,
    ) -> Result<Self, EmbedError> {
        let dir = root.join(model_key);
        fs::create_dir_all(&dir).map_err(io(&dir))?;
        Ok(Self {
            dir,
            dim,
            chunk_rows: chunk_rows.max(1),
            pending_keys: Vec::new(),
            pending_values: Vec::new(),
            used: BTreeSet::new(),
            written: 0,
            stall_at: std::env::var(STALL_WRITE_ENV)
                .ok()
                .and_then(|n| n.parse().ok()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The chunks this run used, as `<model key>/<chunk file>` paths relative to the store's root, sorted.
    pub fn references(&self) -> Vec<String> {
        let key = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.used
            .iter()
            .map(|name| format!("{key}/{name}"))
            .collect()
    }

    /// The stored vectors of the `wanted` keys. A chunk that cannot be read, has another width or whose rows do
    /// not match the digest in its name is skipped with a warning: the store only saves work, so a damaged chunk
    /// costs its vectors, not the run, and is never read as valid.
    pub fn load(
        &mut self,
        wanted: &HashSet<&str>,
    ) -> Result<HashMap<String, Vec<f32>>, EmbedError> {
        let mut found = HashMap::new();
        let mut names: Vec<String> = list(&self.dir)?
            .into_iter()
            .filter(|n| chunk_digest(n).is_some())
            .collect();
        names.sort();
        for name in names {
            let path = self.dir.join(&name);
            match self.read_chunk(&path) {
                Ok((keys, values)) => {
                    for (row, key) in keys.into_iter().enumerate() {
                        if wanted.contains(key.as_str()) && !found.contains_key(&key) {
                            let start = row * self.dim;
                            found.insert(key, values[start..start + self.dim].to_vec());
                            self.used.insert(name.clone());
                        }
                    }
                }
                Err(e) => tracing::warn!("{}: skipping unusable store chunk: {e}", path.display()),
            }
        }
        Ok(found)
    }

    /// A chunk's keys and values, checked against the digest its name carries.
    fn read_chunk(&self, path: &Path) -> Result<(Vec<String>, Vec<f32>), String> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let expected = chunk_digest(&name).ok_or("not a chunk name")?;
        let dataset = Dataset::open(path).map_err(|e| e.to_string())?;
        let (mut keys, mut values) = (Vec::new(), Vec::new());
        for batch in dataset.batches().map_err(|e| e.to_string())? {
            let batch = batch.map_err(|e| e.to_string())?;
            let key_column = batch
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
            let items = vectors
                .values()
                .as_primitive_opt::<Float32Type>()
                .ok_or("vector items are not float32")?;
            let start = vectors.value_offset_at(0);
            let rows = batch.num_rows();
            keys.extend((0..rows).map(|row| key_column.value(row).to_string()));
            values.extend_from_slice(&items.values()[start..start + rows * self.dim]);
        }
        let actual = rows_digest(&keys, &values);
        if actual != expected {
            return Err(format!(
                "its rows hash to {actual}, not to its name's {expected}"
            ));
        }
        Ok((keys, values))
    }

    /// Adds embedded vectors; writes a chunk once enough rows are pending.
    pub fn add(&mut self, keys: &[&str], vectors: &[Vec<f32>]) -> Result<(), EmbedError> {
        for (key, vector) in keys.iter().zip(vectors) {
            self.pending_keys.push((*key).to_string());
            self.pending_values.extend_from_slice(vector);
        }
        if self.pending_keys.len() >= self.chunk_rows {
            self.flush()?;
        }
        Ok(())
    }

    /// Writes what is pending as one chunk, named by the digest of its rows.
    pub fn flush(&mut self) -> Result<(), EmbedError> {
        if self.pending_keys.is_empty() {
            return Ok(());
        }
        let digest = rows_digest(&self.pending_keys, &self.pending_values);
        let path = self.dir.join(format!("{PREFIX}{digest}{SUFFIX}"));
        if !path.exists() {
            let schema =
                schema::get(KIND).map_err(|source| crate::dataset::DatasetError::Schema {
                    path: path.clone(),
                    source,
                })?;
            let arrow = schema.arrow_with_width(self.dim as i32);
            let mut writer = DatasetWriter::create_at(
                path.clone(),
                schema,
                arrow.clone(),
                WriteOptions::default(),
            )?;
            let keys = arrow::array::StringArray::from_iter_values(&self.pending_keys);
            let values = Float32Array::from(std::mem::take(&mut self.pending_values));
            let item = Arc::new(Field::new(
                "item",
                arrow::datatypes::DataType::Float32,
                false,
            ));
            let vectors =
                FixedSizeListArray::try_new(item, self.dim as i32, Arc::new(values), None)?;
            let columns: Vec<ArrayRef> = vec![Arc::new(keys), Arc::new(vectors)];
            writer.write(&RecordBatch::try_new(arrow, columns)?)?;
            self.written += 1;
            if self.stall_at == Some(self.written) {
                stall(&path);
            }
            writer.finish()?;
        }
        self.used.insert(format!("{PREFIX}{digest}{SUFFIX}"));
        self.pending_keys.clear();
        self.pending_values.clear();
        Ok(())
    }
}

/// The first line of a run's references file: what `umrank store gc` checks before trusting the rest.
pub const REFERENCES_HEADER: &str = "# umrank embedding store references 1";

/// `<stage>/store_refs.txt`, or `store_refs.<part>.txt` for one shard: the chunks the stage's last run used, one
/// `<model key>/<chunk file>` per line after [`REFERENCES_HEADER`], for `umrank store gc --keep-runs`.
pub fn references_path(stage_dir: &Path, shard: crate::shard::Shard) -> PathBuf {
    if shard.is_all() {
        stage_dir.join("store_refs.txt")
    } else {
        stage_dir.join(format!("store_refs.{}.txt", shard.part_name()))
    }
}

/// Stops the process for good in the middle of writing `path` ([`STALL_WRITE_ENV`]); only a kill ends it.
fn stall(path: &Path) -> ! {
    tracing::warn!(
        "{}: {STALL_WRITE_ENV} is set: stalling in the middle of this chunk's write",
        path.display()
    );
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

/// sha256 over the rows in order: each key, then each vector's little-endian bytes.
fn rows_digest(keys: &[String], values: &[f32]) -> String {
    let mut fp = Fingerprint::new();
    fp.part("format", b"umrank embedding store chunk 1");
    for key in keys {
        fp.part("key", key.as_bytes());
    }
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    fp.part("vectors", &bytes);
    fp.finish()
}

/// The digest a chunk's name carries, if `name` is a chunk's.
pub(super) fn chunk_digest(name: &str) -> Option<&str> {
    let digest = name.strip_prefix(PREFIX)?.strip_suffix(SUFFIX)?;
    (digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit())).then_some(digest)
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

    fn chunks(dir: &Path) -> Vec<PathBuf> {
        let mut names: Vec<PathBuf> = list(dir)
            .unwrap()
            .into_iter()
            .filter(|n| chunk_digest(n).is_some())
            .map(|n| dir.join(n))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn chunks_round_trip_and_only_wanted_keys_load() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), "k", 2, 2).unwrap();
        store
            .add(&["a", "b"], &[vec![1.0, 2.0], vec![3.0, 4.0]])
            .unwrap();
        store.add(&["c"], &[vec![5.0, 6.0]]).unwrap();
        // Two rows were pending after the first add, so they were written; "c" is still pending.
        let wanted: HashSet<&str> = ["a", "c"].into();
        let loaded = store.load(&wanted).unwrap();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded["a"], vec![1.0, 2.0]);
        store.flush().unwrap();
        let mut reopened = Store::open(dir.path(), "k", 2, 2).unwrap();
        assert_eq!(chunks(reopened.dir()).len(), 2);
        assert_eq!(reopened.load(&wanted).unwrap()["c"], vec![5.0, 6.0]);
        // What gc keeps for this run: both chunks it read from, by their path under the store's root.
        let references = reopened.references();
        assert_eq!(references.len(), 2);
        assert!(references.iter().all(|r| r.starts_with("k/chunk-")));
        // Another width is another model: its chunks are not used.
        let mut other = Store::open(dir.path(), "k", 3, 2).unwrap();
        assert!(other.load(&wanted).unwrap().is_empty());
    }

    #[test]
    fn temporary_and_damaged_chunks_are_never_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path(), "k", 2, 1).unwrap();
        store.add(&["a"], &[vec![1.0, 2.0]]).unwrap();
        store.add(&["b"], &[vec![3.0, 4.0]]).unwrap();
        let written = chunks(store.dir());
        assert_eq!(written.len(), 2);
        // A writer killed mid-chunk leaves its temporary name: not a chunk.
        fs::write(
            store
                .dir()
                .join(format!(".{PREFIX}{}{SUFFIX}.tmp", "0".repeat(64))),
            b"par",
        )
        .unwrap();
        // A torn chunk under a final name (truncated), and a complete chunk renamed to another's digest.
        let bytes = fs::read(&written[0]).unwrap();
        fs::write(&written[0], &bytes[..bytes.len() / 2]).unwrap();
        let swapped = store
            .dir()
            .join(format!("{PREFIX}{}{SUFFIX}", "f".repeat(64)));
        fs::copy(&written[1], &swapped).unwrap();
        let wanted: HashSet<&str> = ["a", "b"].into();
        let loaded = store.load(&wanted).unwrap();
        // Only the intact chunk is read: the truncated one fails to parse, the renamed one fails its digest.
        assert_eq!(loaded.len(), 1);
        let original: HashMap<&str, Vec<f32>> =
            [("a", vec![1.0, 2.0]), ("b", vec![3.0, 4.0])].into();
        for (key, vector) in &loaded {
            assert_eq!(&original[key.as_str()], vector);
        }
        assert!(store.read_chunk(&swapped).unwrap_err().contains("hash to"));
    }
}
