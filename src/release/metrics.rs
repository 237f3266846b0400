//! The metrics table of the model card, from the eval stages' `metrics.json`.
//!
//! The file is the eval stage's summary: the metric names in report order, the number of queries, the two runs
//! (`baseline`, the first stage, and `candidate`, the reranked list) each with its `mean` over queries and its
//! `macro_average` over tasks, and a paired randomisation test of candidate against baseline per scope and metric.
//! Only those fields are read; the per-query and per-task values stay in the eval stage. An eval stage without a
//! readable file gives no rows, and the card says why: metrics are a report, not an input the release needs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::schema::outputs;
use serde::Deserialize;

/// The significance scope over every query (the others are tasks).
const ALL_QUERIES: &str = "all";

/// The part of an eval stage's metrics.json the card shows.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EvalMetrics {
    /// The model the eval stage scored with.
    pub model: PathBuf,
    /// The adapter the eval stage scored with, if any.
    #[serde(default)]
    pub adapter: Option<PathBuf>,
    /// Metric names, in report order.
    pub metrics: Vec<String>,
    /// Queries evaluated.
    pub queries: usize,
    pub baseline: String,
    pub candidate: String,
    pub runs: BTreeMap<String, RunAverages>,
    /// scope -> metric -> test of candidate against baseline.
    #[serde(default)]
    pub significance: BTreeMap<String, BTreeMap<String, Significance>>,
    /// The run directory the model and adapter are named from (the eval stage directory's parent).
    #[serde(skip)]
    pub run_dir: PathBuf,
}

/// One run's averages, keyed by metric name.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct RunAverages {
    pub mean: BTreeMap<String, f64>,
    pub macro_average: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Significance {
    pub mean_difference: f64,
    pub p_value: f64,
    pub permutations: usize,
}

impl EvalMetrics {
    /// Reads an eval stage's `metrics.json` at `path`. Its model and adapter are named relative to the run
    /// directory (the eval stage directory's parent) when the run wrote them.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        let mut metrics: Self =
            serde_json::from_str(&text).map_err(|e| format!("not an eval stage summary: {e}"))?;
        metrics.run_dir = path
            .parent()
            .and_then(Path::parent)
            .unwrap_or(Path::new(""))
            .to_path_buf();
        Ok(metrics)
    }

    /// A path the eval stage recorded, found: inside the run directory when it exists there, else as recorded.
    fn locate(&self, recorded: &Path) -> PathBuf {
        let inside = self.run_dir.join(recorded);
        if recorded.is_relative() && inside.exists() {
            inside
        } else {
            recorded.to_path_buf()
        }
    }
}

/// One row: an average of one run of one eval stage.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow {
    pub stage: String,
    pub run: String,
    /// `mean` (over queries) or `macro` (over tasks).
    pub average: &'static str,
    pub values: BTreeMap<String, f64>,
}

/// The eval stages' averages, their tests, and why a stage gave none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsTable {
    /// Metric columns, in the first stage's report order, then any others alphabetically.
    pub columns: Vec<String>,
    pub rows: Vec<MetricsRow>,
    /// One line per eval stage: its randomisation test over all queries.
    pub tests: Vec<String>,
    /// One line per eval stage without usable metrics, or that evaluated another adapter.
    pub notes: Vec<String>,
}

impl MetricsTable {
    /// Reads `metrics.json` of each `(stage name, stage dir)`; `released` is what each eval stage is expected to
    /// have scored with.
    pub fn read(stages: &[(String, &Path)], released: Released) -> Self {
        let mut table = Self::default();
        for (stage, dir) in stages {
            let path = dir.join(outputs::eval::METRICS_JSON);
            match EvalMetrics::read(&path) {
                Ok(metrics) => table.add(stage, &metrics, released),
                Err(e) => table
                    .notes
                    .push(format!("eval stage `{stage}`: {}: {e}", path.display())),
            }
        }
        table
    }

    fn add(&mut self, stage: &str, metrics: &EvalMetrics, released: Released) {
        for name in &metrics.metrics {
            if !self.columns.contains(name) {
                self.columns.push(name.clone());
            }
        }
        let mut runs: Vec<&String> = vec![&metrics.baseline, &metrics.candidate];
        runs.extend(
            metrics
                .runs
                .keys()
                .filter(|r| **r != metrics.baseline && **r != metrics.candidate),
        );
        for run in runs {
            let Some(averages) = metrics.runs.get(run) else {
                continue;
            };
            for (average, values) in [("mean", &averages.mean), ("macro", &averages.macro_average)]
            {
                self.rows.push(MetricsRow {
                    stage: stage.to_string(),
                    run: run.clone(),
                    average,
                    values: values.clone(),
                });
            }
        }
        if let Some(tests) = metrics.significance.get(ALL_QUERIES) {
            let parts: Vec<String> = metrics
                .metrics
                .iter()
                .filter_map(|m| {
                    let t = tests.get(m)?;
                    Some(format!(
                        "{m} {:+.4} (p = {:.4})",
                        t.mean_difference, t.p_value
                    ))
                })
                .collect();
            if !parts.is_empty() {
                self.tests.push(format!(
                    "eval stage `{stage}`, {} against {} over {} queries: {}",
                    metrics.candidate,
                    metrics.baseline,
                    metrics.queries,
                    parts.join(", ")
                ));
            }
        }
        if !released.scored_by(metrics) {
            let scored = match &metrics.adapter {
                Some(adapter) => format!("adapter {}", adapter.display()),
                None => format!("model {} without an adapter", metrics.model.display()),
            };
            self.notes.push(format!(
                "eval stage `{stage}` scored with {scored}, not the weights of this release"
            ));
        }
        let mut extra: Vec<String> = self
            .rows
            .iter()
            .flat_map(|r| r.values.keys())
            .filter(|k| !self.columns.contains(k))
            .cloned()
            .collect();
        extra.sort();
        extra.dedup();
        self.columns.extend(extra);
    }
}

/// What a release holds, as an eval stage would have named it.
#[derive(Debug, Clone, Copy)]
pub enum Released<'a> {
    /// A PEFT adapter directory (applied to some base).
    Adapter(&'a Path),
    /// A complete model directory, scored without an adapter.
    Model(&'a Path),
}

impl Released<'_> {
    fn scored_by(self, metrics: &EvalMetrics) -> bool {
        match (self, &metrics.adapter) {
            (Released::Adapter(ours), Some(theirs)) => same_dir(ours, &metrics.locate(theirs)),
            (Released::Model(ours), None) => same_dir(ours, &metrics.locate(&metrics.model)),
            _ => false,
        }
    }
}

/// Whether two paths name the same directory (compared canonically where both exist).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn summary(adapter: Option<&str>) -> serde_json::Value {
        let averages = |ndcg: f64, mrr: f64| {
            json!({
                "mean": {"ndcg@10": ndcg, "mrr@10": mrr},
                "macro_average": {"ndcg@10": ndcg / 2.0, "mrr@10": mrr / 2.0},
                "per_task": {}, "per_query": {}
            })
        };
        json!({
            "model": "m", "adapter": adapter, "score": "p_yes", "k": 10, "splits": ["test"], "retrievers": [],
            "scored_pairs": 4, "rejected_pairs": 0,
            "metrics": ["ndcg@10", "mrr@10"], "queries": 2, "task_queries": {"t": 2},
            "baseline": "first_stage", "candidate": "reranked",
            "runs": {"first_stage": averages(0.25, 0.5), "reranked": averages(0.75, 1.0)},
            "significance": {"all": {
                "ndcg@10": {"mean_difference": 0.5, "p_value": 0.25, "permutations": 100},
                "mrr@10": {"mean_difference": 0.5, "p_value": 0.5, "permutations": 100}
            }}
        })
    }

    fn ours() -> Released<'static> {
        Released::Adapter(Path::new("/x/adapter"))
    }

    fn table_of(json: &serde_json::Value, released: Released) -> MetricsTable {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(outputs::eval::METRICS_JSON),
            json.to_string(),
        )
        .unwrap();
        MetricsTable::read(&[("eval".to_string(), dir.path())], released)
    }

    #[test]
    fn the_eval_summary_gives_mean_and_macro_rows_in_report_order() {
        let table = table_of(&summary(Some("/x/adapter")), ours());
        assert_eq!(table.columns, ["ndcg@10", "mrr@10"]);
        let rows: Vec<(&str, &str, f64)> = table
            .rows
            .iter()
            .map(|r| (r.run.as_str(), r.average, r.values["ndcg@10"]))
            .collect();
        assert_eq!(
            rows,
            [
                ("first_stage", "mean", 0.25),
                ("first_stage", "macro", 0.125),
                ("reranked", "mean", 0.75),
                ("reranked", "macro", 0.375)
            ]
        );
        assert_eq!(
            table.tests,
            ["eval stage `eval`, reranked against first_stage over 2 queries: ndcg@10 +0.5000 (p = 0.2500), \
              mrr@10 +0.5000 (p = 0.5000)"]
        );
        assert!(table.notes.is_empty(), "{:?}", table.notes);
    }

    #[test]
    fn absent_unreadable_and_foreign_metrics_are_notes() {
        let dir = tempfile::tempdir().unwrap();
        let absent = MetricsTable::read(&[("eval".to_string(), dir.path())], ours());
        assert!(absent.rows.is_empty());
        assert!(
            absent.notes[0].contains("metrics.json"),
            "{:?}",
            absent.notes
        );

        let other = table_of(&json!({"ndcg@10": 0.5}), ours());
        assert!(other.rows.is_empty());
        assert!(
            other.notes[0].contains("not an eval stage summary"),
            "{:?}",
            other.notes
        );

        let zero_shot = table_of(&summary(None), ours());
        assert_eq!(zero_shot.rows.len(), 4);
        assert!(
            zero_shot.notes[0].contains("scored with model m without an adapter"),
            "{:?}",
            zero_shot.notes
        );
        let full = table_of(&summary(None), Released::Model(Path::new("m")));
        assert!(full.notes.is_empty(), "{:?}", full.notes);
    }
}
