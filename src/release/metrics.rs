//! The metrics table of the model card, from eval stages' `metrics.json`.
//!
//! The file's aggregates are read leniently, because only their numbers matter here: an `aggregates` (or
//! `overall`, or `runs`) object, or the top level, holding either metric -> number (one row) or run -> object of
//! metric -> number, where a run's object may nest its numbers under `overall` or `aggregates`. Anything else
//! gives no table, and the card says so.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value};

/// The file an eval stage writes its aggregates to.
pub const METRICS_FILE: &str = "metrics.json";

/// Metrics shown first, in this order (DESIGN §6); others follow alphabetically.
const PREFERRED: [&str; 6] = [
    "ndcg@10",
    "mrr@10",
    "map@100",
    "recall@10",
    "recall@100",
    "hit@10",
];

/// Where the run-level keys may sit in metrics.json, tried in order before the top level.
const CONTAINERS: [&str; 3] = ["aggregates", "overall", "runs"];

/// One row: a run of one eval stage and its metric values.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricsRow {
    pub stage: String,
    pub run: String,
    pub values: BTreeMap<String, f64>,
}

/// The eval stages' aggregates, or why a stage gave none.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricsTable {
    pub rows: Vec<MetricsRow>,
    /// One line per eval stage without usable aggregates.
    pub notes: Vec<String>,
}

impl MetricsTable {
    /// Reads `metrics.json` of each `(stage name, stage dir)`.
    pub fn read(stages: &[(String, &Path)]) -> Self {
        let mut table = Self::default();
        for (stage, dir) in stages {
            let path = dir.join(METRICS_FILE);
            let parsed = std::fs::read_to_string(&path)
                .map_err(|e| e.to_string())
                .and_then(|text| serde_json::from_str::<Value>(&text).map_err(|e| e.to_string()));
            match parsed.map(|json| rows_of(&json)) {
                Ok(rows) if !rows.is_empty() => {
                    table
                        .rows
                        .extend(rows.into_iter().map(|(run, values)| MetricsRow {
                            stage: stage.clone(),
                            run,
                            values,
                        }))
                }
                Ok(_) => table.notes.push(format!(
                    "eval stage `{stage}`: {} holds no aggregate metrics umrank could read",
                    path.display()
                )),
                Err(e) => table
                    .notes
                    .push(format!("eval stage `{stage}`: {}: {e}", path.display())),
            }
        }
        table
    }

    /// The metric columns: the preferred ones present, then the rest alphabetically.
    pub fn columns(&self) -> Vec<String> {
        let mut present: Vec<String> = self
            .rows
            .iter()
            .flat_map(|r| r.values.keys().cloned())
            .collect();
        present.sort();
        present.dedup();
        let rank = |name: &String| {
            PREFERRED
                .iter()
                .position(|p| p == name)
                .unwrap_or(PREFERRED.len())
        };
        present.sort_by_key(|name| rank(name));
        present
    }
}

/// The run rows of a metrics.json document.
fn rows_of(json: &Value) -> Vec<(String, BTreeMap<String, f64>)> {
    let Some(top) = json.as_object() else {
        return Vec::new();
    };
    let container = CONTAINERS
        .iter()
        .find_map(|key| top.get(*key)?.as_object())
        .unwrap_or(top);
    let direct = numbers(container);
    if !direct.is_empty() {
        return vec![("reranked".to_string(), direct)];
    }
    container
        .iter()
        .filter_map(|(run, value)| {
            let object = value.as_object()?;
            let mut values = numbers(object);
            if values.is_empty() {
                values = ["overall", "aggregates"]
                    .iter()
                    .find_map(|key| object.get(*key)?.as_object().map(numbers))
                    .unwrap_or_default();
            }
            (!values.is_empty()).then(|| (run.clone(), values))
        })
        .collect()
}

fn numbers(object: &Map<String, Value>) -> BTreeMap<String, f64> {
    object
        .iter()
        .filter_map(|(key, value)| Some((key.clone(), value.as_f64()?)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flat_and_per_run_layouts_give_rows() {
        let flat = json!({"ndcg@10": 0.5, "mrr@10": 0.25, "name": "x"});
        assert_eq!(
            rows_of(&flat),
            vec![(
                "reranked".to_string(),
                BTreeMap::from([("mrr@10".into(), 0.25), ("ndcg@10".into(), 0.5)])
            )]
        );
        let runs = json!({"aggregates": {
            "first_stage": {"overall": {"ndcg@10": 0.1}, "per_task": {"t": {"ndcg@10": 0.3}}},
            "reranked": {"ndcg@10": 0.2}
        }});
        let rows = rows_of(&runs);
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].0, "first_stage");
        assert_eq!(rows[0].1["ndcg@10"], 0.1);
        assert_eq!(rows[1].1["ndcg@10"], 0.2);
        assert!(rows_of(&json!([1, 2])).is_empty());
    }

    #[test]
    fn preferred_columns_come_first() {
        let table = MetricsTable {
            rows: vec![MetricsRow {
                stage: "eval".into(),
                run: "r".into(),
                values: BTreeMap::from([
                    ("zeta".into(), 1.0),
                    ("hit@10".into(), 1.0),
                    ("ndcg@10".into(), 1.0),
                    ("alpha".into(), 1.0),
                ]),
            }],
            notes: Vec::new(),
        };
        assert_eq!(table.columns(), ["ndcg@10", "hit@10", "alpha", "zeta"]);
    }
}
