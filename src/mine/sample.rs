//! Negative sampling: per query, hard negatives from the filtered candidates and random negatives from a pool, in
//! a configured ratio (the paper: groups of 1 positive + 16 negatives, half hard, half random).
//!
//! Each query draws from its own ChaCha8 stream seeded by a hash of (seed, qid), and every set it draws from is in
//! a canonical order (candidates by rank, pools and positives by document id), so a query gets the same negatives
//! whichever shard, thread or process samples it.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::error::MineError;
use super::filter::{Candidate, FilterConfig, FilterKind, Filtered};
use super::order::DocOrder;
use crate::schema::NegativeKind;

/// How many negatives a query gets (the N of its 1 + N groups), split between hard and random.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SampleConfig {
    pub negatives_per_group: usize,
    /// Hard : random = `hard_ratio : random_ratio`; hard gets `N x hard / (hard + random)` rounded down.
    pub hard_ratio: u32,
    pub random_ratio: u32,
    pub seed: u64,
}

impl Default for SampleConfig {
    fn default() -> Self {
        Self {
            negatives_per_group: 16,
            hard_ratio: 1,
            random_ratio: 1,
            seed: 0,
        }
    }
}

impl SampleConfig {
    pub fn validate(&self) -> Result<(), MineError> {
        if self.negatives_per_group == 0 {
            return Err(MineError::SampleConfig {
                reason: "negatives_per_group must be at least 1",
            });
        }
        if self.hard_ratio == 0 && self.random_ratio == 0 {
            return Err(MineError::SampleConfig {
                reason: "hard_ratio and random_ratio cannot both be 0",
            });
        }
        Ok(())
    }

    /// (hard, random) negatives wanted per positive.
    pub fn split(&self) -> (usize, usize) {
        let total = self.negatives_per_group;
        let ratio_sum = u64::from(self.hard_ratio) + u64::from(self.random_ratio);
        let hard = (total as u64 * u64::from(self.hard_ratio) / ratio_sum.max(1)) as usize;
        (hard, total - hard)
    }
}

/// The documents random negatives are drawn from (e.g. the query's M-BEIR task pool), kept in id order so that
/// the draw does not depend on how documents happen to be numbered.
#[derive(Debug, Clone)]
pub struct RandomPool {
    /// Ascending id ranks ([`DocOrder::rank`]) of the pool's documents.
    ranks: Vec<u32>,
}

impl RandomPool {
    /// A pool of the given documents (order and duplicates do not matter).
    pub fn new(docs: &[u32], order: &DocOrder) -> Result<Self, MineError> {
        let mut ranks = Vec::with_capacity(docs.len());
        for &doc in docs {
            order.check(doc, || "random pool".to_owned())?;
            ranks.push(order.rank(doc));
        }
        ranks.sort_unstable();
        ranks.dedup();
        Ok(Self { ranks })
    }

    /// Every document of the corpus.
    pub fn all(order: &DocOrder) -> Self {
        Self {
            ranks: (0..order.len() as u32).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.ranks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ranks.is_empty()
    }

    fn contains(&self, doc: u32, order: &DocOrder) -> bool {
        self.ranks.binary_search(&order.rank(doc)).is_ok()
    }

    fn doc(&self, index: usize, order: &DocOrder) -> u32 {
        order.doc_at(self.ranks[index])
    }
}

/// A sampled negative with its provenance.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Negative {
    pub doc: u32,
    pub kind: NegativeKind,
    /// Its score against the query (the retriever's inner product).
    pub score: f32,
    /// Its rank in the query's candidate list (hard negatives only).
    pub rank: Option<u32>,
}

/// A query's negatives. Each positive forms one training group with all of them (1 + N, the paper's layout), so
/// a query with several positives shares one set of negatives, none of which is any of its positives.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryNegatives {
    /// The query's positives, deduplicated, in id order.
    pub positives: Vec<u32>,
    /// Hard negatives first (in rank order), then random ones (in draw order).
    pub negatives: Vec<Negative>,
    /// Hard negatives wanted but not available (too few eligible candidates).
    pub short_hard: usize,
    /// Random negatives wanted but not available (pool too small once positives and the rest are removed).
    pub short_random: usize,
    /// The filter that chose the hard candidates.
    pub filter: FilterConfig,
    /// The score ceiling the filter applied to this query.
    pub ceiling: Option<f32>,
}

impl QueryNegatives {
    /// Negatives wanted but not found.
    pub fn short(&self) -> usize {
        self.short_hard + self.short_random
    }

    /// The negatives of one kind, in their order.
    pub fn of_kind(&self, kind: NegativeKind) -> impl Iterator<Item = &Negative> {
        self.negatives
            .iter()
            .filter(move |negative| negative.kind == kind)
    }
}

/// One query's inputs to sampling.
#[derive(Debug, Clone, Copy)]
pub struct QueryInput<'a> {
    pub qid: &'a str,
    /// Every positive (gold) document of the query.
    pub positives: &'a [u32],
    pub filtered: &'a Filtered,
}

/// Samples the query's negatives: hard ones uniformly from the eligible candidates, random ones uniformly from
/// `pool` minus the query's positives, its hard picks and the candidates the score rules dropped as likely false
/// negatives. No positive is ever a negative, and nothing tops a short set up. `score` gives a random negative's
/// score (e.g. [`CorpusPart::score`](super::CorpusPart::score)).
pub fn sample_negatives(
    query: &QueryInput<'_>,
    pool: &RandomPool,
    order: &DocOrder,
    config: &SampleConfig,
    mut score: impl FnMut(u32) -> Result<f32, MineError>,
) -> Result<QueryNegatives, MineError> {
    config.validate()?;
    check_docs(query, order)?;
    let mut positives = query.positives.to_vec();
    positives.sort_unstable_by_key(|&doc| order.rank(doc));
    positives.dedup();
    let (hard_wanted, random_wanted) = config.split();
    let mut blocked = positives.clone();
    blocked.sort_unstable();
    let hard: Vec<&Candidate> = query
        .filtered
        .eligible
        .iter()
        .filter(|candidate| blocked.binary_search(&candidate.doc).is_err())
        .collect();
    let mut rng = query_rng(config.seed, query.qid);
    let mut picks = choose(&mut rng, hard.len(), hard_wanted);
    picks.sort_unstable();
    let mut negatives: Vec<Negative> = picks
        .iter()
        .map(|&index| Negative {
            doc: hard[index].doc,
            kind: NegativeKind::Hard,
            score: hard[index].score,
            rank: Some(hard[index].rank),
        })
        .collect();
    // Suspected false negatives (dropped by a score rule; the rank window says nothing about them) and the hard
    // picks are no random negatives either.
    let suspects = query
        .filtered
        .dropped
        .iter()
        .filter(|(_, kind)| *kind != FilterKind::RankWindow)
        .map(|(candidate, _)| candidate.doc);
    blocked.extend(suspects.chain(negatives.iter().map(|negative| negative.doc)));
    blocked.sort_unstable();
    blocked.dedup();
    let randoms = draw_random(&mut rng, pool, order, &blocked, random_wanted);
    let random_found = randoms.len();
    for doc in randoms {
        negatives.push(Negative {
            doc,
            kind: NegativeKind::Random,
            score: score(doc)?,
            rank: None,
        });
    }
    Ok(QueryNegatives {
        positives,
        negatives,
        short_hard: hard_wanted - picks.len(),
        short_random: random_wanted - random_found,
        filter: query.filtered.config,
        ceiling: query.filtered.ceiling,
    })
}

/// Every document index the query names must be in the corpus.
fn check_docs(query: &QueryInput<'_>, order: &DocOrder) -> Result<(), MineError> {
    for &doc in query.positives {
        order.check(doc, || format!("positives of query {}", query.qid))?;
    }
    let filtered = query.filtered;
    let dropped = filtered.dropped.iter().map(|(candidate, _)| candidate);
    for candidate in filtered.eligible.iter().chain(dropped) {
        order.check(candidate.doc, || {
            format!("candidates of query {}", query.qid)
        })?;
    }
    Ok(())
}

/// The query's own random stream: a stable hash of (seed, qid), so shards agree.
fn query_rng(seed: u64, qid: &str) -> ChaCha8Rng {
    let mut hasher = Sha256::new();
    hasher.update(b"umrank/mine/sample\0");
    hasher.update(seed.to_le_bytes());
    hasher.update(qid.as_bytes());
    ChaCha8Rng::from_seed(hasher.finalize().into())
}

/// `min(wanted, n)` distinct indices of `0..n`, uniformly (partial Fisher-Yates).
fn choose(rng: &mut ChaCha8Rng, n: usize, wanted: usize) -> Vec<usize> {
    let mut indices: Vec<usize> = (0..n).collect();
    let take = wanted.min(n);
    for i in 0..take {
        let j = i + rng.random_range(0..(n - i) as u64) as usize;
        indices.swap(i, j);
    }
    indices.truncate(take);
    indices
}

/// Up to `wanted` distinct documents of `pool` outside `blocked` (sorted), uniformly. When the pool is large next
/// to what is blocked and wanted, draws are rejected and retried (each succeeds with probability >= 1/2);
/// otherwise the allowed documents are listed and chosen from.
fn draw_random(
    rng: &mut ChaCha8Rng,
    pool: &RandomPool,
    order: &DocOrder,
    blocked: &[u32],
    wanted: usize,
) -> Vec<u32> {
    let blocked_in_pool = blocked
        .iter()
        .filter(|&&doc| pool.contains(doc, order))
        .count();
    let wanted = wanted.min(pool.len() - blocked_in_pool);
    let is_blocked = |doc: u32| blocked.binary_search(&doc).is_ok();
    if pool.len() >= 2 * (blocked_in_pool + wanted) {
        let mut drawn = Vec::with_capacity(wanted);
        while drawn.len() < wanted {
            let doc = pool.doc(rng.random_range(0..pool.len() as u64) as usize, order);
            if !is_blocked(doc) && !drawn.contains(&doc) {
                drawn.push(doc);
            }
        }
        drawn
    } else {
        let allowed: Vec<u32> = (0..pool.len())
            .map(|index| pool.doc(index, order))
            .filter(|&doc| !is_blocked(doc))
            .collect();
        choose(rng, allowed.len(), wanted)
            .into_iter()
            .map(|index| allowed[index])
            .collect()
    }
}
