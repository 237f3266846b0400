//! A release's lineage: the data snapshot it was trained on (the ingest stage's fingerprint and how many queries,
//! documents and judgements it held) and, for a release that replaces a previous one (`[release.gate]`), that
//! release's hash and what changed in the data since.
//!
//! Every release records its snapshot, so that the next one can compare. The changes are exact (ids added and
//! removed) when the previous release's ingest stage can still be read and still has the fingerprint that release
//! recorded; otherwise they are the differences of the recorded counts (`exact = false`: a net change, which
//! cannot tell one query replaced by another from no change).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use arrow::array::{Array, AsArray};
use serde::{Deserialize, Serialize};

use super::provenance::{Provenance, StageRecord};
use super::{ReleaseError, ReleaseManifest};
use crate::dataset::Dataset;
use crate::digest::sha256_file;
use crate::schema::outputs;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Lineage {
    /// The data the release was trained on; none when no ingest stage is upstream of its train stage.
    pub data: Option<DataSnapshot>,
    /// The release this one replaces, when a gate compared them.
    pub previous: Option<PreviousRelease>,
    /// What changed in the data since the previous release.
    pub changes: Option<DataChanges>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSnapshot {
    /// The ingest stage's fingerprints (one per shard of its run).
    pub fingerprints: Vec<String>,
    pub queries: usize,
    pub documents: usize,
    /// (query, document) pairs in the qrels.
    pub judgements: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreviousRelease {
    pub path: PathBuf,
    /// sha256 of its release.json, which lists the sha256 of every file of it.
    pub sha256: String,
    /// The snapshot it recorded, if it recorded one.
    pub data: Option<DataSnapshot>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataChanges {
    /// Whether the counts are of ids added and removed (else the net change of the counts).
    pub exact: bool,
    pub queries: Change,
    pub documents: Change,
    pub judgements: Change,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Change {
    pub added: usize,
    pub removed: usize,
}

impl Change {
    fn of_sets(old: &BTreeSet<String>, new: &BTreeSet<String>) -> Self {
        Self {
            added: new.difference(old).count(),
            removed: old.difference(new).count(),
        }
    }

    fn of_counts(old: usize, new: usize) -> Self {
        Self {
            added: new.saturating_sub(old),
            removed: old.saturating_sub(new),
        }
    }
}

/// The ids of an ingest stage's queries, documents and judgements.
struct DataIds {
    queries: BTreeSet<String>,
    documents: BTreeSet<String>,
    judgements: BTreeSet<String>,
}

impl DataIds {
    fn read(ingest: &Path) -> Result<Self, ReleaseError> {
        Ok(Self {
            queries: ids(&ingest.join(outputs::ingest::QUERIES), &["qid"])?,
            documents: ids(&ingest.join(outputs::ingest::CORPUS), &["did"])?,
            judgements: ids(&ingest.join(outputs::ingest::QRELS), &["qid", "did"])?,
        })
    }

    fn snapshot(&self, fingerprints: Vec<String>) -> DataSnapshot {
        DataSnapshot {
            fingerprints,
            queries: self.queries.len(),
            documents: self.documents.len(),
            judgements: self.judgements.len(),
        }
    }
}

/// The lineage of a release made from `provenance`, replacing the release in `previous` if any.
pub fn collect(provenance: &Provenance, previous: Option<&Path>) -> Result<Lineage, ReleaseError> {
    let ingest = provenance.stage_of_kind("ingest");
    let current = ingest.map(|stage| DataIds::read(&stage.dir)).transpose()?;
    let data = ingest
        .zip(current.as_ref())
        .map(|(stage, ids)| ids.snapshot(stage.fingerprints.clone()));
    let Some(dir) = previous else {
        return Ok(Lineage {
            data,
            previous: None,
            changes: None,
        });
    };
    let manifest_path = dir.join(outputs::release::MANIFEST);
    let sha256 = sha256_file(&manifest_path).map_err(ReleaseError::io(&manifest_path))?;
    let manifest = ReleaseManifest::read(dir)?;
    let recorded = manifest.lineage.data.clone();
    let previous_ids = previous_ingest(&manifest, dir, recorded.as_ref())
        .map(|ingest| DataIds::read(&ingest))
        .transpose()?;
    let changes = match (&current, &previous_ids, &data, &recorded) {
        (Some(new), Some(old), _, _) => Some(DataChanges {
            exact: true,
            queries: Change::of_sets(&old.queries, &new.queries),
            documents: Change::of_sets(&old.documents, &new.documents),
            judgements: Change::of_sets(&old.judgements, &new.judgements),
        }),
        (_, _, Some(new), Some(old)) => Some(DataChanges {
            exact: false,
            queries: Change::of_counts(old.queries, new.queries),
            documents: Change::of_counts(old.documents, new.documents),
            judgements: Change::of_counts(old.judgements, new.judgements),
        }),
        _ => None,
    };
    Ok(Lineage {
        data,
        previous: Some(PreviousRelease {
            path: dir.to_path_buf(),
            sha256,
            data: recorded,
        }),
        changes,
    })
}

/// The previous release's ingest stage directory, if it can still be read and still has the fingerprints the
/// release recorded. Its provenance names stages relative to its run directory, the parent of its release stage.
fn previous_ingest(
    manifest: &ReleaseManifest,
    release: &Path,
    recorded: Option<&DataSnapshot>,
) -> Option<PathBuf> {
    let recorded = recorded?;
    let stage = manifest.provenance.stage_of_kind("ingest")?;
    let dir = if stage.dir.is_absolute() {
        stage.dir.clone()
    } else {
        release.parent()?.parent()?.join(&stage.dir)
    };
    let now = StageRecord::read(&dir).ok()?;
    (now.fingerprints == recorded.fingerprints).then_some(dir)
}

/// The distinct values of `columns` (joined by a tab) of a dataset; empty when the dataset does not exist.
fn ids(path: &Path, columns: &[&str]) -> Result<BTreeSet<String>, ReleaseError> {
    let mut ids = BTreeSet::new();
    if !path.exists() {
        return Ok(ids);
    }
    for batch in Dataset::open(path)?.batches()? {
        let batch = batch?;
        let strings = columns
            .iter()
            .map(|name| {
                batch
                    .column_by_name(name)
                    .and_then(|column| column.as_string_opt::<i32>().cloned())
                    .ok_or_else(|| ReleaseError::invalid(path, format!("no utf8 column `{name}`")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        for row in 0..batch.num_rows() {
            let key: Vec<&str> = strings
                .iter()
                .map(|column| {
                    if column.is_valid(row) {
                        column.value(row)
                    } else {
                        ""
                    }
                })
                .collect();
            ids.insert(key.join("\t"));
        }
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: &[&str]) -> BTreeSet<String> {
        ids.iter().map(|id| id.to_string()).collect()
    }

    #[test]
    fn exact_changes_count_ids_added_and_removed_and_counts_give_the_net_change() {
        // One query replaced by another and one added: the ids tell, the counts only see the net change.
        let (old, new) = (set(&["q1", "q2"]), set(&["q1", "q3", "q4"]));
        assert_eq!(
            Change::of_sets(&old, &new),
            Change {
                added: 2,
                removed: 1
            }
        );
        assert_eq!(
            Change::of_counts(old.len(), new.len()),
            Change {
                added: 1,
                removed: 0
            }
        );
        assert_eq!(
            Change::of_counts(5, 3),
            Change {
                added: 0,
                removed: 2
            }
        );
    }
}
