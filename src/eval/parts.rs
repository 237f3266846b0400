//! The eval stage as a job array: what a shard writes besides its datasets, and the merge of the shards' parts
//! into the files one unsharded run writes (`first_stage.trec`, `reranked.trec` and `metrics.json`).
//!
//! A shard reranks the queries whose qid hashes to its slice, writes its rows of the `run` and `metrics` datasets
//! and its [`Header`] (`summary.part-I-of-N.json`). Nothing it writes depends on the other shards: each list is
//! scored in the same batches whichever shard holds it, and the per-query values depend on that query alone. The
//! merge reads both runs back from the `run` rows and the per-query values from the `metrics` rows (float64
//! columns keep every bit), and writes the files with the code the unsharded run uses ([`Header::summarise`],
//! [`write_whole`]). Every mean, macro average and test statistic sums the per-query values in query id order,
//! whoever computed them, and the tests draw from the same seed, so the files are byte-identical to those of one
//! unsharded run.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::metrics::PerQuery;
use super::rows::{read_query_metrics, read_runs};
use super::stage::{EvalSummary, Interpolation, ScoreField, FIRST_STAGE, RERANKED};
use super::stage_error::EvalStageError;
use super::summary::{compare_per_query, TestSettings};
use super::{write_run, Metric, Run};
use crate::schema::outputs;
use crate::shard::Shard;

/// What `metrics.json` says besides its figures, and the settings of its tests: for one shard's queries in
/// `summary.part-I-of-N.json`, or for all of them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct Header {
    pub model: PathBuf,
    pub adapter: Option<PathBuf>,
    pub score: ScoreField,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interpolate: Option<Interpolation>,
    pub k: usize,
    /// The evaluated splits: those of the whole input, in every shard.
    pub splits: Vec<String>,
    /// The retriever fingerprints of the shard's lists.
    pub retrievers: Vec<String>,
    pub scored_pairs: usize,
    pub rejected_pairs: usize,
    pub permutations: usize,
    /// The pipeline seed, which seeds the randomisation tests.
    pub seed: u64,
}

impl Header {
    /// The summary of the two runs from their per-query values; `task_of` gives each query's task.
    pub fn summarise(
        self,
        first_stage: PerQuery,
        reranked: PerQuery,
        task_of: &BTreeMap<String, String>,
    ) -> Result<EvalSummary, EvalStageError> {
        let comparison = compare_per_query(
            (FIRST_STAGE, first_stage),
            (RERANKED, reranked),
            task_of,
            &Metric::DEFAULT,
            TestSettings {
                permutations: self.permutations,
                seed: self.seed,
            },
        )?;
        Ok(EvalSummary {
            model: self.model,
            adapter: self.adapter,
            score: self.score,
            interpolate: self.interpolate,
            k: self.k,
            splits: self.splits,
            retrievers: self.retrievers,
            scored_pairs: self.scored_pairs,
            rejected_pairs: self.rejected_pairs,
            comparison,
        })
    }

    /// What every shard of one array shares.
    fn settings(&self) -> impl PartialEq + '_ {
        (
            &self.model,
            &self.adapter,
            self.score,
            self.interpolate,
            self.k,
            &self.splits,
            self.permutations,
            self.seed,
        )
    }

    /// The header of all the shards' queries: the settings every shard shares (an error where two disagree,
    /// which shards of one array cannot), the union of the retrievers and the sums of the pairs.
    fn combine(dir: &Path, parts: Vec<Header>) -> Result<Self, EvalStageError> {
        let mut parts = parts.into_iter();
        let Some(mut whole) = parts.next() else {
            return Err(EvalStageError::Parts {
                dir: dir.to_owned(),
                problem: "no shards to merge".into(),
            });
        };
        let mut retrievers: BTreeSet<String> =
            std::mem::take(&mut whole.retrievers).into_iter().collect();
        for part in parts {
            if part.settings() != whole.settings() {
                return Err(EvalStageError::Parts {
                    dir: dir.to_owned(),
                    problem: "the shards disagree on the model, adapter, score, k, splits or test settings; \
                              rerun the array"
                        .into(),
                });
            }
            retrievers.extend(part.retrievers);
            whole.scored_pairs += part.scored_pairs;
            whole.rejected_pairs += part.rejected_pairs;
        }
        whole.retrievers = retrievers.into_iter().collect();
        Ok(whole)
    }
}

/// Where shard `shard` keeps its header.
pub(super) fn header_path(dir: &Path, shard: Shard) -> PathBuf {
    dir.join(format!(
        "{}.{}.json",
        outputs::eval::PART_SUMMARY,
        shard.part_name()
    ))
}

/// Writes a shard's header, after removing the headers of other shard counts (left by an array split
/// differently; the runner removes their parts and manifests the same way).
pub(super) fn save_header(dir: &Path, shard: Shard, header: &Header) -> Result<(), EvalStageError> {
    remove_headers(dir, |other| other.count != shard.count)?;
    let path = header_path(dir, shard);
    let mut json = serde_json::to_vec_pretty(header).map_err(|source| EvalStageError::Json {
        path: path.clone(),
        source,
    })?;
    json.push(b'\n');
    write_atomically(&path, &json)
}

/// Removes the shard headers for which `stale` holds: an unsharded run removes them all.
pub(super) fn remove_headers(
    dir: &Path,
    stale: impl Fn(Shard) -> bool,
) -> Result<(), EvalStageError> {
    let prefix = format!("{}.", outputs::eval::PART_SUMMARY);
    for entry in fs::read_dir(dir)
        .map_err(EvalStageError::io(dir))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let shard = name
            .strip_prefix(&prefix)
            .and_then(|rest| rest.strip_suffix(".json"))
            .and_then(Shard::from_part_name);
        if shard.is_some_and(&stale) {
            fs::remove_file(entry.path()).map_err(EvalStageError::io(entry.path()))?;
        }
    }
    Ok(())
}

fn read_header(path: &Path) -> Result<Header, EvalStageError> {
    let text = fs::read_to_string(path).map_err(EvalStageError::io(path))?;
    serde_json::from_str(&text).map_err(|source| EvalStageError::Json {
        path: path.to_owned(),
        source,
    })
}

/// The summary over the `parts` shards of a completed job array in `dir`, with both runs, from their datasets
/// and headers.
pub(super) fn merge(dir: &Path, parts: u32) -> Result<(EvalSummary, Run, Run), EvalStageError> {
    let headers = (0..parts)
        .map(|index| {
            read_header(&header_path(
                dir,
                Shard {
                    index,
                    count: parts,
                },
            ))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let header = Header::combine(dir, headers)?;
    let mut runs = read_runs(&dir.join(outputs::eval::RUN))?;
    let mut values = read_query_metrics(&dir.join(outputs::eval::METRICS))?;
    let mut take = |name: &str| values.runs.remove(name).unwrap_or_default();
    let (first_values, reranked_values) = (take(FIRST_STAGE), take(RERANKED));
    let summary = header.summarise(first_values, reranked_values, &values.task_of)?;
    let first_stage = runs.remove(FIRST_STAGE).unwrap_or_default();
    let reranked = runs.remove(RERANKED).unwrap_or_default();
    Ok((summary, first_stage, reranked))
}

/// Writes the files over the whole output: both runs as TREC files and the summary as `metrics.json`.
pub(super) fn write_whole(
    dir: &Path,
    first_stage: &Run,
    reranked: &Run,
    summary: &EvalSummary,
) -> Result<(), EvalStageError> {
    for (name, run, tag) in [
        (outputs::eval::FIRST_STAGE_TREC, first_stage, FIRST_STAGE),
        (outputs::eval::RERANKED_TREC, reranked, RERANKED),
    ] {
        let mut text = Vec::new();
        write_run(&mut text, run, tag)?;
        write_atomically(&dir.join(name), &text)?;
    }
    let path = dir.join(outputs::eval::METRICS_JSON);
    let mut json = serde_json::to_vec_pretty(summary).map_err(|source| EvalStageError::Json {
        path: path.clone(),
        source,
    })?;
    json.push(b'\n');
    write_atomically(&path, &json)
}

/// Writes through a temporary name, so that a killed run leaves no half-written file under the final name.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), EvalStageError> {
    crate::atomic::write_atomically(path, bytes).map_err(|e| EvalStageError::io(e.path)(e.source))
}
