//! A comparison of two runs of the same queries (first stage and reranked): every metric per query, per task,
//! micro- and macro-averaged, and a paired randomisation test per metric, over all queries and within each task.
//!
//! This is what the eval stage writes as `metrics.json` and the report reads back, so it is plain serde data.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::metrics::{evaluate_queries, PerQuery};
use super::{
    macro_average, paired_values, randomisation_test, EvalError, Evaluation, Metric, Qrels, Run,
};

/// The scope name of tests and averages over every query.
pub const ALL: &str = "all";

/// One run's metrics, keyed by metric name (`ndcg@10`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunMetrics {
    /// Mean over the evaluated queries: what trec_eval reports.
    pub mean: BTreeMap<String, f64>,
    /// Mean of the task means: every task counts the same, however many queries it has.
    pub macro_average: BTreeMap<String, f64>,
    /// task -> metric -> mean over the task's queries.
    pub per_task: BTreeMap<String, BTreeMap<String, f64>>,
    /// query id -> metric -> value.
    pub per_query: BTreeMap<String, BTreeMap<String, f64>>,
}

/// A paired randomisation test of `b - a` for one metric.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Significance {
    /// Mean over the paired queries of (second run - first run).
    pub mean_difference: f64,
    pub p_value: f64,
    pub permutations: usize,
}

/// Two runs compared; see the module docs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The metric names, in report order.
    pub metrics: Vec<String>,
    /// Queries evaluated: those with a relevant document in the qrels.
    pub queries: usize,
    /// Queries evaluated per task.
    pub task_queries: BTreeMap<String, usize>,
    /// The two run names, baseline first.
    pub baseline: String,
    pub candidate: String,
    /// run name -> its metrics.
    pub runs: BTreeMap<String, RunMetrics>,
    /// scope ([`ALL`] or a task) -> metric -> the test of candidate against baseline on that scope's queries.
    pub significance: BTreeMap<String, BTreeMap<String, Significance>>,
}

/// The settings of [`compare`]'s randomisation tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TestSettings {
    pub permutations: usize,
    pub seed: u64,
}

/// Compares `candidate` against `baseline` (each a `(name, run)`) on `qrels`, grouping queries by `task_of`
/// (query id -> task). Every query with a relevant document must have a task.
pub fn compare(
    baseline: (&str, &Run),
    candidate: (&str, &Run),
    qrels: &Qrels,
    task_of: &BTreeMap<String, String>,
    metrics: &[Metric],
    tests: TestSettings,
) -> Result<Comparison, EvalError> {
    let first = evaluate_queries(baseline.1, qrels, metrics)?;
    let second = evaluate_queries(candidate.1, qrels, metrics)?;
    compare_per_query(
        (baseline.0, first),
        (candidate.0, second),
        task_of,
        metrics,
        tests,
    )
}

/// [`compare`] from the two runs' per-query values ([`evaluate_queries`]) rather than the runs: the eval stage
/// merging a job array's parts has those values, not the qrels. The same values give the same comparison, bit
/// for bit, whichever way they were gathered.
pub fn compare_per_query(
    baseline: (&str, PerQuery),
    candidate: (&str, PerQuery),
    task_of: &BTreeMap<String, String>,
    metrics: &[Metric],
    tests: TestSettings,
) -> Result<Comparison, EvalError> {
    if baseline.0 == candidate.0 {
        return Err(EvalError::Pairing(format!(
            "both runs are named {:?}",
            baseline.0
        )));
    }
    let first = Evaluation::from_per_query(baseline.1)?;
    let second = Evaluation::from_per_query(candidate.1)?;
    let base_metrics = run_metrics(&first.per_query, &first.mean, task_of)?;
    let cand_metrics = run_metrics(&second.per_query, &second.mean, task_of)?;
    let mut significance: BTreeMap<String, BTreeMap<String, Significance>> = BTreeMap::new();
    let mut task_queries = BTreeMap::new();
    for metric in metrics {
        let (a, b) = (
            values_of(baseline.0, &first, metric)?,
            values_of(candidate.0, &second, metric)?,
        );
        let mut scopes = vec![(ALL.to_owned(), a.clone(), b.clone())];
        for (task, (task_a, task_b)) in split_by_task(a, b, task_of) {
            task_queries.insert(task.clone(), task_a.len());
            scopes.push((task, task_a, task_b));
        }
        for (scope, a, b) in scopes {
            let (a, b) = paired_values(&a, &b)?;
            let test = randomisation_test(&b, &a, tests.permutations, tests.seed)?;
            significance.entry(scope).or_default().insert(
                metric.to_string(),
                Significance {
                    mean_difference: test.mean_difference,
                    p_value: test.p_value,
                    permutations: test.permutations,
                },
            );
        }
    }
    let queries = first.per_query.values().next().map_or(0, BTreeMap::len);
    Ok(Comparison {
        metrics: metrics.iter().map(Metric::to_string).collect(),
        queries,
        task_queries,
        baseline: baseline.0.to_owned(),
        candidate: candidate.0.to_owned(),
        runs: BTreeMap::from([
            (baseline.0.to_owned(), base_metrics),
            (candidate.0.to_owned(), cand_metrics),
        ]),
        significance,
    })
}

/// One metric's per-query values of a run, which per-query values gathered from files may lack.
fn values_of<'a>(
    run: &str,
    evaluation: &'a Evaluation,
    metric: &Metric,
) -> Result<&'a Values, EvalError> {
    evaluation
        .per_query
        .get(metric)
        .ok_or_else(|| EvalError::Pairing(format!("run {run:?} has no values of {metric}")))
}

/// One run's per-query values regrouped by query, with its means per task and overall.
fn run_metrics(
    per_query: &PerQuery,
    mean: &BTreeMap<Metric, f64>,
    task_of: &BTreeMap<String, String>,
) -> Result<RunMetrics, EvalError> {
    let mut metrics = RunMetrics {
        mean: mean.iter().map(|(m, v)| (m.to_string(), *v)).collect(),
        macro_average: BTreeMap::new(),
        per_task: BTreeMap::new(),
        per_query: BTreeMap::new(),
    };
    for (metric, values) in per_query {
        let name = metric.to_string();
        let averaged = macro_average(values, task_of)?;
        metrics.macro_average.insert(name.clone(), averaged.overall);
        for (task, value) in averaged.per_group {
            metrics
                .per_task
                .entry(task)
                .or_default()
                .insert(name.clone(), value);
        }
        for (query, value) in values {
            metrics
                .per_query
                .entry(query.clone())
                .or_default()
                .insert(name.clone(), *value);
        }
    }
    Ok(metrics)
}

type Values = BTreeMap<String, f64>;

/// The paired per-query values of each task. Queries without a task cannot occur here: [`run_metrics`] has
/// already failed on them.
fn split_by_task(
    a: &Values,
    b: &Values,
    task_of: &BTreeMap<String, String>,
) -> BTreeMap<String, (Values, Values)> {
    let mut tasks: BTreeMap<String, (Values, Values)> = BTreeMap::new();
    for (runs, pick_second) in [(a, false), (b, true)] {
        for (query, &value) in runs {
            if let Some(task) = task_of.get(query) {
                let entry = tasks.entry(task.clone()).or_default();
                let side = if pick_second {
                    &mut entry.1
                } else {
                    &mut entry.0
                };
                side.insert(query.clone(), value);
            }
        }
    }
    tasks
}

impl Comparison {
    /// A plain-text table of the overall means: metric, baseline, candidate, delta and p-value.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{:<12} {:>12} {:>12} {:>9} {:>8}\n",
            "metric", self.baseline, self.candidate, "delta", "p"
        );
        let (Some(base), Some(cand)) = (
            self.runs.get(&self.baseline),
            self.runs.get(&self.candidate),
        ) else {
            return out;
        };
        for metric in &self.metrics {
            let (a, b) = (base.mean.get(metric), cand.mean.get(metric));
            let p = self
                .significance
                .get(ALL)
                .and_then(|tests| tests.get(metric))
                .map_or_else(|| "-".to_owned(), |t| format!("{:.4}", t.p_value));
            if let (Some(a), Some(b)) = (a, b) {
                out.push_str(&format!(
                    "{metric:<12} {a:>12.4} {b:>12.4} {:>+9.4} {p:>8}\n",
                    b - a
                ));
            }
        }
        out
    }
}
