//! Exact top-k inner-product search over a corpus too large to score in one piece.
//!
//! The corpus is walked in chunks of `chunk_docs` documents, each packed once for the
//! [`kernel`](super::kernel). Queries are cut into blocks that rayon spreads over the threads; a block scores the
//! chunk into its thread's buffer of `query_block x chunk_docs` values (the only score memory there is: the full
//! Q x N matrix never exists) and feeds the scores that reach a query's current threshold to its
//! [running top-k](super::select). A corpus may also be split into parts (one per machine or process);
//! [`merge_top_k`] combines their lists. Chunked, sharded and single-pass runs return identical lists, ties
//! included, because every score is computed the same way whatever the split and the ranking order (score
//! descending, then document id descending) is total.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::error::MineError;
use super::kernel::{self, Isa, PackedDocs, PackedQueries, PANEL};
use super::matrix::{check_score_range, Matrix};
use super::order::DocOrder;
use super::select::{Hit, Ranked, RunningTopK};

/// How much to keep and how to cut the work. Memory for scores is `query_block x chunk_docs` f32 per thread, plus
/// one packed chunk of `chunk_docs` document vectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopKConfig {
    /// Hits kept per query.
    pub k: usize,
    /// Documents scored per pass (the chunk size that bounds score memory).
    pub chunk_docs: usize,
    /// Queries per parallel task (rounded up to the kernel's panel of 48).
    pub query_block: usize,
}

impl Default for TopKConfig {
    fn default() -> Self {
        Self {
            k: 100,
            chunk_docs: 1024,
            query_block: 256,
        }
    }
}

impl TopKConfig {
    pub fn validate(&self) -> Result<(), MineError> {
        if self.chunk_docs == 0 {
            return Err(MineError::ZeroConfig {
                field: "chunk_docs",
            });
        }
        if self.query_block == 0 {
            return Err(MineError::ZeroConfig {
                field: "query_block",
            });
        }
        Ok(())
    }
}

/// The document vectors one search covers: rows `0..rows` of `vectors` are documents
/// `first_doc..first_doc + rows` of the whole corpus (the numbering that [`DocOrder`] and exclusion lists use).
#[derive(Debug, Clone, Copy)]
pub struct CorpusPart<'a> {
    vectors: Matrix<'a>,
    first_doc: usize,
}

impl<'a> CorpusPart<'a> {
    pub fn new(vectors: Matrix<'a>, first_doc: usize) -> Self {
        Self { vectors, first_doc }
    }

    /// The whole corpus: row i is document i.
    pub fn whole(vectors: Matrix<'a>) -> Self {
        Self::new(vectors, 0)
    }

    pub fn vectors(&self) -> Matrix<'a> {
        self.vectors
    }

    pub fn first_doc(&self) -> usize {
        self.first_doc
    }

    /// One past the last document of the part.
    pub fn end_doc(&self) -> usize {
        self.first_doc + self.vectors.rows()
    }

    /// The score of `query` against document `doc`, bit-identical to the score a top-k search computes for the
    /// pair: positives (which the search excludes) and random negatives get their scores from here.
    pub fn score(&self, query: &[f32], doc: u32) -> Result<f32, MineError> {
        let doc_index = doc as usize;
        if doc_index < self.first_doc || doc_index >= self.end_doc() {
            return Err(MineError::NotInPart {
                doc,
                first_doc: self.first_doc,
                end: self.end_doc(),
            });
        }
        if query.len() != self.vectors.dim() {
            return Err(MineError::DimensionMismatch {
                queries: query.len(),
                documents: self.vectors.dim(),
            });
        }
        Ok(kernel::inner_product(
            query,
            self.vectors.row(doc_index - self.first_doc),
        ))
    }
}

/// Per query, the documents that must not be returned (its gold documents), by document index.
#[derive(Debug, Clone, Default)]
pub struct Exclusions {
    lists: Vec<Vec<u32>>,
}

impl Exclusions {
    /// One list per query, in query order; order and duplicates within a list do not matter.
    pub fn new(mut lists: Vec<Vec<u32>>) -> Self {
        for list in &mut lists {
            list.sort_unstable();
            list.dedup();
        }
        Self { lists }
    }

    /// No exclusions for `queries` queries.
    pub fn none(queries: usize) -> Self {
        Self {
            lists: vec![Vec::new(); queries],
        }
    }

    /// The sorted, deduplicated exclusions of query `query`.
    pub fn of(&self, query: usize) -> &[u32] {
        &self.lists[query]
    }

    pub(super) fn validate(&self, queries: usize, order: &DocOrder) -> Result<(), MineError> {
        if self.lists.len() != queries {
            return Err(MineError::ExclusionCount {
                lists: self.lists.len(),
                queries,
            });
        }
        for (query, list) in self.lists.iter().enumerate() {
            if let Some(&last) = list.last() {
                order.check(last, || format!("exclusions of query {query}"))?;
            }
        }
        Ok(())
    }
}

/// Queries searched at once. Their packed copies and running lists (`dim + 2k` values each) are the transient
/// memory that grows with the query count; beyond a wave the corpus is simply walked again, which costs a
/// packing pass per chunk (well under 1% next to scoring this many queries).
const WAVE_QUERIES: usize = 8192;

/// The `config.k` best documents of `corpus` for each query, best first, leaving out each query's exclusions.
/// `order` ranks the ids of the whole corpus (it breaks ties); rayon's current pool sets the threads.
pub fn exact_top_k(
    queries: &Matrix<'_>,
    corpus: &CorpusPart<'_>,
    order: &DocOrder,
    exclusions: &Exclusions,
    config: &TopKConfig,
) -> Result<Vec<Vec<Hit>>, MineError> {
    config.validate()?;
    exclusions.validate(queries.rows(), order)?;
    validate_inputs(queries, corpus, order)?;
    let search = Search {
        isa: Isa::detect(),
        corpus,
        order,
        exclusions,
        config,
    };
    let mut hits = Vec::with_capacity(queries.rows());
    for start in (0..queries.rows()).step_by(WAVE_QUERIES) {
        let end = (start + WAVE_QUERIES).min(queries.rows());
        hits.extend(search.wave(start, &queries.rows_range(start, end)));
    }
    Ok(hits)
}

/// Merges the top-k lists that several corpus parts produced for the same queries into the lists one search over
/// the union would have produced (given the parts' lists held at least `k` hits where the part had them).
pub fn merge_top_k(
    parts: &[Vec<Vec<Hit>>],
    k: usize,
    order: &DocOrder,
) -> Result<Vec<Vec<Hit>>, MineError> {
    let Some(first) = parts.first() else {
        return Ok(Vec::new());
    };
    let queries = first.len();
    if let Some((part, lists)) = parts
        .iter()
        .enumerate()
        .find(|(_, part)| part.len() != queries)
    {
        return Err(MineError::PartQueryCount {
            part,
            lists: lists.len(),
            queries,
        });
    }
    (0..queries)
        .map(|query| {
            let mut hits: Vec<Ranked> = Vec::new();
            for part in parts {
                for hit in &part[query] {
                    order.check(hit.doc, || format!("top-k list of query {query}"))?;
                    hits.push(Ranked {
                        score: hit.score,
                        tie: order.rank(hit.doc),
                        doc: hit.doc,
                    });
                }
            }
            hits.sort_unstable_by(|a, b| b.cmp(a));
            if let Some(pair) = hits.windows(2).find(|pair| pair[0].doc == pair[1].doc) {
                return Err(MineError::OverlappingParts {
                    query,
                    doc: pair[0].doc,
                });
            }
            hits.truncate(k);
            Ok(hits
                .into_iter()
                .map(|ranked| Hit {
                    doc: ranked.doc,
                    score: ranked.score,
                })
                .collect())
        })
        .collect()
}

/// Shape checks plus the overflow bound that keeps every score finite (see [`check_score_range`]).
fn validate_inputs(
    queries: &Matrix<'_>,
    corpus: &CorpusPart<'_>,
    order: &DocOrder,
) -> Result<(), MineError> {
    let vectors = corpus.vectors();
    if queries.dim() != vectors.dim() {
        return Err(MineError::DimensionMismatch {
            queries: queries.dim(),
            documents: vectors.dim(),
        });
    }
    if corpus.end_doc() > order.len() {
        return Err(MineError::PartOutOfRange {
            first_doc: corpus.first_doc(),
            end: corpus.end_doc(),
            known: order.len(),
        });
    }
    let query_max = queries.max_abs()?;
    let document_max = max_abs_parallel(&vectors)?;
    check_score_range(query_max, document_max, queries.dim())
}

/// [`Matrix::max_abs`] over row blocks in parallel: the corpus is the biggest input and this is its only full
/// pass besides scoring.
fn max_abs_parallel(matrix: &Matrix<'_>) -> Result<f32, MineError> {
    const ROWS: usize = 4096;
    let starts: Vec<usize> = (0..matrix.rows()).step_by(ROWS).collect();
    starts
        .par_iter()
        .map(|&start| {
            let end = (start + ROWS).min(matrix.rows());
            matrix
                .rows_range(start, end)
                .max_abs()
                .map_err(|error| match error {
                    MineError::NonFinite {
                        what,
                        row,
                        column,
                        value,
                    } => MineError::NonFinite {
                        what,
                        row: row + start,
                        column,
                        value,
                    },
                    other => other,
                })
        })
        .try_reduce(|| 0.0f32, |a, b| Ok(a.max(b)))
}

/// Queries per task: the configured block, shrunk so that every thread gets work when queries are few.
fn query_block_size(queries: usize, configured: usize) -> usize {
    let per_thread = queries.div_ceil(rayon::current_num_threads()).max(1);
    configured.min(per_thread).next_multiple_of(PANEL)
}

/// What every wave of queries shares.
struct Search<'a> {
    isa: Isa,
    corpus: &'a CorpusPart<'a>,
    order: &'a DocOrder,
    exclusions: &'a Exclusions,
    config: &'a TopKConfig,
}

impl Search<'_> {
    /// The top-k lists of queries `first_query..first_query + queries.rows()`: the corpus is walked chunk by
    /// chunk, each chunk packed once and scored by every query block, the blocks spread over the threads.
    fn wave(&self, first_query: usize, queries: &Matrix<'_>) -> Vec<Vec<Hit>> {
        let size = query_block_size(queries.rows(), self.config.query_block);
        let mut blocks: Vec<QueryBlock> = (0..queries.rows())
            .step_by(size)
            .map(|start| {
                let end = (start + size).min(queries.rows());
                QueryBlock::new(
                    first_query + start,
                    &queries.rows_range(start, end),
                    self.config.k,
                )
            })
            .collect();
        // One score buffer per thread: each thread takes a fixed run of blocks per chunk.
        let threads = rayon::current_num_threads().clamp(1, blocks.len().max(1));
        let per_thread = blocks.len().div_ceil(threads).max(1);
        let mut buffers = vec![Vec::new(); threads];
        let mut docs = PackedDocs::default();
        let vectors = self.corpus.vectors();
        for start in (0..vectors.rows()).step_by(self.config.chunk_docs) {
            let end = (start + self.config.chunk_docs).min(vectors.rows());
            docs.pack(&vectors.rows_range(start, end));
            let chunk = Chunk {
                isa: self.isa,
                docs: &docs,
                first_doc: self.corpus.first_doc() + start,
                order: self.order,
                exclusions: self.exclusions,
            };
            blocks
                .par_chunks_mut(per_thread)
                .zip(buffers.par_iter_mut())
                .for_each(|(blocks, scores)| {
                    for block in blocks {
                        block.search(&chunk, scores);
                    }
                });
        }
        blocks.into_iter().flat_map(QueryBlock::into_hits).collect()
    }
}

/// One scored chunk of the corpus, as every query block sees it.
struct Chunk<'a> {
    isa: Isa,
    docs: &'a PackedDocs,
    /// The document number of the chunk's first row.
    first_doc: usize,
    order: &'a DocOrder,
    exclusions: &'a Exclusions,
}

/// A run of queries searched together: packed once, with their running top-k lists and thresholds.
struct QueryBlock {
    first_query: usize,
    queries: PackedQueries,
    tops: Vec<RunningTopK>,
    /// One per packed lane; padding lanes stay at +inf and never pass (scores are finite).
    thresholds: Vec<f32>,
}

impl QueryBlock {
    fn new(first_query: usize, queries: &Matrix<'_>, k: usize) -> Self {
        let packed = PackedQueries::pack(queries);
        let tops: Vec<RunningTopK> = (0..queries.rows()).map(|_| RunningTopK::new(k)).collect();
        let mut thresholds = vec![f32::INFINITY; packed.width()];
        for (threshold, top) in thresholds.iter_mut().zip(&tops) {
            *threshold = top.threshold();
        }
        Self {
            first_query,
            queries: packed,
            tops,
            thresholds,
        }
    }

    /// Scores the chunk into `scores` (resized as needed) and offers every score that reaches its query's
    /// threshold, unless the query excludes the document.
    fn search(&mut self, chunk: &Chunk<'_>, scores: &mut Vec<f32>) {
        let width = self.queries.width();
        scores.resize(chunk.docs.rows() * width, 0.0);
        kernel::score_block(chunk.isa, chunk.docs, &self.queries, scores);
        for (row, row_scores) in scores.chunks_exact(width).enumerate() {
            let doc = (chunk.first_doc + row) as u32;
            for group in (0..width).step_by(16) {
                let mut lanes = reaching(
                    &row_scores[group..group + 16],
                    &self.thresholds[group..group + 16],
                );
                while lanes != 0 {
                    let lane = group + lanes.trailing_zeros() as usize;
                    lanes &= lanes - 1;
                    if chunk
                        .exclusions
                        .of(self.first_query + lane)
                        .binary_search(&doc)
                        .is_ok()
                    {
                        continue;
                    }
                    self.tops[lane].offer(Ranked {
                        score: row_scores[lane],
                        tie: chunk.order.rank(doc),
                        doc,
                    });
                    self.thresholds[lane] = self.tops[lane].threshold();
                }
            }
        }
    }

    fn into_hits(self) -> impl Iterator<Item = Vec<Hit>> {
        self.tops.into_iter().map(RunningTopK::into_hits)
    }
}

/// Bit i is set when `scores[i]` reaches `thresholds[i]` (16 lanes). Thresholds only rise, so a mask taken before
/// a row's offers is a superset of the lanes that can still enter; each offer rechecks exactly. Most groups have
/// no lane that reaches, which the first (vectorised) test settles.
fn reaching(scores: &[f32], thresholds: &[f32]) -> u32 {
    let pairs = scores.iter().zip(thresholds);
    if !pairs
        .clone()
        .fold(false, |any, (score, threshold)| any | (score >= threshold))
    {
        return 0;
    }
    pairs
        .enumerate()
        .fold(0u32, |mask, (lane, (score, threshold))| {
            mask | (u32::from(score >= threshold) << lane)
        })
}
