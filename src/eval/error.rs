//! The one error type of the evaluation library.

use std::io;

/// Why reading TREC files, evaluating a run or testing significance failed.
///
/// File errors carry the file name and 1-based line so that a user can fix the input without a debugger.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        #[source]
        source: io::Error,
    },
    #[error("{file}:{line}: {reason}")]
    Malformed {
        file: String,
        line: usize,
        reason: String,
    },
    #[error("{file}:{line}: document {doc_id} appears twice for query {query_id}")]
    Duplicate {
        file: String,
        line: usize,
        query_id: String,
        doc_id: String,
    },
    #[error("writing a run: {what} {value:?} is empty or contains whitespace")]
    InvalidField { what: &'static str, value: String },
    #[error("query {query_id}, document {doc_id}: score {score} is not a finite number")]
    NonFiniteScore {
        query_id: String,
        doc_id: String,
        score: f64,
    },
    #[error("unknown metric {0:?} (expected ndcg@K, recall@K, map@K, hit@K or mrr@K with K >= 1)")]
    UnknownMetric(String),
    #[error("metric {0} has a cutoff of 0; cutoffs start at 1")]
    ZeroCutoff(String),
    #[error("no query in the qrels has a relevant document, so no metric can be averaged")]
    NoRelevantQueries,
    #[error("query {0} has no group, so it cannot be macro-averaged")]
    MissingGroup(String),
    #[error("paired test: {0}")]
    Pairing(String),
}
