//! The running top-k of one query: a bounded heap whose root is the worst hit kept so far.

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

/// A document and its score against a query.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub doc: u32,
    pub score: f32,
}

/// Orders scores numerically and totally: `+ 0.0` folds -0 into +0 (so the two compare equal, as they do
/// numerically and in trec_eval), and `total_cmp` never fails. Scores are finite by construction (inputs are
/// checked for overflow up front), where this agrees with `<` and `>=`.
pub(crate) fn score_cmp(a: f32, b: f32) -> Ordering {
    (a + 0.0).total_cmp(&(b + 0.0))
}

/// A hit with its tie rank; `Ord` is the ranking order (greater ranks first): score, then the document's
/// position in id order, so the higher id wins a tie as in trec_eval.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ranked {
    pub(crate) score: f32,
    pub(crate) tie: u32,
    pub(crate) doc: u32,
}

impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> Ordering {
        score_cmp(self.score, other.score).then(self.tie.cmp(&other.tie))
    }
}

impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked {}

/// The best `k` hits offered so far. Because the ranking order is total, the kept set after any sequence of
/// offers is exactly the top `k` of everything offered, whatever the order of the offers: this is what makes
/// chunked, sharded and single-pass searches agree.
///
/// Offers collect in a buffer of up to `2k`; when it fills, a partial selection (`select_nth_unstable`, linear)
/// keeps the best `k` and their worst becomes the floor that later offers must beat. That costs O(1) amortised
/// per offer, against O(log k) for a heap, and no chunk of scores is ever fully sorted.
pub(crate) struct RunningTopK {
    k: usize,
    kept: Vec<Ranked>,
    floor: Option<Ranked>,
}

impl RunningTopK {
    pub(crate) fn new(k: usize) -> Self {
        Self {
            k,
            kept: Vec::new(),
            floor: None,
        }
    }

    /// A score below this cannot enter; equal scores may, depending on the tie rank. Scans compare against it
    /// before paying for an offer.
    pub(crate) fn threshold(&self) -> f32 {
        if self.k == 0 {
            f32::INFINITY
        } else {
            self.floor.map_or(f32::NEG_INFINITY, |floor| floor.score)
        }
    }

    pub(crate) fn offer(&mut self, hit: Ranked) {
        if self.k == 0 || self.floor.is_some_and(|floor| hit <= floor) {
            return;
        }
        self.kept.push(hit);
        if self.kept.len() >= 2 * self.k {
            self.keep_best();
        }
    }

    /// Cuts the buffer to its best `k` and raises the floor to the worst of them.
    fn keep_best(&mut self) {
        if self.kept.len() > self.k {
            self.kept
                .select_nth_unstable_by(self.k - 1, |a, b| b.cmp(a));
            self.kept.truncate(self.k);
            self.floor = Some(self.kept[self.k - 1]);
        }
    }

    /// The kept hits, best first.
    pub(crate) fn into_hits(mut self) -> Vec<Hit> {
        self.keep_best();
        self.kept.sort_unstable_by(|a, b| b.cmp(a));
        self.kept
            .into_iter()
            .map(|ranked| Hit {
                doc: ranked.doc,
                score: ranked.score,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranked(score: f32, tie: u32) -> Ranked {
        Ranked {
            score,
            tie,
            doc: tie,
        }
    }

    #[test]
    fn the_floor_rises_as_the_buffer_compacts() {
        let mut top = RunningTopK::new(2);
        for (score, tie) in [(1.0, 0), (3.0, 1), (2.0, 2)] {
            top.offer(ranked(score, tie));
        }
        assert_eq!(top.threshold(), f32::NEG_INFINITY);
        top.offer(ranked(0.5, 3));
        assert_eq!(top.threshold(), 2.0);
        top.offer(ranked(2.0, 0));
        top.offer(ranked(2.0, 4));
        let docs: Vec<u32> = top.into_hits().iter().map(|hit| hit.doc).collect();
        assert_eq!(docs, vec![1, 4]);
    }

    #[test]
    fn keeps_the_best_k_with_ties_broken_by_tie_rank() {
        let mut top = RunningTopK::new(3);
        assert_eq!(top.threshold(), f32::NEG_INFINITY);
        for (score, tie) in [(1.0, 0), (2.0, 1), (1.0, 5), (0.5, 2), (1.0, 3), (2.0, 4)] {
            top.offer(ranked(score, tie));
        }
        let docs: Vec<u32> = top.into_hits().iter().map(|hit| hit.doc).collect();
        assert_eq!(docs, vec![4, 1, 5]);
    }

    #[test]
    fn zero_k_keeps_nothing_and_negative_zero_ties_with_zero() {
        let mut none = RunningTopK::new(0);
        none.offer(ranked(1.0, 0));
        assert_eq!(none.threshold(), f32::INFINITY);
        assert!(none.into_hits().is_empty());
        assert_eq!(ranked(-0.0, 1).cmp(&ranked(0.0, 0)), Ordering::Greater);
    }
}
