//! The `mine` stage: first-stage candidates for evaluation and sampled negatives for training, from the ingest
//! stage's queries, corpus and qrels and the embed stage's vectors (docs/mining.md).
//!
//! Vectors come from the embed stage's `doc_embeddings` and `query_embeddings` datasets (one model for both).
//! For each query in a candidate split (default: every split but `train`) it writes the exact top-`k` of its
//! scope to `candidates`, ranked by score descending and then by did descending (trec_eval's order), ranks 1-based
//! and distinct; gold documents stay in (evaluation reranks the real first-stage list). For each query in a
//! negative split (default: `train`) it searches the top-`mining_k` with every relevant document excluded, drops
//! likely false negatives with the positive-aware filter, and samples N negatives, hard and random in the
//! configured ratio, into `negatives`: one row per query, whose every positive forms a 1 + N training group with
//! those negatives. A query with no relevant document (or none with an embedding) gets no negatives row: it is a
//! reject row (`no_positives`) and is counted in the statistics. The statistics table is printed at the end and
//! saved as `stats.json`. Queries are searched against their own pool (the `pool` column of queries and corpus:
//! for M-BEIR the local pool of their dataset, task and split, or their slice of a global pool).
//!
//! Scale-out: `--shard I/N` mines the queries whose qid hashes to slice I, each against the WHOLE corpus (every
//! shard reads all document vectors), and writes part I of `candidates` and `negatives`. A query's lists and
//! negatives do not depend on which shard mines it (the search is exact, ties are broken by did, and each query
//! samples from its own seeded stream), so the N parts read as one dataset are exactly the unsharded output: the
//! merge is the union of the parts, and nothing has to be combined. The memory each shard needs is the corpus
//! vectors plus its share of queries. Each shard prints and saves the statistics of its own queries, as
//! `stats.part-0000I-of-0000N.json`, and writes each query's share of them to `query_stats`; the unsharded run
//! that follows the array finds the stage complete and merges those rows into `stats.json`, the table one run
//! would have printed (every figure is computed over the queries in qid order, whoever mined them).

mod config;
mod error;
mod inputs;
mod output;
mod query_stats;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use self::config::Source;
pub use self::config::{MineConfig, Scope};
pub use self::error::MineStageError;
use self::inputs::{Loaded, Paths, QueryRecord};
use self::output::{CandidateRow, NegativeRow};
use super::search::top_k_on;
use super::{
    filter_candidates, sample_negatives, CorpusPart, DocOrder, Exclusions, Filtered, Matrix,
    MineError, MiningStats, QueryInput, QueryNegatives, RandomPool, SampleConfig, StatsBuilder,
};
use crate::device::DeviceSpec;
use crate::pipeline::{Input, Output, PipelineError, Reject, Stage, StageContext, StageError};
use crate::progress;
use crate::schema::outputs;
use crate::shard::Shard;

/// Queries searched per top-k call: the unit the progress bar advances by.
const SEARCH_BATCH: usize = 4096;

/// Mines candidates and negatives.
pub struct MineStage {
    config: MineConfig,
}

impl MineStage {
    /// Checks the config (defaults filled in: `from = "ingest"`, `embeddings_from = "embed"`).
    pub fn new(config: MineConfig) -> Result<Self, PipelineError> {
        Ok(Self {
            config: config.resolve()?,
        })
    }

    fn input_dir(ctx: &StageContext, source: Source) -> Result<PathBuf, PipelineError> {
        match source {
            Source::Stage(stage) => Ok(ctx.upstream_dir(&stage)?.to_path_buf()),
            Source::Dir(dir) => Ok(dir),
        }
    }
}

impl Stage for MineStage {
    fn name(&self) -> &'static str {
        "mine"
    }

    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(&self.config)
    }

    fn inputs(&self) -> Vec<Input> {
        let as_input = |source, datasets: &[&str]| match source {
            Source::Stage(stage) => Input::Stage(stage),
            Source::Dir(dir) => Input::Files(datasets.iter().map(|name| dir.join(name)).collect()),
        };
        vec![
            as_input(
                self.config.ingest(),
                &[
                    outputs::ingest::CORPUS,
                    outputs::ingest::QUERIES,
                    outputs::ingest::QRELS,
                ],
            ),
            as_input(
                self.config.embeddings(),
                &[
                    outputs::embed::DOC_EMBEDDINGS,
                    outputs::embed::QUERY_EMBEDDINGS,
                ],
            ),
        ]
    }

    fn outputs(&self) -> Vec<Output> {
        vec![
            Output::dataset(outputs::mine::CANDIDATES, "candidates"),
            Output::dataset(outputs::mine::NEGATIVES, "negatives"),
            Output::dataset(outputs::mine::QUERY_STATS, "mine_stats"),
        ]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let ingest = Self::input_dir(ctx, self.config.ingest())?;
        let embed = Self::input_dir(ctx, self.config.embeddings())?;
        let paths = Paths::new(&ingest, &embed);
        let mut loaded = inputs::load(&paths, &self.config, ctx.shard())?;
        ctx.add_records(loaded.records);
        for reject in std::mem::take(&mut loaded.rejects) {
            ctx.reject(reject)?;
        }
        let mined = mine(ctx, &self.config, &paths, &loaded)?;
        for reject in mined.rejects {
            ctx.reject(reject)?;
        }

        let k = u32::try_from(self.config.k).unwrap_or(u32::MAX);
        let mut candidates = ctx.create_dataset(outputs::mine::CANDIDATES, "candidates")?;
        output::write_candidates(
            &mut candidates,
            &mined.candidates,
            &loaded.corpus.ids,
            &loaded.model,
            k,
        )?;
        candidates.finish()?;
        let mut negatives = ctx.create_dataset(outputs::mine::NEGATIVES, "negatives")?;
        output::write_negatives(
            &mut negatives,
            &mined.negatives,
            &loaded.corpus.ids,
            &loaded.model,
        )?;
        negatives.finish()?;
        let mut stats = mined.stats;
        let mut per_query = ctx.create_dataset(outputs::mine::QUERY_STATS, "mine_stats")?;
        query_stats::write(&mut per_query, stats.queries())?;
        per_query.finish()?;

        let stats = StageStats {
            retriever: loaded.model.clone(),
            shard: ctx.shard().to_string(),
            candidate_queries: mined.candidates.len(),
            k: self.config.k,
            mining_k: self.config.mining_k,
            mining: stats.finish(),
        };
        save_stats(ctx.dir(), ctx.shard(), &stats)?;
        progress::multi().suspend(|| println!("{stats}"));
        Ok(())
    }

    /// Merges the statistics of a job array's parts into `stats.json`, computed over the per-query records of
    /// every part exactly as one run computes them, and prints the table.
    fn merge_parts(&self, dir: &Path, parts: u32) -> Result<(), StageError> {
        let mut retriever = None;
        let mut candidate_queries = 0;
        for index in 0..parts {
            let shard = Shard {
                index,
                count: parts,
            };
            let part: PartStats = read_stats(&stats_path(dir, shard))?;
            retriever.get_or_insert(part.retriever);
            candidate_queries += part.candidate_queries;
        }
        let queries = query_stats::read(&dir.join(outputs::mine::QUERY_STATS))?;
        let stats = StageStats {
            retriever: retriever.unwrap_or_default(),
            shard: Shard::ALL.to_string(),
            candidate_queries,
            k: self.config.k,
            mining_k: self.config.mining_k,
            mining: StatsBuilder::from_queries(queries).finish(),
        };
        write_stats(&stats_path(dir, Shard::ALL), &stats)?;
        progress::multi().suspend(|| println!("{stats}"));
        Ok(())
    }
}

/// What the merge needs from a part's `stats.json`.
#[derive(Deserialize)]
struct PartStats {
    retriever: String,
    candidate_queries: usize,
}

fn read_stats(path: &Path) -> Result<PartStats, MineStageError> {
    let text = fs::read_to_string(path).map_err(MineStageError::io(path))?;
    serde_json::from_str(&text).map_err(|source| MineStageError::Json {
        path: path.to_path_buf(),
        source,
    })
}

/// What `stats.json` holds: the mining statistics with the settings needed to read them.
#[derive(Debug, Serialize)]
pub struct StageStats {
    /// The embedding model's fingerprint.
    pub retriever: String,
    /// The slice of queries these statistics cover (`0/1` for all).
    pub shard: String,
    /// Queries given a `candidates` row.
    pub candidate_queries: usize,
    pub k: usize,
    pub mining_k: usize,
    #[serde(flatten)]
    pub mining: MiningStats,
}

impl std::fmt::Display for StageStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "mine statistics (shard {}; retriever {}; candidates: {} queries, top-{}; hard negatives from the top-{})",
            self.shard, self.retriever, self.candidate_queries, self.k, self.mining_k
        )?;
        write!(f, "{}", self.mining)
    }
}

/// The stats file of a shard, named like its manifest.
pub fn stats_path(stage_dir: &Path, shard: Shard) -> PathBuf {
    if shard.is_all() {
        stage_dir.join(outputs::STATS_JSON)
    } else {
        stage_dir.join(format!("stats.{}.json", shard.part_name()))
    }
}

/// Writes the stats through a temporary name, and removes the stats of other shard counts (left by an earlier
/// run split differently), as the runner does for manifests.
fn save_stats(dir: &Path, shard: Shard, stats: &StageStats) -> Result<(), MineStageError> {
    let path = stats_path(dir, shard);
    for entry in fs::read_dir(dir)
        .map_err(MineStageError::io(dir))?
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        let other_count = name
            .strip_prefix("stats.")
            .and_then(|rest| rest.strip_suffix(".json"))
            .and_then(Shard::from_part_name)
            .is_some_and(|other| other.count != shard.count);
        let unsharded_leftover = name == outputs::STATS_JSON && !shard.is_all();
        if other_count || unsharded_leftover {
            fs::remove_file(entry.path()).map_err(MineStageError::io(entry.path()))?;
        }
    }
    write_stats(&path, stats)
}

/// Writes `stats` to `path` atomically.
fn write_stats(path: &Path, stats: &StageStats) -> Result<(), MineStageError> {
    let mut text = serde_json::to_string_pretty(stats).map_err(|source| MineStageError::Json {
        path: path.to_path_buf(),
        source,
    })?;
    text.push('\n');
    crate::atomic::write_atomically(path, text.as_bytes())
        .map_err(|e| MineStageError::io(e.path)(e.source))
}

/// The stage's results, rows in qid order.
struct Mined {
    candidates: Vec<CandidateRow>,
    negatives: Vec<NegativeRow>,
    stats: StatsBuilder,
    rejects: Vec<Reject>,
}

/// Searches every scope and samples negatives for its queries.
fn mine(
    ctx: &StageContext,
    config: &MineConfig,
    paths: &Paths,
    loaded: &Loaded,
) -> Result<Mined, MineStageError> {
    let corpus = &loaded.corpus;
    let order = DocOrder::from_ids(&corpus.ids)?;
    let miner = Miner {
        config,
        device: ctx.device(),
        sample: config.sample(ctx.seed()),
        order: &order,
        corpus: Matrix::new("corpus", &corpus.vectors, loaded.dim)?,
        queries: Matrix::new("queries", &loaded.query_vectors, loaded.dim)?,
        doc_index: corpus
            .ids
            .iter()
            .enumerate()
            .map(|(doc, did)| (did.as_str(), doc as u32))
            .collect(),
    };
    let searches = loaded
        .queries
        .iter()
        .map(|query| u64::from(query.candidates) + u64::from(query.negatives))
        .sum();
    let bar = ctx.progress(searches, "mining");
    let (mut candidates, mut negatives, mut rejects) = (Vec::new(), Vec::new(), Vec::new());
    let mut stats = StatsBuilder::new();
    let mut start = 0;
    while start < loaded.queries.len() {
        let scope = loaded.queries[start].scope.as_str();
        let end = start + loaded.queries[start..].partition_point(|query| query.scope == scope);
        let range = corpus.scope_range(scope);
        let part = CorpusPart::new(miner.corpus.rows_range(range.start, range.end), range.start);
        let queries: Vec<(usize, &QueryRecord)> =
            (start..end).map(|i| (i, &loaded.queries[i])).collect();

        let wanted: Vec<usize> = queries
            .iter()
            .filter(|(_, query)| query.candidates)
            .map(|&(i, _)| i)
            .collect();
        for batch in wanted.chunks(SEARCH_BATCH) {
            candidates.extend(miner.candidates(batch, &part, &loaded.queries)?);
            bar.inc(batch.len() as u64);
        }

        let docs: Vec<u32> = (range.start as u32..range.end as u32).collect();
        let pool = RandomPool::new(&docs, &order)?;
        let mut sampled = Vec::new();
        for &(i, query) in queries.iter().filter(|(_, query)| query.negatives) {
            let positives = miner.positive_docs(query);
            if positives.is_empty() {
                stats.add_query_without_positives(&query.qid);
                rejects.push(no_positives(&paths.qrels, query));
                bar.inc(1);
            } else {
                sampled.push((i, positives));
            }
        }
        for batch in sampled.chunks(SEARCH_BATCH) {
            for (row, filtered, scores) in miner.negatives(batch, &part, &pool, loaded)? {
                stats.add_query(&row.qid, &scores, &filtered, &row.negatives);
                negatives.push(row);
            }
            bar.inc(batch.len() as u64);
        }
        start = end;
    }
    bar.finish_and_clear();
    candidates.sort_unstable_by(|a: &CandidateRow, b| a.qid.cmp(&b.qid));
    negatives.sort_unstable_by(|a: &NegativeRow, b| a.qid.cmp(&b.qid));
    Ok(Mined {
        candidates,
        negatives,
        stats,
        rejects,
    })
}

fn no_positives(qrels: &Path, query: &QueryRecord) -> Reject {
    let detail = if query.positives.is_empty() {
        "no judgement with relevance > 0: nothing to mine negatives against".to_string()
    } else {
        format!(
            "none of its {} relevant documents has an embedding: nothing to mine negatives against",
            query.positives.len()
        )
    };
    Reject::new(qrels.display().to_string(), "no_positives", detail).with_id(query.qid.clone())
}

/// What every search shares.
struct Miner<'a> {
    config: &'a MineConfig,
    device: DeviceSpec,
    sample: SampleConfig,
    order: &'a DocOrder,
    /// Every embedded document: row i is document i.
    corpus: Matrix<'a>,
    /// Every mined query: row i is `loaded.queries[i]`.
    queries: Matrix<'a>,
    doc_index: HashMap<&'a str, u32>,
}

impl Miner<'_> {
    /// The document numbers of the query's relevant documents that have embeddings.
    fn positive_docs(&self, query: &QueryRecord) -> Vec<u32> {
        query
            .positives
            .iter()
            .filter_map(|did| self.doc_index.get(did.as_str()).copied())
            .collect()
    }

    /// The queries' vectors, gathered into one matrix.
    fn gather(&self, queries: impl Iterator<Item = usize>) -> Vec<f32> {
        queries.flat_map(|i| self.queries.row(i)).copied().collect()
    }

    /// First-stage lists of the queries `batch` (indices into `all`), nothing excluded.
    fn candidates(
        &self,
        batch: &[usize],
        part: &CorpusPart<'_>,
        all: &[QueryRecord],
    ) -> Result<Vec<CandidateRow>, MineError> {
        let vectors = self.gather(batch.iter().copied());
        let matrix = Matrix::new("queries", &vectors, self.queries.dim())?;
        let lists = top_k_on(
            self.device,
            &matrix,
            part,
            self.order,
            &Exclusions::none(batch.len()),
            &self.config.top_k(self.config.k),
        )?;
        Ok(batch
            .iter()
            .zip(lists)
            .map(|(&i, hits)| CandidateRow {
                qid: all[i].qid.clone(),
                hits,
            })
            .collect())
    }

    /// Negatives of the queries in `batch` ((index, positive documents) pairs): search with the positives
    /// excluded, filter, sample. Returns each row with its filter split and its positives' scores.
    fn negatives(
        &self,
        batch: &[(usize, Vec<u32>)],
        part: &CorpusPart<'_>,
        pool: &RandomPool,
        loaded: &Loaded,
    ) -> Result<Vec<(NegativeRow, Filtered, Vec<f32>)>, MineError> {
        let vectors = self.gather(batch.iter().map(|(i, _)| *i));
        let matrix = Matrix::new("queries", &vectors, self.queries.dim())?;
        let exclusions = Exclusions::new(batch.iter().map(|(_, docs)| docs.clone()).collect());
        let lists = top_k_on(
            self.device,
            &matrix,
            part,
            self.order,
            &exclusions,
            &self.config.top_k(self.config.mining_k),
        )?;
        // Positives and random negatives may lie anywhere in the corpus: score them against all of it (the
        // same inner product the search computes, bit for bit).
        let whole = CorpusPart::whole(self.corpus);
        batch
            .par_iter()
            .zip(lists)
            .map(|((i, positives), hits)| {
                let query = &loaded.queries[*i];
                let vector = self.queries.row(*i);
                let scores: Vec<f32> = positives
                    .iter()
                    .map(|&doc| whole.score(vector, doc))
                    .collect::<Result<_, _>>()?;
                let filtered = filter_candidates(&query.qid, &hits, &scores, &self.config.filter)?;
                let input = QueryInput {
                    qid: &query.qid,
                    positives,
                    filtered: &filtered,
                };
                let negatives: QueryNegatives =
                    sample_negatives(&input, pool, self.order, &self.sample, |doc| {
                        whole.score(vector, doc)
                    })?;
                let row = NegativeRow {
                    qid: query.qid.clone(),
                    positives: query.positives.clone(),
                    negatives,
                    min_positive: filtered.min_positive,
                };
                Ok((row, filtered, scores))
            })
            .collect()
    }
}
