//! The report's content, independent of its format: headings, paragraphs, tables and charts, built from the
//! [`Findings`] of a run. [`super::markdown`] and [`super::html`] only lay the blocks out, so both formats
//! always say the same thing.
//!
//! Sections, in order: for a pipeline run over several seeds, each reranker over its seeds ([`super::seeds`]);
//! a summary of every reranker (macro averages), a paired test between each two rerankers (of the same seed),
//! then per eval stage its metrics over all queries, macro-averaged and per task, first stage against reranked
//! with the difference and the randomisation test's p-value; the mining statistics; and per train stage its
//! loss, W+/W-, learning-rate and gradient-norm curves. The charts are written as PNGs while building.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::collect::{Findings, Named, TrainStep};
use super::seeds::{OverSeeds, RerankerOverSeeds, Spread};
use super::ReportError;
use crate::charts::{bar_chart, line_chart, Bars, Series};
use crate::eval::stage::EvalSummary;
use crate::eval::summary::ALL;
use crate::eval::{paired_values, randomisation_test, Comparison, Significance};
use crate::pipeline::seeds::replica_of;
use crate::schema::outputs;

/// A p-value below this is marked significant (`*`).
pub const SIGNIFICANCE_LEVEL: f64 = 0.05;

/// One piece of the report.
#[derive(Debug, Clone, PartialEq)]
pub enum Block {
    /// `level` 1 is the title.
    Heading {
        level: u8,
        text: String,
    },
    Paragraph(String),
    Table(Table),
    /// A PNG at `file`, relative to the report.
    Image {
        file: String,
        alt: String,
    },
}

/// A table of text cells; every row has as many cells as the header.
#[derive(Debug, Clone, PartialEq)]
pub struct Table {
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// The table as aligned plain text for a terminal: the first column (names) left-aligned, the others (numbers)
    /// right-aligned, two spaces between columns.
    pub fn to_text(&self) -> String {
        let lines: Vec<&Vec<String>> = std::iter::once(&self.header).chain(&self.rows).collect();
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| {
                lines
                    .iter()
                    .filter_map(|cells| cells.get(i))
                    .map(|c| c.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for cells in lines {
            let row: Vec<String> = cells
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (cell, &width))| {
                    if i == 0 {
                        format!("{cell:<width$}")
                    } else {
                        format!("{cell:>width$}")
                    }
                })
                .collect();
            out.push_str(row.join("  ").trim_end());
            out.push('\n');
        }
        out
    }
}

/// Settings of the report's own computations.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportSettings {
    pub title: String,
    /// Permutations and seed of the tests between rerankers.
    pub permutations: usize,
    pub seed: u64,
}

/// The built report: its blocks and the PNGs written for it.
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub title: String,
    pub blocks: Vec<Block>,
    pub plots: Vec<PathBuf>,
}

/// Builds the report of `findings`, with the rerankers `over_seeds` when the run has several seeds, writing its
/// charts into `plots_dir`.
pub fn build(
    findings: &Findings,
    over_seeds: Option<&OverSeeds>,
    settings: &ReportSettings,
    plots_dir: &Path,
) -> Result<Document, ReportError> {
    let mut builder = Builder {
        blocks: vec![Block::Heading {
            level: 1,
            text: settings.title.clone(),
        }],
        plots: Vec::new(),
        plots_dir,
    };
    builder.paragraph(format!(
        "Metrics follow trec_eval -c (umrank docs/evaluation.md#which-queries-count): means over the queries with \
         a relevant document, a query missing from a run scores 0, ties broken by document id. Δ is reranked \
         minus first stage; p is the two-sided paired randomisation test; * marks p < {SIGNIFICANCE_LEVEL}."
    ));
    if let Some(over_seeds) = over_seeds {
        builder.seeds_section(over_seeds);
    }
    if !findings.evals.is_empty() {
        builder.summary(&findings.evals);
        builder.rerankers_compared(&findings.evals, settings)?;
        for eval in &findings.evals {
            builder.eval_section(eval)?;
        }
    }
    for stats in &findings.mining {
        builder.mining_section(stats)?;
    }
    for log in &findings.training {
        builder.training_section(log)?;
    }
    Ok(Document {
        title: settings.title.clone(),
        blocks: builder.blocks,
        plots: builder.plots,
    })
}

struct Builder<'a> {
    blocks: Vec<Block>,
    plots: Vec<PathBuf>,
    plots_dir: &'a Path,
}

impl Builder<'_> {
    fn heading(&mut self, level: u8, text: impl Into<String>) {
        self.blocks.push(Block::Heading {
            level,
            text: text.into(),
        });
    }

    fn paragraph(&mut self, text: impl Into<String>) {
        self.blocks.push(Block::Paragraph(text.into()));
    }

    fn table(&mut self, header: Vec<String>, rows: Vec<Vec<String>>) {
        self.blocks.push(Block::Table(Table { header, rows }));
    }

    /// The PNG file name for `what` of `stage`, made safe for any file system and URL.
    fn plot_path(&self, stage: &str, what: &str) -> (PathBuf, String) {
        let safe: String = format!("{stage}-{what}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let name = format!("{safe}.png");
        (
            self.plots_dir.join(&name),
            format!("{}/{name}", outputs::report::PLOTS),
        )
    }

    fn image(&mut self, path: PathBuf, file: String, alt: String) {
        self.plots.push(path);
        self.blocks.push(Block::Image { file, alt });
    }

    fn summary(&mut self, evals: &[Named<EvalSummary>]) {
        self.heading(2, "Summary");
        self.paragraph("Macro averages over tasks (every task counts the same).");
        self.blocks.extend(summary_table(evals).map(Block::Table));
    }

    /// A paired test between the reranked runs of each two eval stages of the same seed, on the queries they
    /// share (two seeds of one reranker differ by noise alone; [`Self::seeds_section`] compares over seeds).
    fn rerankers_compared(
        &mut self,
        evals: &[Named<EvalSummary>],
        settings: &ReportSettings,
    ) -> Result<(), ReportError> {
        let seed = |eval: &Named<EvalSummary>| replica_of(&eval.stage).1;
        let pairs: Vec<(&Named<EvalSummary>, &Named<EvalSummary>)> = evals
            .iter()
            .enumerate()
            .flat_map(|(i, a)| evals[i + 1..].iter().map(move |b| (a, b)))
            .filter(|(a, b)| seed(a) == seed(b))
            .collect();
        if pairs.is_empty() {
            return Ok(());
        }
        self.heading(2, "Rerankers compared");
        self.paragraph(format!(
            "Mean over all queries; Δ is the second minus the first; p from {} permutations.",
            settings.permutations
        ));
        for (a, b) in pairs {
            self.heading(3, format!("{} vs {}", a.stage, b.stage));
            let (ca, cb) = (&a.value.comparison, &b.value.comparison);
            let (Some(run_a), Some(run_b)) =
                (ca.runs.get(&ca.candidate), cb.runs.get(&cb.candidate))
            else {
                continue;
            };
            if run_a.per_query.keys().ne(run_b.per_query.keys()) {
                self.paragraph("Not compared: the two stages evaluated different queries.");
                continue;
            }
            let mut rows = Vec::new();
            for metric in &ca.metrics {
                let values = |run: &crate::eval::RunMetrics| -> BTreeMap<String, f64> {
                    run.per_query
                        .iter()
                        .filter_map(|(q, v)| Some((q.clone(), *v.get(metric)?)))
                        .collect()
                };
                let (xs, ys) = paired_values(&values(run_a), &values(run_b))?;
                let test = randomisation_test(&ys, &xs, settings.permutations, settings.seed)?;
                let significance = Significance {
                    mean_difference: test.mean_difference,
                    p_value: test.p_value,
                    permutations: test.permutations,
                };
                rows.push(comparison_row(
                    metric,
                    run_a.mean.get(metric),
                    run_b.mean.get(metric),
                    Some(&significance),
                ));
            }
            self.table(comparison_header(&a.stage, &b.stage), rows);
        }
        Ok(())
    }

    /// Each reranker over its seeds: the summary over seeds, each reranker's figures over all queries and per
    /// task, and the rerankers compared over seeds.
    fn seeds_section(&mut self, over: &OverSeeds) {
        self.heading(2, format!("Over {} seeds", over.seeds()));
        self.paragraph(format!(
            "Each reranker was trained and evaluated once per seed: seed 1 is its eval stage, seed k > 1 the \
             replica <stage>@s<k>, trained with seed + k - 1 on the same data; the first stage is the same in \
             every seed. mean, sd (n - 1 in the denominator), min and max are over the seeds; above counts the \
             seeds whose macro average is above the first stage's. Δ and p are the paired randomisation test \
             pooled over seeds ({} permutations): each query's reranked minus first-stage value averaged over \
             the seeds, one pair per query, over all queries; * marks p < {SIGNIFICANCE_LEVEL}.",
            over.permutations
        ));
        self.blocks.push(Block::Table(seeds_summary_table(over)));
        for reranker in &over.rerankers {
            self.heading(
                3,
                format!(
                    "{} over {} seeds: all queries",
                    reranker.reranker,
                    reranker.runs.len()
                ),
            );
            self.paragraph(format!(
                "Eval stages {}; {} queries.",
                reranker.runs.join(", "),
                reranker.queries
            ));
            self.blocks
                .push(Block::Table(seeds_all_queries_table(reranker)));
            self.heading(
                3,
                format!(
                    "{} over {} seeds: per task",
                    reranker.reranker,
                    reranker.runs.len()
                ),
            );
            self.blocks
                .push(Block::Table(seeds_per_task_table(reranker)));
        }
        if over.compared.is_empty() {
            return;
        }
        self.heading(3, "Rerankers compared over seeds");
        self.paragraph(
            "Per query, each reranker's value averaged over its seeds; Δ is the second minus the first, over all \
             queries, with the pooled test's p.",
        );
        for pair in over.compared.iter().filter(|pair| pair.tests.is_none()) {
            self.paragraph(format!(
                "{} vs {}: not compared, they evaluated different queries.",
                pair.first, pair.second
            ));
        }
        self.blocks
            .extend(seeds_compared_table(over).map(Block::Table));
    }

    fn eval_section(&mut self, eval: &Named<EvalSummary>) -> Result<(), ReportError> {
        let summary = &eval.value;
        let c = &summary.comparison;
        self.heading(2, format!("Evaluation: {}", eval.stage));
        let adapter = summary.adapter.as_ref().map_or_else(
            || "zero-shot".to_owned(),
            |a| format!("adapter {}", a.display()),
        );
        let ranked_by = match &summary.interpolate {
            Some(mix) => format!(
                "{} interpolated with the first stage's score (weight {}, scale {})",
                summary.score.name(),
                mix.weight,
                mix.scale
            ),
            None => summary.score.name().to_owned(),
        };
        self.paragraph(format!(
            "Model {} ({adapter}), documents ranked by {ranked_by}. The first stage's top {} ({}) reranked on \
             splits {}: {} queries evaluated, {} pairs scored, {} rejected.",
            summary.model.display(),
            summary.k,
            summary.retrievers.join(", "),
            summary.splits.join(", "),
            c.queries,
            summary.scored_pairs,
            summary.rejected_pairs,
        ));
        let (Some(base), Some(cand)) = (c.runs.get(&c.baseline), c.runs.get(&c.candidate)) else {
            return Ok(());
        };
        self.heading(3, "All queries");
        self.comparison_table(c, &base.mean, &cand.mean, c.significance.get(ALL));
        self.heading(3, "Macro average over tasks");
        self.comparison_table(c, &base.macro_average, &cand.macro_average, None);
        for (task, queries) in &c.task_queries {
            let (Some(a), Some(b)) = (base.per_task.get(task), cand.per_task.get(task)) else {
                continue;
            };
            self.heading(3, format!("Task {task} ({queries} queries)"));
            self.comparison_table(c, a, b, c.significance.get(task));
        }
        self.task_chart(eval)
    }

    fn comparison_table(
        &mut self,
        c: &Comparison,
        base: &BTreeMap<String, f64>,
        cand: &BTreeMap<String, f64>,
        tests: Option<&BTreeMap<String, Significance>>,
    ) {
        let rows = c
            .metrics
            .iter()
            .map(|m| comparison_row(m, base.get(m), cand.get(m), tests.and_then(|t| t.get(m))))
            .collect();
        self.table(comparison_header(&c.baseline, &c.candidate), rows);
    }

    /// The first metric per task and macro-averaged, first stage beside reranked.
    fn task_chart(&mut self, eval: &Named<EvalSummary>) -> Result<(), ReportError> {
        let c = &eval.value.comparison;
        let (Some(metric), Some(base), Some(cand)) = (
            c.metrics.first(),
            c.runs.get(&c.baseline),
            c.runs.get(&c.candidate),
        ) else {
            return Ok(());
        };
        let mut categories: Vec<String> = base.per_task.keys().cloned().collect();
        let values = |run: &crate::eval::RunMetrics| -> Vec<f64> {
            let per_task = run.per_task.keys().map(|task| {
                run.per_task
                    .get(task)
                    .and_then(|v| v.get(metric))
                    .copied()
                    .unwrap_or(f64::NAN)
            });
            per_task
                .chain([run.macro_average.get(metric).copied().unwrap_or(f64::NAN)])
                .collect()
        };
        categories.push("macro average".to_owned());
        let bars = [
            Bars::new(c.baseline.as_str(), values(base)),
            Bars::new(c.candidate.as_str(), values(cand)),
        ];
        let (path, file) = self.plot_path(&eval.stage, metric);
        let title = format!("{}: {metric} per task", eval.stage);
        bar_chart(&path, &title, metric, &categories, &bars)?;
        self.image(path, file, title);
        Ok(())
    }

    /// Every field of a `stats.json`: distributions (objects with quantiles) as one table, the rest as another.
    fn mining_section(&mut self, stats: &Named<Value>) -> Result<(), ReportError> {
        self.heading(2, format!("Mining statistics: {}", stats.stage));
        let mut scalars = Vec::new();
        let mut distributions = Vec::new();
        flatten(
            &stats.value,
            String::new(),
            &mut scalars,
            &mut distributions,
        );
        if !scalars.is_empty() {
            self.table(
                vec!["statistic".into(), "value".into()],
                scalars.into_iter().map(|(k, v)| vec![k, v]).collect(),
            );
        }
        if distributions.is_empty() {
            return Ok(());
        }
        self.heading(3, "Score distributions");
        let header: Vec<String> = std::iter::once("scores".to_owned())
            .chain(DISTRIBUTION_FIELDS.iter().map(|f| (*f).to_owned()))
            .collect();
        let rows = distributions
            .iter()
            .map(|(name, fields)| {
                std::iter::once(name.clone())
                    .chain(
                        DISTRIBUTION_FIELDS
                            .iter()
                            .map(|f| json_cell(fields.get(*f))),
                    )
                    .collect()
            })
            .collect();
        self.table(header, rows);
        let series: Vec<Series> = distributions
            .iter()
            .map(|(name, fields)| {
                let points = QUANTILES
                    .iter()
                    .filter_map(|(field, q)| Some((*q, fields.get(*field)?.as_f64()?)))
                    .collect();
                Series::new(name.as_str(), points)
            })
            .collect();
        let (path, file) = self.plot_path(&stats.stage, "scores");
        let title = format!("{}: retriever score quantiles", stats.stage);
        line_chart(&path, &title, "quantile (%)", "score", &series)?;
        self.image(path, file, title);
        Ok(())
    }

    fn training_section(&mut self, log: &Named<Vec<TrainStep>>) -> Result<(), ReportError> {
        self.heading(2, format!("Training: {}", log.stage));
        let Some(last) = log.value.last() else {
            self.paragraph("The train log is empty.");
            return Ok(());
        };
        let last_values: Vec<String> = train_fields()
            .iter()
            .filter_map(|(name, pick)| Some(format!("{name} {}", format_value(pick(last)?))))
            .collect();
        self.paragraph(format!(
            "{} steps logged; at step {}: {}.",
            log.value.len(),
            last.step,
            last_values.join(", ")
        ));
        for (what, title, y_label, fields) in TRAIN_CHARTS {
            let series: Vec<Series> = train_fields()
                .into_iter()
                .filter(|(name, _)| fields.contains(name))
                .map(|(name, pick)| {
                    let points = log
                        .value
                        .iter()
                        .filter_map(|step| Some((step.step, pick(step)?)))
                        .collect();
                    Series::new(name, points)
                })
                .filter(|s: &Series| s.points.iter().any(|(x, y)| x.is_finite() && y.is_finite()))
                .collect();
            if series.is_empty() {
                continue;
            }
            let (path, file) = self.plot_path(&log.stage, what);
            let title = format!("{}: {title}", log.stage);
            line_chart(&path, &title, "step", y_label, &series)?;
            self.image(path, file, title);
        }
        Ok(())
    }
}

/// The training charts: file suffix, title, y label and the log fields drawn.
const TRAIN_CHARTS: [(&str, &str, &str, &[&str]); 4] = [
    (
        "loss",
        "training loss",
        "loss",
        &["loss", "sft_loss", "cl_loss"],
    ),
    (
        "weights",
        "mean example weights W+ and W-",
        "weight",
        &["w_pos", "w_neg"],
    ),
    ("lr", "learning rate", "learning rate", &["lr"]),
    (
        "grad_norm",
        "gradient norm (before clipping)",
        "norm",
        &["grad_norm"],
    ),
];

type Pick = fn(&TrainStep) -> Option<f64>;

fn train_fields() -> [(&'static str, Pick); 7] {
    [
        ("loss", |s| s.loss),
        ("sft_loss", |s| s.sft_loss),
        ("cl_loss", |s| s.cl_loss),
        ("lr", |s| s.lr),
        ("grad_norm", |s| s.grad_norm),
        ("w_pos", |s| s.w_pos),
        ("w_neg", |s| s.w_neg),
    ]
}

/// The columns of a score distribution, in table order.
const DISTRIBUTION_FIELDS: [&str; 9] = [
    "count", "mean", "min", "p5", "p25", "p50", "p75", "p95", "max",
];

/// The quantile fields and their percentage, for the distribution chart.
const QUANTILES: [(&str, f64); 7] = [
    ("min", 0.0),
    ("p5", 5.0),
    ("p25", 25.0),
    ("p50", 50.0),
    ("p75", 75.0),
    ("p95", 95.0),
    ("max", 100.0),
];

type Distribution = (String, serde_json::Map<String, Value>);

/// Splits a JSON value into `(dotted path, text)` scalars and the objects that are score distributions (they
/// have a median, `p50`).
fn flatten(
    value: &Value,
    path: String,
    scalars: &mut Vec<(String, String)>,
    distributions: &mut Vec<Distribution>,
) {
    match value {
        Value::Object(fields) if fields.contains_key("p50") => {
            distributions.push((path, fields.clone()));
        }
        Value::Object(fields) => {
            for (key, value) in fields {
                let child = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                flatten(value, child, scalars, distributions);
            }
        }
        other => scalars.push((path, json_cell(Some(other)))),
    }
}

fn json_cell(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "n/a".to_owned(),
        Some(Value::Number(n)) if n.is_f64() => n.as_f64().map_or_else(String::new, format_value),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// The report's summary: one row per reranker (and the first stage of the first eval stage), the macro average
/// of every metric. It is the table that compares the rerankers of a pipeline (e.g. the probe's grid), so the
/// report stage also prints it. `None` without eval stages.
pub fn summary_table(evals: &[Named<EvalSummary>]) -> Option<Table> {
    let first_eval = evals.first()?;
    let metrics = &first_eval.value.comparison.metrics;
    let mut header = vec!["run".to_owned()];
    header.extend(metrics.iter().cloned());
    let row = |label: String, values: Option<&BTreeMap<String, f64>>| {
        let mut cells = vec![label];
        cells.extend(
            metrics
                .iter()
                .map(|m| value_cell(values.and_then(|v| v.get(m)))),
        );
        cells
    };
    let first = &first_eval.value.comparison;
    let mut rows = vec![row(
        format!("first stage ({})", first_eval.stage),
        first.runs.get(&first.baseline).map(|r| &r.macro_average),
    )];
    for eval in evals {
        let c = &eval.value.comparison;
        rows.push(row(
            eval.stage.clone(),
            c.runs.get(&c.candidate).map(|r| &r.macro_average),
        ));
    }
    Some(Table { header, rows })
}

/// The summary over seeds, one row per reranker and metric: macro averages over tasks (first stage, then the
/// reranker's mean, sd, min and max over seeds and the seeds above the first stage), and the pooled test over all
/// queries. It is what a report over seeds prints.
pub fn seeds_summary_table(over: &OverSeeds) -> Table {
    let header = [
        "reranker",
        "metric",
        "first stage",
        "mean",
        "sd",
        "min",
        "max",
        "above",
        "Δ all queries",
        "p",
    ];
    let mut rows = Vec::new();
    for reranker in &over.rerankers {
        for metric in &reranker.metrics {
            let first_stage = reranker.first_stage.macro_average.get(metric);
            let mut row = vec![
                reranker.reranker.clone(),
                metric.clone(),
                value_cell(first_stage.map(|s| &s.mean)),
            ];
            row.extend(spread_cells(reranker.reranked.macro_average.get(metric)));
            row.push(format!(
                "{}/{}",
                reranker.seeds_above.get(metric).copied().unwrap_or(0),
                reranker.runs.len()
            ));
            row.extend(test_cells(reranker.pooled.get(metric)));
            rows.push(row);
        }
    }
    Table {
        header: header.into_iter().map(str::to_owned).collect(),
        rows,
    }
}

/// One reranker over its seeds, over all queries: first stage, spread, and the pooled test.
fn seeds_all_queries_table(reranker: &RerankerOverSeeds) -> Table {
    let header = [
        "metric",
        "first stage",
        "mean",
        "sd",
        "min",
        "max",
        "Δ",
        "p",
    ];
    let rows = reranker
        .metrics
        .iter()
        .map(|metric| {
            let mut row = vec![
                metric.clone(),
                value_cell(reranker.first_stage.mean.get(metric).map(|s| &s.mean)),
            ];
            row.extend(spread_cells(reranker.reranked.mean.get(metric)));
            row.extend(test_cells(reranker.pooled.get(metric)));
            row
        })
        .collect();
    Table {
        header: header.into_iter().map(str::to_owned).collect(),
        rows,
    }
}

/// One reranker over its seeds, per task: first stage and spread (no test: see [`super::seeds`]).
fn seeds_per_task_table(reranker: &RerankerOverSeeds) -> Table {
    let header = ["task", "metric", "first stage", "mean", "sd", "min", "max"];
    let mut rows = Vec::new();
    for (task, spreads) in &reranker.reranked.per_task {
        let first_stage = reranker.first_stage.per_task.get(task);
        for metric in &reranker.metrics {
            let mut row = vec![
                task.clone(),
                metric.clone(),
                value_cell(first_stage.and_then(|f| f.get(metric)).map(|s| &s.mean)),
            ];
            row.extend(spread_cells(spreads.get(metric)));
            rows.push(row);
        }
    }
    Table {
        header: header.into_iter().map(str::to_owned).collect(),
        rows,
    }
}

/// Each two rerankers compared over their seeds (those that evaluated the same queries); `None` without any.
pub fn seeds_compared_table(over: &OverSeeds) -> Option<Table> {
    let reranker = |name: &str| over.rerankers.iter().find(|r| r.reranker == name);
    let mean_of = |name: &str, metric: &str| {
        reranker(name)
            .and_then(|r| r.reranked.mean.get(metric))
            .map(|s| s.mean)
    };
    let mut rows = Vec::new();
    for pair in &over.compared {
        let (Some(tests), Some(first)) = (&pair.tests, reranker(&pair.first)) else {
            continue;
        };
        for metric in &first.metrics {
            let mut row = vec![
                format!("{} vs {}", pair.first, pair.second),
                metric.clone(),
                value_cell(mean_of(&pair.first, metric).as_ref()),
                value_cell(mean_of(&pair.second, metric).as_ref()),
            ];
            row.extend(test_cells(tests.get(metric)));
            rows.push(row);
        }
    }
    if rows.is_empty() {
        return None;
    }
    let header = ["rerankers", "metric", "first", "second", "Δ", "p"];
    Some(Table {
        header: header.into_iter().map(str::to_owned).collect(),
        rows,
    })
}

/// mean, sd, min and max of a spread; sd is "–" for a single seed.
fn spread_cells(spread: Option<&Spread>) -> [String; 4] {
    let Some(spread) = spread else {
        return ["n/a", "n/a", "n/a", "n/a"].map(str::to_owned);
    };
    [
        value_cell(Some(&spread.mean)),
        spread
            .sd
            .map_or_else(|| "–".to_owned(), |sd| value_cell(Some(&sd))),
        value_cell(Some(&spread.min)),
        value_cell(Some(&spread.max)),
    ]
}

/// Δ and p of a test.
fn test_cells(test: Option<&Significance>) -> [String; 2] {
    [
        test.map_or_else(
            || "n/a".to_owned(),
            |t| format!("{:+.4}", t.mean_difference),
        ),
        p_cell(test),
    ]
}

/// Four decimals for values of order 1, scientific notation for tiny ones (a learning rate).
fn format_value(value: f64) -> String {
    if value != 0.0 && value.abs() < 1e-3 {
        format!("{value:.3e}")
    } else {
        format!("{value:.4}")
    }
}

fn value_cell(value: Option<&f64>) -> String {
    value.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.4}"))
}

/// The p-value to 4 decimals; one of 0 (no permutation as extreme as the observed difference) as the bound the
/// permutations give, `< 1/permutations`, since the true p-value is not 0.
pub fn p_value_text(test: &Significance) -> String {
    if test.p_value > 0.0 {
        format!("{:.4}", test.p_value)
    } else {
        format!("< {:.4}", 1.0 / test.permutations.max(1) as f64)
    }
}

fn comparison_header(a: &str, b: &str) -> Vec<String> {
    ["metric", a, b, "Δ", "p"]
        .into_iter()
        .map(str::to_owned)
        .collect()
}

fn comparison_row(
    metric: &str,
    a: Option<&f64>,
    b: Option<&f64>,
    test: Option<&Significance>,
) -> Vec<String> {
    let delta = match (a, b) {
        (Some(a), Some(b)) => format!("{:+.4}", b - a),
        _ => "n/a".to_owned(),
    };
    vec![
        metric.to_owned(),
        value_cell(a),
        value_cell(b),
        delta,
        p_cell(test),
    ]
}

/// A test's p-value, marked `*` when significant; "–" without a test.
fn p_cell(test: Option<&Significance>) -> String {
    test.map_or_else(
        || "–".to_owned(),
        |t| {
            let mark = if t.p_value < SIGNIFICANCE_LEVEL {
                " *"
            } else {
                ""
            };
            format!("{}{mark}", p_value_text(t))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_text_tables_align_names_left_and_numbers_right() {
        let table = Table {
            header: vec!["run".into(), "ndcg@10".into()],
            rows: vec![
                vec!["first stage (eval_a)".into(), "0.1031".into()],
                vec!["eval_a".into(), "n/a".into()],
            ],
        };
        assert_eq!(
            table.to_text(),
            "run                   ndcg@10\n\
             first stage (eval_a)   0.1031\n\
             eval_a                    n/a\n"
        );
    }
}
