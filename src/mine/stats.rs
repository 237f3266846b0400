//! The statistics table the mine stage prints and saves: are the hard negatives harder than the random ones,
//! how far below the positives do they sit, and how much did the filter throw away.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::filter::{FilterKind, Filtered};
use super::sample::QueryNegatives;
use crate::schema::NegativeKind;

/// Summary of a score distribution. Quantiles interpolate linearly between order statistics (numpy's default:
/// the p-quantile of n sorted values sits at position p x (n - 1)).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreSummary {
    pub count: usize,
    pub min: f64,
    pub p5: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p95: f64,
    pub max: f64,
    pub mean: f64,
}

impl ScoreSummary {
    /// `None` for no scores.
    pub fn of(scores: &[f32]) -> Option<Self> {
        if scores.is_empty() {
            return None;
        }
        let mut sorted: Vec<f64> = scores.iter().map(|&score| f64::from(score)).collect();
        sorted.sort_unstable_by(f64::total_cmp);
        let quantile = |p: f64| {
            let position = p * (sorted.len() - 1) as f64;
            let below = position.floor() as usize;
            let above = (below + 1).min(sorted.len() - 1);
            sorted[below] + (position - below as f64) * (sorted[above] - sorted[below])
        };
        Some(Self {
            count: sorted.len(),
            min: sorted[0],
            p5: quantile(0.05),
            p25: quantile(0.25),
            p50: quantile(0.5),
            p75: quantile(0.75),
            p95: quantile(0.95),
            max: sorted[sorted.len() - 1],
            mean: sorted.iter().sum::<f64>() / sorted.len() as f64,
        })
    }
}

/// Candidates dropped, by the rule that dropped them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropCounts {
    pub rank_window: usize,
    pub max_score: usize,
    pub relative_margin: usize,
    pub absolute_margin: usize,
}

impl DropCounts {
    pub fn get(&self, kind: FilterKind) -> usize {
        match kind {
            FilterKind::RankWindow => self.rank_window,
            FilterKind::MaxScore => self.max_score,
            FilterKind::RelativeMargin => self.relative_margin,
            FilterKind::AbsoluteMargin => self.absolute_margin,
        }
    }

    pub fn total(&self) -> usize {
        FilterKind::ALL.iter().map(|&kind| self.get(kind)).sum()
    }

    fn count(&mut self, kind: FilterKind) {
        *self.slot(kind) += 1;
    }

    fn slot(&mut self, kind: FilterKind) -> &mut usize {
        match kind {
            FilterKind::RankWindow => &mut self.rank_window,
            FilterKind::MaxScore => &mut self.max_score,
            FilterKind::RelativeMargin => &mut self.relative_margin,
            FilterKind::AbsoluteMargin => &mut self.absolute_margin,
        }
    }
}

/// The mine stage's statistics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MiningStats {
    /// Queries sampled for (each with its negatives row).
    pub queries: usize,
    /// Training groups those rows make: one per positive.
    pub groups: usize,
    /// Queries that could not be sampled for because they have no positive to score against (no negatives row).
    pub queries_without_positives: usize,
    /// Scores of the queries' positives.
    pub positives: Option<ScoreSummary>,
    pub hard_negatives: Option<ScoreSummary>,
    pub random_negatives: Option<ScoreSummary>,
    pub dropped: DropCounts,
    /// Queries with at least one negative wanted but not found.
    pub queries_short: usize,
    /// Negatives wanted but not found, over all queries.
    pub total_short: usize,
    /// Mean over queries holding both kinds of (mean hard score - mean random score): how much harder the mined
    /// negatives are, measured within each query so that easy and hard queries do not mix.
    pub mean_gap: Option<f64>,
}

/// One query's share of the statistics. The statistics keep these per query, and compute every figure over them
/// in qid order, so that the table of a job array's parts, merged, is exactly the table of one run.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryStats {
    pub qid: String,
    /// Scores of its positives that have embeddings (none for a query without positives).
    pub positives: Vec<f32>,
    pub hard: Vec<f32>,
    pub random: Vec<f32>,
    pub dropped: DropCounts,
    /// Negatives wanted but not found.
    pub short: usize,
    /// Training groups its row makes: one per positive.
    pub groups: usize,
    /// No positive to score against: no negatives row.
    pub without_positives: bool,
}

impl QueryStats {
    /// Mean hard score minus mean random score, when the query has both kinds.
    fn gap(&self) -> Option<f64> {
        Some(mean(self.hard.iter().copied())? - mean(self.random.iter().copied())?)
    }
}

/// Collects per-query results into [`MiningStats`].
#[derive(Debug, Default)]
pub struct StatsBuilder {
    queries: Vec<QueryStats>,
}

impl StatsBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// The statistics of queries recorded elsewhere (the parts of a job array).
    pub fn from_queries(queries: Vec<QueryStats>) -> Self {
        Self { queries }
    }

    /// Adds one query: its positives' scores, its filter split and its sampled negatives.
    pub fn add_query(
        &mut self,
        qid: &str,
        positive_scores: &[f32],
        filtered: &Filtered,
        negatives: &QueryNegatives,
    ) {
        let mut dropped = DropCounts::default();
        for (_, kind) in &filtered.dropped {
            dropped.count(*kind);
        }
        let scores_of = |kind| {
            negatives
                .of_kind(kind)
                .map(|negative| negative.score)
                .collect()
        };
        self.queries.push(QueryStats {
            qid: qid.to_string(),
            positives: positive_scores.to_vec(),
            hard: scores_of(NegativeKind::Hard),
            random: scores_of(NegativeKind::Random),
            dropped,
            short: negatives.short(),
            groups: negatives.positives.len(),
            without_positives: false,
        });
    }

    /// Counts a query left without negatives because it has no positive.
    pub fn add_query_without_positives(&mut self, qid: &str) {
        self.queries.push(QueryStats {
            qid: qid.to_string(),
            positives: Vec::new(),
            hard: Vec::new(),
            random: Vec::new(),
            dropped: DropCounts::default(),
            short: 0,
            groups: 0,
            without_positives: true,
        });
    }

    /// The per-query records, in qid order.
    pub fn queries(&mut self) -> &[QueryStats] {
        self.queries.sort_unstable_by(|a, b| a.qid.cmp(&b.qid));
        &self.queries
    }

    pub fn finish(mut self) -> MiningStats {
        self.queries.sort_unstable_by(|a, b| a.qid.cmp(&b.qid));
        let (with, without): (Vec<&QueryStats>, Vec<&QueryStats>) = self
            .queries
            .iter()
            .partition(|query| !query.without_positives);
        let all = |pick: fn(&QueryStats) -> &[f32]| -> Vec<f32> {
            with.iter()
                .flat_map(|query| pick(query).iter().copied())
                .collect()
        };
        let mut dropped = DropCounts::default();
        for query in &with {
            for kind in FilterKind::ALL {
                *dropped.slot(kind) += query.dropped.get(kind);
            }
        }
        let gaps: Vec<f64> = with.iter().filter_map(|query| query.gap()).collect();
        MiningStats {
            queries: with.len(),
            groups: with.iter().map(|query| query.groups).sum(),
            queries_without_positives: without.len(),
            positives: ScoreSummary::of(&all(|query| &query.positives)),
            hard_negatives: ScoreSummary::of(&all(|query| &query.hard)),
            random_negatives: ScoreSummary::of(&all(|query| &query.random)),
            dropped,
            queries_short: with.iter().filter(|query| query.short > 0).count(),
            total_short: with.iter().map(|query| query.short).sum(),
            mean_gap: (!gaps.is_empty()).then(|| gaps.iter().sum::<f64>() / gaps.len() as f64),
        }
    }
}

fn mean(scores: impl Iterator<Item = f32>) -> Option<f64> {
    let (sum, count) = scores.fold((0.0f64, 0usize), |(sum, count), score| {
        (sum + f64::from(score), count + 1)
    });
    (count > 0).then(|| sum / count as f64)
}

impl fmt::Display for MiningStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const COLUMNS: [&str; 9] = [
            "count", "min", "p5", "p25", "p50", "p75", "p95", "max", "mean",
        ];
        write!(f, "{:<18}", "scores")?;
        for column in COLUMNS {
            write!(f, "{column:>10}")?;
        }
        writeln!(f)?;
        let rows = [
            ("positives", &self.positives),
            ("hard negatives", &self.hard_negatives),
            ("random negatives", &self.random_negatives),
        ];
        for (name, summary) in rows {
            write!(f, "{name:<18}")?;
            match summary {
                None => write!(f, "{:>10}", 0)?,
                Some(s) => {
                    write!(f, "{:>10}", s.count)?;
                    for value in [s.min, s.p5, s.p25, s.p50, s.p75, s.p95, s.max, s.mean] {
                        write!(f, "{value:>10.4}")?;
                    }
                }
            }
            writeln!(f)?;
        }
        write!(f, "dropped by filter:")?;
        for (index, kind) in FilterKind::ALL.iter().enumerate() {
            let separator = if index == 0 { " " } else { ", " };
            write!(f, "{separator}{} {}", kind.name(), self.dropped.get(*kind))?;
        }
        writeln!(f, " (total {})", self.dropped.total())?;
        writeln!(
            f,
            "queries with negatives: {} ({} groups, one per positive)",
            self.queries, self.groups
        )?;
        writeln!(
            f,
            "queries short of negatives: {} of {} (total shortfall {})",
            self.queries_short, self.queries, self.total_short
        )?;
        writeln!(
            f,
            "queries without positives (no negatives): {}",
            self.queries_without_positives
        )?;
        match self.mean_gap {
            Some(gap) => write!(f, "mean score gap, hard - random (per query): {gap:.4}"),
            None => write!(f, "mean score gap, hard - random (per query): n/a"),
        }
    }
}
