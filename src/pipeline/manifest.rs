//! `manifest.json`: the record a finished stage leaves, and the evidence that lets a later run skip it.
//!
//! The manifest is written last, atomically. A stage directory without one (or with one whose fingerprint or
//! outputs no longer match) is not finished, whatever else lies in it.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::PipelineError;
use crate::digest::Fingerprint;
use crate::shard::Shard;

/// Where the manifest of one shard of a stage lives: `manifest.json`, or `manifest.part-I-of-N.json`.
pub fn manifest_path(stage_dir: &Path, shard: Shard) -> PathBuf {
    if shard.is_all() {
        stage_dir.join("manifest.json")
    } else {
        stage_dir.join(format!("manifest.{}.json", shard.part_name()))
    }
}

/// A finished stage run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub umrank_version: String,
    /// The stage's name in the pipeline.
    pub stage: String,
    /// The stage kind (`ingest`, `mine`, ...).
    pub kind: String,
    pub shard: Shard,
    pub seed: u64,
    pub device: String,
    /// The resolved configuration.
    pub config: serde_json::Value,
    pub config_hash: String,
    /// Hash of everything that determines the outputs; equal fingerprints and intact outputs mean up to date.
    pub fingerprint: String,
    pub inputs: Vec<InputRecord>,
    /// Files the stage read that were not declared up front (images named inside a jsonl, say).
    pub observed: Vec<ObservedFile>,
    pub outputs: Vec<OutputRecord>,
    /// Input records the stage considered, and how many of them it rejected.
    pub records: u64,
    pub rejects: u64,
    pub started_at: String,
    pub finished_at: String,
    pub elapsed_seconds: f64,
}

/// An input and its content hash at the time of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InputRecord {
    /// An upstream stage: the hash covers its fingerprints and output hashes over all its shards.
    Stage {
        name: String,
        dir: PathBuf,
        hash: String,
    },
    /// An external file. Size and mtime let the next run reuse the hash without rereading the file.
    File {
        path: PathBuf,
        size: u64,
        mtime_ns: i64,
        sha256: String,
    },
}

/// A file read during the run, checked by size and mtime on the next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedFile {
    /// Relative to the run directory for a file of the run (so that a moved run stays up to date), else absolute.
    pub path: PathBuf,
    pub size: u64,
    pub mtime_ns: i64,
}

/// One output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputRecord {
    /// The declared output it belongs to.
    pub output: String,
    /// Path relative to the stage directory.
    pub path: PathBuf,
    /// Row count for Parquet files.
    pub rows: Option<u64>,
    pub bytes: u64,
    pub sha256: String,
    pub mtime_ns: i64,
}

impl Manifest {
    /// Reads a manifest; `None` when there is none. A manifest that does not parse is treated as absent (the stage
    /// reruns) rather than failing the pipeline: it is most likely from an older umrank.
    pub fn read(path: &Path) -> Result<Option<Self>, PipelineError> {
        match fs::read(path) {
            Ok(bytes) => match serde_json::from_slice(&bytes) {
                Ok(m) => Ok(Some(m)),
                Err(e) => {
                    tracing::warn!(
                        "{}: unreadable manifest ({e}); the stage will rerun",
                        path.display()
                    );
                    Ok(None)
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(PipelineError::Io {
                path: path.to_path_buf(),
                source: e,
            }),
        }
    }

    /// Writes the manifest through a temporary file and a rename, so that it appears whole or not at all.
    pub fn write(&self, path: &Path) -> Result<(), PipelineError> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| PipelineError::Config {
            path: path.to_path_buf(),
            message: format!("cannot serialise manifest: {e}"),
        })?;
        write_atomically(path, &json)
    }

    /// All manifests of a stage directory, one per shard, if they form one complete set.
    pub fn read_complete(stage_dir: &Path) -> Result<Vec<Self>, String> {
        if let Some(m) =
            Self::read(&manifest_path(stage_dir, Shard::ALL)).map_err(|e| e.to_string())?
        {
            return Ok(vec![m]);
        }
        let entries =
            fs::read_dir(stage_dir).map_err(|e| format!("{}: {e}", stage_dir.display()))?;
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(rest) = name.strip_prefix("manifest.") else {
                continue;
            };
            let Some(shard) = Shard::from_part_name(rest) else {
                continue;
            };
            if let Some(m) = Self::read(&entry.path()).map_err(|e| e.to_string())? {
                found.push((shard, m));
            }
        }
        let Some(count) = found.first().map(|(s, _)| s.count) else {
            return Err(format!(
                "it has not run (no manifest in {})",
                stage_dir.display()
            ));
        };
        if found.iter().any(|(s, _)| s.count != count) {
            return Err(format!(
                "{} holds manifests of different shard counts",
                stage_dir.display()
            ));
        }
        found.sort_by_key(|(s, _)| s.index);
        let missing: Vec<String> = (0..count)
            .filter(|i| !found.iter().any(|(s, _)| s.index == *i))
            .map(|i| format!("{i}/{count}"))
            .collect();
        if !missing.is_empty() {
            return Err(format!(
                "it is incomplete in {}: shard(s) {} have not finished",
                stage_dir.display(),
                missing.join(", ")
            ));
        }
        Ok(found.into_iter().map(|(_, m)| m).collect())
    }

    /// The hash a downstream stage records for this stage's outputs: fingerprints and output hashes of all shards.
    pub fn combined_hash(manifests: &[Self]) -> String {
        let mut fp = Fingerprint::new();
        for m in manifests {
            fp.part("shard", m.shard.to_string().as_bytes());
            fp.part("fingerprint", m.fingerprint.as_bytes());
            for o in &m.outputs {
                fp.part("output", o.path.to_string_lossy().as_bytes());
                fp.part("sha256", o.sha256.as_bytes());
            }
        }
        fp.finish()
    }
}

/// Writes bytes to `path` via a temporary sibling and a rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), PipelineError> {
    crate::atomic::write_atomically(path, bytes).map_err(|e| PipelineError::io(e.path)(e.source))
}

/// Modification time in nanoseconds since the epoch (negative before it), as stored in manifests.
pub(crate) fn mtime_ns(meta: &fs::Metadata) -> i64 {
    match meta.modified() {
        Ok(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i64,
            Err(e) => -(e.duration().as_nanos() as i64),
        },
        Err(_) => 0,
    }
}

/// RFC 3339 UTC timestamp with seconds, e.g. `2026-11-26T16:41:00Z`.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar (H. Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn formats_timestamps() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_795_711_260);
        assert_eq!(rfc3339(t), "2026-11-26T16:41:00Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn manifest_round_trips_through_json() {
        let dir = tempfile::tempdir().unwrap();
        let m = Manifest {
            umrank_version: "0.1.0".into(),
            stage: "ingest".into(),
            kind: "ingest".into(),
            shard: Shard::new(1, 2).unwrap(),
            seed: 42,
            device: "cpu".into(),
            config: serde_json::json!({"format": "mbeir"}),
            config_hash: "c".into(),
            fingerprint: "f".into(),
            inputs: vec![
                InputRecord::Stage {
                    name: "world".into(),
                    dir: "w/world".into(),
                    hash: "h".into(),
                },
                InputRecord::File {
                    path: "a.jsonl".into(),
                    size: 3,
                    mtime_ns: -5,
                    sha256: "s".into(),
                },
            ],
            observed: vec![ObservedFile {
                path: "img.png".into(),
                size: 9,
                mtime_ns: 1_795_711_260_000_000_000,
            }],
            outputs: vec![OutputRecord {
                output: "corpus".into(),
                path: "corpus/part-00001-of-00002.parquet".into(),
                rows: Some(7),
                bytes: 100,
                sha256: "x".into(),
                mtime_ns: 1,
            }],
            records: 8,
            rejects: 1,
            started_at: "2026-11-26T16:41:00Z".into(),
            finished_at: "2026-11-26T16:41:01Z".into(),
            elapsed_seconds: 1.0,
        };
        let path = manifest_path(dir.path(), m.shard);
        m.write(&path).unwrap();
        assert_eq!(Manifest::read(&path).unwrap(), Some(m));
    }

    #[test]
    fn manifest_paths_per_shard() {
        let d = Path::new("w/ingest");
        assert_eq!(manifest_path(d, Shard::ALL), d.join("manifest.json"));
        assert_eq!(
            manifest_path(d, Shard::new(1, 4).unwrap()),
            d.join("manifest.part-00001-of-00004.json")
        );
    }
}
