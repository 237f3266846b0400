//! The paired randomisation test of Smucker, Allan and Carterette (CIKM 2007) between two runs.
//!
//! Under the null hypothesis the two systems are interchangeable, so each query's pair of scores may be swapped
//! freely. The test swaps each pair with probability 1/2 in every permutation and reports the fraction of
//! permutations whose |mean difference| is at least the observed one (two-sided). It needs no assumption about
//! the distribution of the differences, which for metrics bounded in [0, 1] are far from normal.

use std::collections::BTreeMap;

use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::EvalError;

/// The number of permutations Smucker et al. found enough for a stable p-value near 0.05.
pub const DEFAULT_PERMUTATIONS: usize = 10_000;

/// The outcome of [`randomisation_test`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RandomisationTest {
    /// mean(a) - mean(b) over the paired queries.
    pub mean_difference: f64,
    /// Two-sided p-value: the fraction of permutations with |mean difference| >= the observed one.
    pub p_value: f64,
    pub permutations: usize,
}

/// Tests whether the paired per-query values `a` and `b` (same queries, same order) differ.
///
/// The same inputs, `permutations` and `seed` always give the same p-value.
pub fn randomisation_test(
    a: &[f64],
    b: &[f64],
    permutations: usize,
    seed: u64,
) -> Result<RandomisationTest, EvalError> {
    let differences = paired_differences(a, b)?;
    if permutations == 0 {
        return Err(EvalError::Pairing(
            "the number of permutations must be at least 1".to_owned(),
        ));
    }
    let observed = differences.iter().sum::<f64>();
    let threshold = observed.abs() - rounding_slack(&differences);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let at_least_as_extreme = (0..permutations)
        .filter(|_| swapped_sum(&differences, &mut rng).abs() >= threshold)
        .count();
    Ok(RandomisationTest {
        mean_difference: observed / differences.len() as f64,
        p_value: at_least_as_extreme as f64 / permutations as f64,
        permutations,
    })
}

/// Lines up two runs' per-query values of one metric by query id, for [`randomisation_test`].
///
/// Both must hold the same queries, which they do when they come from evaluations against the same qrels.
pub fn paired_values(
    a: &BTreeMap<String, f64>,
    b: &BTreeMap<String, f64>,
) -> Result<(Vec<f64>, Vec<f64>), EvalError> {
    if let Some(query_id) = a.keys().find(|query_id| !b.contains_key(*query_id)) {
        return Err(EvalError::Pairing(format!(
            "query {query_id} is in the first run only"
        )));
    }
    if let Some(query_id) = b.keys().find(|query_id| !a.contains_key(*query_id)) {
        return Err(EvalError::Pairing(format!(
            "query {query_id} is in the second run only"
        )));
    }
    Ok((a.values().copied().collect(), b.values().copied().collect()))
}

/// The sum of the differences with each one's sign flipped (its pair swapped) on a fair coin.
fn swapped_sum(differences: &[f64], rng: &mut ChaCha8Rng) -> f64 {
    let mut sum = 0.0;
    for chunk in differences.chunks(64) {
        let coins = rng.next_u64();
        for (bit, &difference) in chunk.iter().enumerate() {
            sum += if coins >> bit & 1 == 1 {
                -difference
            } else {
                difference
            };
        }
    }
    sum
}

/// A bound on the rounding error of a sum of the differences, so that a permuted sum equal in exact arithmetic
/// to the observed one (for instance with two equal differences swapped) counts as at least as extreme.
fn rounding_slack(differences: &[f64]) -> f64 {
    let magnitude: f64 = differences.iter().map(|difference| difference.abs()).sum();
    4.0 * differences.len() as f64 * f64::EPSILON * magnitude
}

fn paired_differences(a: &[f64], b: &[f64]) -> Result<Vec<f64>, EvalError> {
    if a.len() != b.len() {
        return Err(EvalError::Pairing(format!(
            "{} values against {}",
            a.len(),
            b.len()
        )));
    }
    if a.is_empty() {
        return Err(EvalError::Pairing("no queries to compare".to_owned()));
    }
    if a.iter().chain(b).any(|value| !value.is_finite()) {
        return Err(EvalError::Pairing(
            "a per-query value is not a finite number".to_owned(),
        ));
    }
    Ok(a.iter().zip(b).map(|(x, y)| x - y).collect())
}
