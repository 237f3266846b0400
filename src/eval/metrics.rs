//! Retrieval metrics per query and their means, computed as trec_eval 9.x computes them.
//!
//! The conventions (docs/evaluation.md) are those of `trec_eval -c` at relevance level 1: a document is relevant
//! when its judged level is at least 1; the evaluated queries are exactly those with at least one relevant
//! document in the qrels; such a query absent from the run scores 0; run queries without judgements are ignored.
//! Documents are ordered by [`ranked_documents`], never by the run's rank column.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::trec::{check_finite, ranked_documents};
use super::{EvalError, Qrels, Run};

/// A metric at a cutoff `k` (the number of top-ranked documents it looks at).
///
/// The names are umrank's report names; the trec_eval measure each one equals is given per variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Metric {
    /// `ndcg@k` = trec_eval `ndcg_cut.k`: gain is the relevance level, discount log2(rank + 1), ideal from qrels.
    Ndcg(usize),
    /// `recall@k` = trec_eval `recall.k`: relevant documents in the top k over all relevant documents.
    Recall(usize),
    /// `map@k` = trec_eval `map_cut.k`: precision summed at each relevant document in the top k, over all relevant.
    Map(usize),
    /// `hit@k` = trec_eval `success.k` (what M-BEIR calls recall): 1 when the top k hold a relevant document.
    Hit(usize),
    /// `mrr@k` = trec_eval `recip_rank` on the run cut to its top k: 1 / rank of the first relevant, else 0.
    Mrr(usize),
}

impl Metric {
    /// The metrics umrank reports by default.
    pub const DEFAULT: [Metric; 6] = [
        Metric::Ndcg(10),
        Metric::Recall(10),
        Metric::Recall(100),
        Metric::Map(100),
        Metric::Hit(10),
        Metric::Mrr(10),
    ];

    /// The cutoff k.
    pub fn cutoff(self) -> usize {
        match self {
            Metric::Ndcg(k)
            | Metric::Recall(k)
            | Metric::Map(k)
            | Metric::Hit(k)
            | Metric::Mrr(k) => k,
        }
    }

    fn family(self) -> &'static str {
        match self {
            Metric::Ndcg(_) => "ndcg",
            Metric::Recall(_) => "recall",
            Metric::Map(_) => "map",
            Metric::Hit(_) => "hit",
            Metric::Mrr(_) => "mrr",
        }
    }

    /// The metric's value for one query from the relevance levels of its documents in rank order.
    fn value(self, query: &JudgedRanking) -> f64 {
        let k = self.cutoff();
        let top = &query.ranked[..query.ranked.len().min(k)];
        let relevant = query.ideal.len() as f64;
        match self {
            Metric::Ndcg(_) => {
                let ideal = discounted_gain(&query.ideal[..query.ideal.len().min(k)]);
                discounted_gain(top) / ideal
            }
            Metric::Recall(_) => {
                top.iter().filter(|&&level| is_relevant(level)).count() as f64 / relevant
            }
            Metric::Map(_) => {
                let mut found = 0usize;
                let mut precision_sum = 0.0;
                for (index, &level) in top.iter().enumerate() {
                    if is_relevant(level) {
                        found += 1;
                        precision_sum += found as f64 / (index + 1) as f64;
                    }
                }
                precision_sum / relevant
            }
            Metric::Hit(_) => f64::from(u8::from(top.iter().any(|&level| is_relevant(level)))),
            Metric::Mrr(_) => top
                .iter()
                .position(|&level| is_relevant(level))
                .map_or(0.0, |index| 1.0 / (index + 1) as f64),
        }
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.family(), self.cutoff())
    }
}

impl FromStr for Metric {
    type Err = EvalError;

    /// Parses a report name such as `ndcg@10`.
    fn from_str(name: &str) -> Result<Self, Self::Err> {
        let unknown = || EvalError::UnknownMetric(name.to_owned());
        let (family, cutoff) = name.split_once('@').ok_or_else(unknown)?;
        let k: usize = cutoff
            .parse()
            .ok()
            .filter(|&k| k >= 1)
            .ok_or_else(unknown)?;
        match family {
            "ndcg" => Ok(Metric::Ndcg(k)),
            "recall" => Ok(Metric::Recall(k)),
            "map" => Ok(Metric::Map(k)),
            "hit" => Ok(Metric::Hit(k)),
            "mrr" => Ok(Metric::Mrr(k)),
            _ => Err(unknown()),
        }
    }
}

/// Per-query values and means of a set of metrics for one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// metric -> query id -> value, over every query with at least one relevant document (the same queries for
    /// every metric and for every run evaluated against the same qrels, so two runs pair up for a test).
    pub per_query: PerQuery,
    /// metric -> mean of its per-query values.
    pub mean: BTreeMap<Metric, f64>,
}

/// metric -> query id -> value: an [`Evaluation`] before its means.
pub type PerQuery = BTreeMap<Metric, BTreeMap<String, f64>>;

/// Evaluates `run` against `qrels` with `metrics` (see the module docs for the conventions).
///
/// Fails when a cutoff is 0, a score is not finite, or no query has a relevant document (nothing to average).
pub fn evaluate(run: &Run, qrels: &Qrels, metrics: &[Metric]) -> Result<Evaluation, EvalError> {
    Evaluation::from_per_query(evaluate_queries(run, qrels, metrics)?)
}

/// The per-query values of [`evaluate`], without the means: what a shard of the eval stage can compute for its
/// own queries (it may have no query with a relevant document, and then has nothing to average).
pub fn evaluate_queries(
    run: &Run,
    qrels: &Qrels,
    metrics: &[Metric],
) -> Result<PerQuery, EvalError> {
    if let Some(metric) = metrics.iter().find(|metric| metric.cutoff() == 0) {
        return Err(EvalError::ZeroCutoff(metric.to_string()));
    }
    let mut per_query: PerQuery = metrics
        .iter()
        .map(|&metric| (metric, BTreeMap::new()))
        .collect();
    let empty = BTreeMap::new();
    for (query_id, judgements) in qrels {
        let scores = run.get(query_id).unwrap_or(&empty);
        let Some(query) = JudgedRanking::new(query_id, scores, judgements)? else {
            continue;
        };
        for (metric, values) in per_query.iter_mut() {
            values.insert(query_id.clone(), metric.value(&query));
        }
    }
    Ok(per_query)
}

impl Evaluation {
    /// Adds the means to per-query values. Each mean sums the values in query id order, so the same values give
    /// the same bits however they were gathered (by one run, or from the parts of a job array).
    pub fn from_per_query(per_query: PerQuery) -> Result<Self, EvalError> {
        let mean = per_query
            .iter()
            .map(|(&metric, values)| Ok((metric, mean_of(values.values().copied())?)))
            .collect::<Result<_, EvalError>>()?;
        Ok(Evaluation { per_query, mean })
    }
}

/// The arithmetic mean; an error for no values, where the mean is undefined.
pub(crate) fn mean_of(values: impl ExactSizeIterator<Item = f64>) -> Result<f64, EvalError> {
    let count = values.len();
    if count == 0 {
        return Err(EvalError::NoRelevantQueries);
    }
    Ok(positive_sum(values) / count as f64)
}

/// A sum that starts at +0.0: std's `Sum` for f64 starts at -0.0, which would write a query or run without a hit
/// as `-0.0` in metrics.json and the TREC files.
fn positive_sum(values: impl Iterator<Item = f64>) -> f64 {
    values.fold(0.0, |total, value| total + value)
}

/// One query's run reduced to what the metrics need.
struct JudgedRanking {
    /// Relevance level of each retrieved document in trec_eval's order (0 when unjudged).
    ranked: Vec<i64>,
    /// Levels of the relevant judged documents, highest first: the ideal ranking for nDCG.
    ideal: Vec<i64>,
}

impl JudgedRanking {
    /// `None` for a query without relevant documents, which is not evaluated.
    fn new(
        query_id: &str,
        scores: &BTreeMap<String, f64>,
        judgements: &BTreeMap<String, i64>,
    ) -> Result<Option<Self>, EvalError> {
        let mut ideal: Vec<i64> = judgements
            .values()
            .copied()
            .filter(|&level| is_relevant(level))
            .collect();
        if ideal.is_empty() {
            return Ok(None);
        }
        ideal.sort_unstable_by(|a, b| b.cmp(a));
        let ranked = ranked_documents(scores)
            .into_iter()
            .map(|(doc_id, score)| {
                check_finite(query_id, doc_id, score)?;
                Ok(judgements.get(doc_id).copied().unwrap_or(0))
            })
            .collect::<Result<_, EvalError>>()?;
        Ok(Some(JudgedRanking { ranked, ideal }))
    }
}

/// trec_eval's relevance level 1: levels 0 and below (including its "unjudged" negatives) are not relevant.
fn is_relevant(level: i64) -> bool {
    level >= 1
}

/// DCG with the relevance level as gain and a log2(rank + 1) discount; non-positive levels gain nothing.
fn discounted_gain(levels: &[i64]) -> f64 {
    positive_sum(
        levels
            .iter()
            .enumerate()
            .filter(|(_, &level)| level > 0)
            .map(|(index, &level)| level as f64 / ((index + 2) as f64).log2()),
    )
}
