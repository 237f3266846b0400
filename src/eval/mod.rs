//! Evaluation of ranked runs: TREC files, retrieval metrics equal to trec_eval's, macro averages and a paired
//! significance test.
//!
//! The eval stage reads the qrels and the runs before and after reranking ([`read_qrels`], [`read_run`]),
//! evaluates each ([`evaluate`] with [`Metric::DEFAULT`]), macro-averages per task ([`macro_average`]) and tests
//! the difference ([`paired_values`], [`randomisation_test`]). Values equal `trec_eval -c` / pytrec_eval on the
//! same files; the conventions are in [`metrics`]. [`compare`] does all of that for two runs, and the `eval`
//! pipeline stage ([`EvalStage`]) reranks first-stage lists with a model and compares the result with them.

mod error;
pub mod inputs;
pub mod macro_average;
pub mod metrics;
mod parts;
mod rows;
pub mod significance;
pub mod stage;
mod stage_error;
pub mod summary;
pub mod trec;

pub use error::EvalError;
pub use macro_average::{macro_average, MacroAverage};
pub use metrics::{evaluate, evaluate_queries, Evaluation, Metric, PerQuery};
pub use significance::{
    paired_values, randomisation_test, RandomisationTest, DEFAULT_PERMUTATIONS,
};
pub use stage::{EvalConfig, EvalStage, EvalSummary, Interpolation, ScoreField};
pub use stage_error::EvalStageError;
pub use summary::{compare, compare_per_query, Comparison, RunMetrics, Significance, TestSettings};
pub use trec::{
    parse_qrels, parse_run, ranked_documents, read_qrels, read_run, write_run, Qrels, Run,
};
