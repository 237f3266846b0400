//! The report over seeds: each reranker's figures over the seeds it was trained with, as mean and spread beside
//! the first stage's, and paired randomisation tests pooled over the seeds.
//!
//! A pipeline run over N seeds ([`crate::pipeline::seeds`]) leaves one eval stage per reranker and seed
//! (`eval_sft`, `eval_sft@s2`, ...); the report groups them back by reranker. One training run's figures move
//! with its seed (initialisation, data order, and dropout where it is on) and with the CPU's kernels, on the demo
//! by up to 0.05 ndcg@10 over three seeds, so a claim about a reranker has to hold over seeds, not in one run.
//!
//! **Spread.** Per metric, over all queries, macro-averaged over tasks, and per task: the mean over the seeds,
//! the standard deviation (n - 1 in the denominator; none for one seed), the smallest and the largest value, and
//! in how many seeds the reranker's macro average is above the first stage's.
//!
//! **Pooled test.** The unit of a paired test is the query, seen by two systems. Over seeds, each query's
//! difference reranked minus first stage is averaged over the seeds, `d_q = mean_s (r_sq - f_sq)`, and the
//! paired randomisation test ([`crate::eval::randomisation_test`]) runs on these, one value per query; its
//! statistic, the mean of `d_q`, is the mean over seeds of the all-queries Δ. Pooling the (seed, query) pairs as
//! if independent would count each query N times and overstate the evidence, since a query's N values share its
//! difficulty. The null hypothesis is that for every query the seed-averaged reranker and the first stage are
//! interchangeable. The test holds the N trained models fixed: it says whether these seeds' rerankers, taken
//! together, differ from the first stage on these queries; the spread says how far one seed's run can stray.
//! Two rerankers are compared the same way, each query's mean over one reranker's seeds against its mean over
//! the other's. The tests are over all queries only: `metrics.json` gives each task's mean, not which queries are
//! in it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::collect::Named;
use super::ReportError;
use crate::eval::stage::EvalSummary;
use crate::eval::{
    paired_values, randomisation_test, EvalError, RunMetrics, Significance, TestSettings,
};
use crate::pipeline::seeds::replica_of;

/// Values over seeds, summarised.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    pub mean: f64,
    /// The sample standard deviation (n - 1 in the denominator); `None` for a single value.
    pub sd: Option<f64>,
    pub min: f64,
    pub max: f64,
    /// The values, in seed order.
    pub values: Vec<f64>,
}

impl Spread {
    /// The spread of `values`; `None` when there are none.
    pub fn of(values: Vec<f64>) -> Option<Self> {
        let n = values.len();
        if n == 0 {
            return None;
        }
        let mean = values.iter().sum::<f64>() / n as f64;
        let sd = (n > 1).then(|| {
            let squares: f64 = values.iter().map(|v| (v - mean).powi(2)).sum();
            (squares / (n - 1) as f64).sqrt()
        });
        let min = values.iter().copied().fold(f64::INFINITY, f64::min);
        let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Self {
            mean,
            sd,
            min,
            max,
            values,
        })
    }
}

/// metric -> its spread over seeds.
pub type Spreads = BTreeMap<String, Spread>;

/// One run's figures (the first stage's or the reranker's) over seeds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Of the mean over all queries.
    pub mean: Spreads,
    /// Of the macro average over tasks.
    pub macro_average: Spreads,
    /// task -> metric -> spread of the task's mean.
    pub per_task: BTreeMap<String, Spreads>,
}

/// One reranker over its seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RerankerOverSeeds {
    /// The reranker: the name of its seed-1 eval stage.
    pub reranker: String,
    /// Its eval stages, in seed order.
    pub runs: Vec<String>,
    /// The metrics, in report order.
    pub metrics: Vec<String>,
    /// Queries evaluated (the same in every seed).
    pub queries: usize,
    pub first_stage: Figures,
    pub reranked: Figures,
    /// metric -> in how many seeds the reranker's macro average is above the first stage's.
    pub seeds_above: BTreeMap<String, usize>,
    /// metric -> the pooled test of reranked against first stage over all queries (module docs).
    pub pooled: BTreeMap<String, Significance>,
}

/// Two rerankers compared over their seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PairOverSeeds {
    pub first: String,
    pub second: String,
    /// metric -> the pooled test of the second against the first; `None` when they evaluated different queries.
    pub tests: Option<BTreeMap<String, Significance>>,
}

/// Every reranker of a report over its seeds; what `seeds.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OverSeeds {
    /// Permutations of each pooled test.
    pub permutations: usize,
    pub rerankers: Vec<RerankerOverSeeds>,
    /// Each two rerankers, in report order.
    pub compared: Vec<PairOverSeeds>,
}

impl OverSeeds {
    /// The most seeds any reranker has.
    pub fn seeds(&self) -> usize {
        self.rerankers
            .iter()
            .map(|r| r.runs.len())
            .max()
            .unwrap_or(0)
    }
}

/// Whether any of these stage names is a replica of a per-seed stage, that is, whether a report over them is one
/// over seeds.
pub fn names_replicas<'a>(stages: impl IntoIterator<Item = &'a str>) -> bool {
    stages.into_iter().any(|name| replica_of(name).1 > 1)
}

/// The rerankers of `evals` over their seeds, each two compared; `tests` sets the pooled tests' permutations and
/// seed.
pub fn over_seeds(
    evals: &[Named<EvalSummary>],
    tests: TestSettings,
) -> Result<OverSeeds, ReportError> {
    let groups = by_reranker(evals);
    let rerankers = groups
        .iter()
        .map(|(reranker, runs)| reranker_over_seeds(reranker, runs, tests))
        .collect::<Result<Vec<_>, _>>()?;
    let mut compared = Vec::new();
    for (i, (first, a)) in groups.iter().enumerate() {
        for (second, b) in &groups[i + 1..] {
            compared.push(PairOverSeeds {
                first: first.clone(),
                second: second.clone(),
                tests: compare_rerankers(a, b, tests)?,
            });
        }
    }
    Ok(OverSeeds {
        permutations: tests.permutations,
        rerankers,
        compared,
    })
}

/// A reranker (the name of its seed-1 eval stage) and its eval stages.
type Group<'a> = (String, Vec<&'a Named<EvalSummary>>);

/// The evals grouped by reranker, in the order each reranker first appears, each group in seed order.
fn by_reranker(evals: &[Named<EvalSummary>]) -> Vec<Group<'_>> {
    let mut groups: Vec<Group> = Vec::new();
    for eval in evals {
        let reranker = replica_of(&eval.stage).0;
        match groups.iter_mut().find(|(name, _)| name == reranker) {
            Some((_, runs)) => runs.push(eval),
            None => groups.push((reranker.to_owned(), vec![eval])),
        }
    }
    for (_, runs) in &mut groups {
        runs.sort_by_key(|eval| replica_of(&eval.stage).1);
    }
    groups
}

/// An eval's two runs: first stage and reranked.
fn runs_of(eval: &EvalSummary) -> Result<(&RunMetrics, &RunMetrics), EvalError> {
    let c = &eval.comparison;
    match (c.runs.get(&c.baseline), c.runs.get(&c.candidate)) {
        (Some(base), Some(cand)) => Ok((base, cand)),
        _ => Err(EvalError::Pairing(format!(
            "metrics.json lacks the run {} or {}",
            c.baseline, c.candidate
        ))),
    }
}

fn reranker_over_seeds(
    reranker: &str,
    evals: &[&Named<EvalSummary>],
    tests: TestSettings,
) -> Result<RerankerOverSeeds, ReportError> {
    let first = &evals[0].value.comparison;
    let pairs = evals
        .iter()
        .map(|eval| runs_of(&eval.value))
        .collect::<Result<Vec<_>, _>>()?;
    let bases: Vec<&RunMetrics> = pairs.iter().map(|(base, _)| *base).collect();
    let cands: Vec<&RunMetrics> = pairs.iter().map(|(_, cand)| *cand).collect();
    let names: Vec<&str> = evals.iter().map(|eval| eval.stage.as_str()).collect();
    let mut seeds_above = BTreeMap::new();
    let mut pooled = BTreeMap::new();
    for metric in &first.metrics {
        let above = pairs
            .iter()
            .filter(|(base, cand)| {
                matches!(
                    (base.macro_average.get(metric), cand.macro_average.get(metric)),
                    (Some(b), Some(c)) if c > b
                )
            })
            .count();
        seeds_above.insert(metric.clone(), above);
        let base = seed_means(&names, &bases, metric)?;
        let cand = seed_means(&names, &cands, metric)?;
        pooled.insert(metric.clone(), pooled_test(&base, &cand, tests)?);
    }
    Ok(RerankerOverSeeds {
        reranker: reranker.to_owned(),
        runs: names.iter().map(|name| (*name).to_owned()).collect(),
        metrics: first.metrics.clone(),
        queries: first.queries,
        first_stage: figures(&bases, &first.metrics),
        reranked: figures(&cands, &first.metrics),
        seeds_above,
        pooled,
    })
}

/// The spreads of a run's figures over its seeds. A figure some seed lacks is left out rather than summarised
/// over fewer seeds.
fn figures(runs: &[&RunMetrics], metrics: &[String]) -> Figures {
    let spreads = |pick: &dyn Fn(&RunMetrics) -> Option<&BTreeMap<String, f64>>| -> Spreads {
        metrics
            .iter()
            .filter_map(|metric| {
                let values: Option<Vec<f64>> = runs
                    .iter()
                    .map(|run| pick(run)?.get(metric).copied())
                    .collect();
                Some((metric.clone(), Spread::of(values?)?))
            })
            .collect()
    };
    let tasks = runs
        .first()
        .map(|run| run.per_task.keys())
        .into_iter()
        .flatten();
    Figures {
        mean: spreads(&|run| Some(&run.mean)),
        macro_average: spreads(&|run| Some(&run.macro_average)),
        per_task: tasks
            .map(|task| (task.clone(), spreads(&|run| run.per_task.get(task))))
            .filter(|(_, spreads)| !spreads.is_empty())
            .collect(),
    }
}

/// Each query's value of `metric` averaged over the seeds' runs, which must all hold the same queries.
fn seed_means(
    names: &[&str],
    runs: &[&RunMetrics],
    metric: &str,
) -> Result<BTreeMap<String, f64>, EvalError> {
    let values = |run: &RunMetrics| -> BTreeMap<String, f64> {
        run.per_query
            .iter()
            .filter_map(|(query, metrics)| Some((query.clone(), *metrics.get(metric)?)))
            .collect()
    };
    let mut sums = values(runs[0]);
    for (name, run) in names.iter().zip(runs).skip(1) {
        let seed = values(run);
        if seed.len() != sums.len() || seed.keys().ne(sums.keys()) {
            return Err(EvalError::Pairing(format!(
                "{name} evaluated other queries than {} ({metric})",
                names[0]
            )));
        }
        for (sum, value) in sums.values_mut().zip(seed.values()) {
            *sum += value;
        }
    }
    let n = runs.len() as f64;
    Ok(sums
        .into_iter()
        .map(|(query, sum)| (query, sum / n))
        .collect())
}

/// The paired randomisation test of `second` against `first` (per-query values).
fn pooled_test(
    first: &BTreeMap<String, f64>,
    second: &BTreeMap<String, f64>,
    tests: TestSettings,
) -> Result<Significance, EvalError> {
    let (a, b) = paired_values(first, second)?;
    let test = randomisation_test(&b, &a, tests.permutations, tests.seed)?;
    Ok(Significance {
        mean_difference: test.mean_difference,
        p_value: test.p_value,
        permutations: test.permutations,
    })
}

/// Pooled tests of the reranked runs of `second` against `first`, metric by metric; `None` when the two evaluated
/// different queries.
fn compare_rerankers(
    first: &[&Named<EvalSummary>],
    second: &[&Named<EvalSummary>],
    tests: TestSettings,
) -> Result<Option<BTreeMap<String, Significance>>, ReportError> {
    let (names_a, runs_a) = reranked_runs(first)?;
    let (names_b, runs_b) = reranked_runs(second)?;
    let mut tests_by_metric = BTreeMap::new();
    for metric in &first[0].value.comparison.metrics {
        let a = seed_means(&names_a, &runs_a, metric)?;
        let b = seed_means(&names_b, &runs_b, metric)?;
        if a.keys().ne(b.keys()) {
            return Ok(None);
        }
        tests_by_metric.insert(metric.clone(), pooled_test(&a, &b, tests)?);
    }
    Ok(Some(tests_by_metric))
}

/// The stage names and reranked runs of a reranker's seeds.
fn reranked_runs<'a>(
    evals: &[&'a Named<EvalSummary>],
) -> Result<(Vec<&'a str>, Vec<&'a RunMetrics>), EvalError> {
    let names = evals.iter().map(|eval| eval.stage.as_str()).collect();
    let runs = evals
        .iter()
        .map(|eval| Ok(runs_of(&eval.value)?.1))
        .collect::<Result<_, EvalError>>()?;
    Ok((names, runs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::{Comparison, ScoreField};

    const TESTS: TestSettings = TestSettings {
        permutations: 2000,
        seed: 1,
    };

    /// A run whose per-query ndcg@10 values are `values` (queries q0, q1, ...), all in task `t`.
    fn run(values: &[f64]) -> RunMetrics {
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let metric = |v: f64| BTreeMap::from([("ndcg@10".to_owned(), v)]);
        RunMetrics {
            mean: metric(mean),
            macro_average: metric(mean),
            per_task: BTreeMap::from([("t".to_owned(), metric(mean))]),
            per_query: values
                .iter()
                .enumerate()
                .map(|(i, v)| (format!("q{i}"), metric(*v)))
                .collect(),
        }
    }

    /// An eval stage's findings: first stage and reranked per-query values.
    fn eval(stage: &str, first_stage: &[f64], reranked: &[f64]) -> Named<EvalSummary> {
        let comparison = Comparison {
            metrics: vec!["ndcg@10".into()],
            queries: first_stage.len(),
            task_queries: BTreeMap::from([("t".to_owned(), first_stage.len())]),
            baseline: "first_stage".into(),
            candidate: "reranked".into(),
            runs: BTreeMap::from([
                ("first_stage".to_owned(), run(first_stage)),
                ("reranked".to_owned(), run(reranked)),
            ]),
            significance: BTreeMap::new(),
        };
        Named {
            stage: stage.to_owned(),
            value: EvalSummary {
                model: "model".into(),
                adapter: None,
                score: ScoreField::PYes,
                interpolate: None,
                k: 20,
                splits: vec!["test".into()],
                retrievers: Vec::new(),
                scored_pairs: 0,
                rejected_pairs: 0,
                comparison,
            },
        }
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn spread_is_mean_sample_deviation_and_range() {
        let spread = Spread::of(vec![0.2, 0.4, 0.6]).unwrap();
        assert!(close(spread.mean, 0.4));
        assert!(close(spread.sd.unwrap(), 0.2), "n - 1 in the denominator");
        assert_eq!((spread.min, spread.max), (0.2, 0.6));
        let one = Spread::of(vec![0.3]).unwrap();
        assert_eq!((one.mean, one.sd, one.min, one.max), (0.3, None, 0.3, 0.3));
        assert_eq!(Spread::of(Vec::new()), None);
    }

    #[test]
    fn seeds_group_by_reranker_in_seed_order() {
        let f = [0.1, 0.2];
        let evals = [
            eval("eval_cl@s2", &f, &[0.3, 0.3]),
            eval("eval_sft@s2", &f, &[0.5, 0.5]),
            eval("eval_sft", &f, &[0.4, 0.4]),
            eval("eval_cl", &f, &[0.2, 0.2]),
        ];
        let over = over_seeds(&evals, TESTS).unwrap();
        let runs: Vec<(&str, Vec<&str>)> = over
            .rerankers
            .iter()
            .map(|r| {
                let runs = r.runs.iter().map(String::as_str).collect();
                (r.reranker.as_str(), runs)
            })
            .collect();
        assert_eq!(
            runs,
            [
                ("eval_cl", vec!["eval_cl", "eval_cl@s2"]),
                ("eval_sft", vec!["eval_sft", "eval_sft@s2"])
            ]
        );
        assert_eq!(over.seeds(), 2);
        let sft = &over.rerankers[1].reranked.macro_average["ndcg@10"];
        assert_eq!(sft.values, [0.4, 0.5], "seed 1 first");
        assert!(close(sft.mean, 0.45));
        let first = &over.rerankers[1].first_stage.per_task["t"]["ndcg@10"];
        assert_eq!((first.sd, first.values.len()), (Some(0.0), 2));
        assert_eq!(over.compared.len(), 1);
        assert_eq!(
            (
                over.compared[0].first.as_str(),
                over.compared[0].second.as_str()
            ),
            ("eval_cl", "eval_sft")
        );
    }

    #[test]
    fn a_reranker_above_in_every_seed_passes_the_pooled_test() {
        let first_stage: Vec<f64> = (0..40).map(|i| f64::from(i % 5) / 10.0).collect();
        let better = |by: f64| -> Vec<f64> { first_stage.iter().map(|v| v + by).collect() };
        let evals = [
            eval("eval_sft", &first_stage, &better(0.10)),
            eval("eval_sft@s2", &first_stage, &better(0.20)),
            eval("eval_sft@s3", &first_stage, &better(0.30)),
        ];
        let over = over_seeds(&evals, TESTS).unwrap();
        let sft = &over.rerankers[0];
        assert_eq!(sft.seeds_above["ndcg@10"], 3);
        let test = sft.pooled["ndcg@10"];
        assert!(close(test.mean_difference, 0.2), "the mean of the seeds' Δ");
        assert_eq!(test.p_value, 0.0, "every query gains in every seed");
        let spread = &sft.reranked.mean["ndcg@10"];
        assert!(close(spread.sd.unwrap(), 0.1));
        assert!(close(spread.max - spread.min, 0.2));
    }

    #[test]
    fn seeds_that_disagree_fail_the_pooled_test() {
        // Seed 1 gains 0.25 on the first half of the queries, seed 2 loses as much there; on the second half they
        // swap. Each query's mean over the two seeds equals the first stage, though each seed alone moved a lot.
        let first_stage = vec![0.5; 20];
        let swing = |sign: f64| -> Vec<f64> {
            (0..20)
                .map(|q| 0.5 + if q < 10 { sign * 0.25 } else { -sign * 0.25 })
                .collect()
        };
        let evals = [
            eval("eval_cl", &first_stage, &swing(1.0)),
            eval("eval_cl@s2", &first_stage, &swing(-1.0)),
        ];
        let over = over_seeds(&evals, TESTS).unwrap();
        let cl = &over.rerankers[0];
        assert!(close(cl.pooled["ndcg@10"].mean_difference, 0.0));
        assert_eq!(cl.pooled["ndcg@10"].p_value, 1.0);
        assert_eq!(cl.seeds_above["ndcg@10"], 0, "equal is not above");
    }

    #[test]
    fn a_small_gain_with_a_wide_swing_is_not_significant() {
        // A gain of 0.02 on average over 12 queries whose differences swing by ±0.3: not evidence.
        let first_stage = vec![0.4; 12];
        let noisy: Vec<f64> = (0..12)
            .map(|q| 0.4 + 0.02 + if q % 2 == 0 { 0.3 } else { -0.3 })
            .collect();
        let evals = [
            eval("eval_sft", &first_stage, &noisy),
            eval("eval_sft@s2", &first_stage, &noisy),
        ];
        let test = over_seeds(&evals, TESTS).unwrap().rerankers[0].pooled["ndcg@10"];
        assert!(close(test.mean_difference, 0.02));
        assert!(test.p_value > 0.5, "{}", test.p_value);
    }

    #[test]
    fn rerankers_compare_on_their_seed_means() {
        let f = vec![0.0; 30];
        let evals = [
            eval("eval_sft", &f, &[0.6; 30]),
            eval("eval_sft@s2", &f, &[0.4; 30]),
            eval("eval_cl", &f, &[0.3; 30]),
            eval("eval_cl@s2", &f, &[0.3; 30]),
        ];
        let over = over_seeds(&evals, TESTS).unwrap();
        let test = over.compared[0].tests.as_ref().unwrap()["ndcg@10"];
        assert!(close(test.mean_difference, -0.2), "eval_cl minus eval_sft");
        assert_eq!(test.p_value, 0.0);
    }

    #[test]
    fn seeds_over_different_queries_are_an_error_and_rerankers_are_not_compared() {
        let evals = [
            eval("eval_sft", &[0.1, 0.2], &[0.3, 0.3]),
            eval("eval_sft@s2", &[0.1, 0.2, 0.3], &[0.3, 0.3, 0.3]),
        ];
        let err = over_seeds(&evals, TESTS).unwrap_err().to_string();
        assert!(
            err.contains("eval_sft@s2 evaluated other queries than eval_sft"),
            "{err}"
        );
        let evals = [
            eval("eval_sft", &[0.1, 0.2], &[0.3, 0.3]),
            eval("eval_cl", &[0.1, 0.2, 0.3], &[0.3, 0.3, 0.3]),
        ];
        assert_eq!(over_seeds(&evals, TESTS).unwrap().compared[0].tests, None);
    }

    #[test]
    fn replica_names_mark_a_report_over_seeds() {
        assert!(names_replicas(["mine", "eval_sft", "eval_sft@s2"]));
        assert!(!names_replicas(["mine", "eval_sft", "eval_cl"]));
    }
}
