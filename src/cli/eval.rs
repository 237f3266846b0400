//! `umrank eval`: trec_eval-equal metrics of a TREC run file, optionally tested against a baseline run.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use serde_json::{Map, Value};

use umrank::eval::summary::ALL;
use umrank::eval::{
    compare, evaluate, read_qrels, read_run, Comparison, Evaluation, Metric, TestSettings,
    DEFAULT_PERMUTATIONS,
};

/// Evaluate a TREC run against qrels as `trec_eval -c` does (docs/evaluation.md#which-queries-count): the evaluated
/// queries are those with a relevant document; one missing from the run scores 0. Documents are ordered by score, ties
/// broken by document id descending; the run's rank column is ignored.
#[derive(Debug, clap::Args)]
pub struct EvalArgs {
    /// The run file: `qid Q0 did rank score tag` per line.
    #[arg(long, value_name = "RUN.trec")]
    pub run: PathBuf,

    /// The judgements: `qid iteration did relevance` per line (further columns, such as M-BEIR's task id, are
    /// ignored). A level of 1 or more is relevant.
    #[arg(long, value_name = "QRELS.txt")]
    pub qrels: PathBuf,

    /// A second run (the first stage, say) to compare with: its means, the difference and the p-value of a paired
    /// randomisation test per metric are printed too.
    #[arg(long, value_name = "RUN.trec")]
    pub baseline: Option<PathBuf>,

    /// The metrics, comma separated: ndcg@K, recall@K, map@K, hit@K (trec_eval success.K), mrr@K.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "ndcg@10,recall@10,recall@100,map@100,hit@10,mrr@10"
    )]
    pub metrics: Vec<Metric>,

    /// Print one JSON object instead of a table: metric name -> mean over the evaluated queries; with
    /// --per-query also "per_query" (metric -> qid -> value); with --baseline also "baseline" (its means),
    /// "mean_difference" and "p_value" (metric -> value).
    #[arg(long)]
    pub json: bool,

    /// Also print every query's value (like trec_eval -q).
    #[arg(long)]
    pub per_query: bool,

    /// Permutations of the randomisation test (with --baseline).
    #[arg(long, default_value_t = DEFAULT_PERMUTATIONS)]
    pub permutations: usize,

    /// Seed of the randomisation test (with --baseline); the same seed gives the same p-values.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

pub fn eval(args: &EvalArgs) -> Result<()> {
    let qrels = read_qrels(&args.qrels)?;
    let run = read_run(&args.run)?;
    let evaluation = evaluate(&run, &qrels, &args.metrics)?;
    let comparison = match &args.baseline {
        Some(path) => {
            let baseline = read_run(path)?;
            // One group holding every query: the command compares two runs overall, not per task.
            let task_of = qrels
                .keys()
                .map(|qid| (qid.clone(), ALL.to_owned()))
                .collect();
            let tests = TestSettings {
                permutations: args.permutations,
                seed: args.seed,
            };
            let names = (path.display().to_string(), args.run.display().to_string());
            let names = if names.0 == names.1 {
                ("baseline".to_owned(), "run".to_owned())
            } else {
                names
            };
            Some(compare(
                (&names.0, &baseline),
                (&names.1, &run),
                &qrels,
                &task_of,
                &args.metrics,
                tests,
            )?)
        }
        None => None,
    };
    let mut out = std::io::stdout().lock();
    if args.json {
        let object = json_object(&evaluation, comparison.as_ref(), args.per_query);
        serde_json::to_writer(&mut out, &object)?;
        out.write_all(b"\n")?;
    } else {
        out.write_all(table(&evaluation, comparison.as_ref(), args.per_query).as_bytes())?;
    }
    out.flush()?;
    Ok(())
}

fn json_object(evaluation: &Evaluation, comparison: Option<&Comparison>, per_query: bool) -> Value {
    let mut object: Map<String, Value> = evaluation
        .mean
        .iter()
        .map(|(metric, value)| (metric.to_string(), Value::from(*value)))
        .collect();
    if per_query {
        let values: Map<String, Value> = evaluation
            .per_query
            .iter()
            .map(|(metric, values)| (metric.to_string(), serde_json::json!(values)))
            .collect();
        object.insert("per_query".into(), Value::Object(values));
    }
    if let Some(comparison) = comparison {
        if let Some(baseline) = comparison.runs.get(&comparison.baseline) {
            object.insert("baseline".into(), serde_json::json!(baseline.mean));
        }
        let tests = comparison.significance.get(ALL);
        let field = |pick: fn(&umrank::eval::Significance) -> f64| -> BTreeMap<&String, f64> {
            tests
                .into_iter()
                .flatten()
                .map(|(metric, test)| (metric, pick(test)))
                .collect()
        };
        object.insert(
            "mean_difference".into(),
            serde_json::json!(field(|t| t.mean_difference)),
        );
        object.insert("p_value".into(), serde_json::json!(field(|t| t.p_value)));
    }
    Value::Object(object)
}

/// trec_eval's layout: `metric  scope  value`, per query (when asked) before the `all` line.
fn table(evaluation: &Evaluation, comparison: Option<&Comparison>, per_query: bool) -> String {
    if let Some(comparison) = comparison {
        let mut text = format!("queries: {}\n", comparison.queries);
        text.push_str(&comparison.table());
        if per_query {
            text.push_str(&per_query_lines(evaluation));
        }
        return text;
    }
    let mut text = if per_query {
        per_query_lines(evaluation)
    } else {
        String::new()
    };
    let queries = evaluation
        .per_query
        .values()
        .next()
        .map_or(0, BTreeMap::len);
    text.push_str(&format!("{:<12}\t{ALL}\t{queries}\n", "queries"));
    for (metric, value) in &evaluation.mean {
        text.push_str(&format!("{:<12}\t{ALL}\t{value:.4}\n", metric.to_string()));
    }
    text
}

fn per_query_lines(evaluation: &Evaluation) -> String {
    let mut text = String::new();
    for (metric, values) in &evaluation.per_query {
        for (qid, value) in values {
            text.push_str(&format!("{:<12}\t{qid}\t{value:.4}\n", metric.to_string()));
        }
    }
    text
}
