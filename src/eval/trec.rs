//! TREC run and qrels files, and the document order trec_eval gives a run.
//!
//! Both formats are whitespace separated, one judgement or one retrieved document per line:
//!
//! ```text
//! qrels: query_id iteration doc_id relevance [extra columns, e.g. the M-BEIR task id]
//! run:   query_id Q0 doc_id rank score tag
//! ```
//!
//! trec_eval ignores a run's rank column and orders by score, so umrank does too; [`write_run`] still writes
//! distinct ranks that agree with the score order, so that tools which do read the column see the same ranking.

use std::cmp::Ordering;
use std::collections::btree_map::Entry;
use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;

use super::EvalError;

/// Relevance judgements: query id -> document id -> relevance level (`<= 0` means not relevant).
pub type Qrels = BTreeMap<String, BTreeMap<String, i64>>;

/// A ranked run: query id -> document id -> retrieval score (higher is better).
pub type Run = BTreeMap<String, BTreeMap<String, f64>>;

/// Reads qrels from `reader`; `file` names the source in error messages.
///
/// Blank lines are skipped. Columns after the fourth are ignored, so M-BEIR qrels (with a task id) read as-is.
/// A document judged twice for the same query is an error, as in trec_eval.
pub fn parse_qrels(reader: impl BufRead, file: &str) -> Result<Qrels, EvalError> {
    let mut qrels = Qrels::new();
    for_each_record(reader, file, |line, fields| {
        let [query_id, _iteration, doc_id, relevance, ..] = fields else {
            return Err(malformed(
                file,
                line,
                format!(
                    "expected at least 4 columns (query_id iteration doc_id relevance), found {}",
                    fields.len()
                ),
            ));
        };
        let relevance: i64 = relevance.parse().map_err(|_| {
            malformed(
                file,
                line,
                format!("relevance {relevance:?} is not an integer"),
            )
        })?;
        let judged = qrels.entry((*query_id).to_owned()).or_default();
        insert_once(judged, query_id, doc_id, relevance, file, line)
    })?;
    Ok(qrels)
}

/// Reads a run from `reader`; `file` names the source in error messages.
///
/// The rank column must be an integer but is otherwise ignored (see the module docs). Scores must be finite,
/// because trec_eval's order is undefined for NaN. A document retrieved twice for the same query is an error.
pub fn parse_run(reader: impl BufRead, file: &str) -> Result<Run, EvalError> {
    let mut run = Run::new();
    for_each_record(reader, file, |line, fields| {
        let [query_id, _q0, doc_id, rank, score, _tag] = fields else {
            return Err(malformed(
                file,
                line,
                format!(
                    "expected 6 columns (query_id Q0 doc_id rank score tag), found {}",
                    fields.len()
                ),
            ));
        };
        rank.parse::<i64>()
            .map_err(|_| malformed(file, line, format!("rank {rank:?} is not an integer")))?;
        let score: f64 = score
            .parse()
            .ok()
            .filter(|score: &f64| score.is_finite())
            .ok_or_else(|| {
                malformed(
                    file,
                    line,
                    format!("score {score:?} is not a finite number"),
                )
            })?;
        let retrieved = run.entry((*query_id).to_owned()).or_default();
        insert_once(retrieved, query_id, doc_id, score, file, line)
    })?;
    Ok(run)
}

/// Opens and reads a qrels file.
pub fn read_qrels(path: &Path) -> Result<Qrels, EvalError> {
    let name = path.display().to_string();
    parse_qrels(open(path, &name)?, &name)
}

/// Opens and reads a run file.
pub fn read_run(path: &Path) -> Result<Run, EvalError> {
    let name = path.display().to_string();
    parse_run(open(path, &name)?, &name)
}

/// Writes `run` in TREC format with ranks 1..n per query in trec_eval's order and the scores as given.
///
/// Scores are printed in Rust's shortest round-trip form, so reading the file back gives the same values and the
/// same metrics. Ids and the tag must be non-empty and free of whitespace, or the file could not be read back.
pub fn write_run(mut writer: impl Write, run: &Run, tag: &str) -> Result<(), EvalError> {
    check_field("tag", tag)?;
    for (query_id, scores) in run {
        check_field("query id", query_id)?;
        for (index, (doc_id, score)) in ranked_documents(scores).into_iter().enumerate() {
            check_field("document id", doc_id)?;
            check_finite(query_id, doc_id, score)?;
            writeln!(writer, "{query_id} Q0 {doc_id} {} {score} {tag}", index + 1).map_err(
                |source| EvalError::Io {
                    file: "run output".to_owned(),
                    source,
                },
            )?;
        }
    }
    Ok(())
}

/// The documents of one query in trec_eval's order: score descending, ties by document id descending.
///
/// The id comparison is bytewise, like C's `strcmp`. `-0.0` and `0.0` tie, as they do in C; NaN (which the
/// parsers reject) is placed by its bit pattern only so that sorting stays total.
pub fn ranked_documents(scores: &BTreeMap<String, f64>) -> Vec<(&str, f64)> {
    let mut ranked: Vec<(&str, f64)> = scores
        .iter()
        .map(|(doc, &score)| (doc.as_str(), score))
        .collect();
    ranked.sort_by(|a, b| trec_order(*a, *b));
    ranked
}

fn trec_order(a: (&str, f64), b: (&str, f64)) -> Ordering {
    let zero_signless = |score: f64| if score == 0.0 { 0.0 } else { score };
    zero_signless(b.1)
        .total_cmp(&zero_signless(a.1))
        .then_with(|| b.0.cmp(a.0))
}

/// Checks a score before it is ranked or written.
pub(crate) fn check_finite(query_id: &str, doc_id: &str, score: f64) -> Result<(), EvalError> {
    if score.is_finite() {
        Ok(())
    } else {
        Err(EvalError::NonFiniteScore {
            query_id: query_id.to_owned(),
            doc_id: doc_id.to_owned(),
            score,
        })
    }
}

fn check_field(what: &'static str, value: &str) -> Result<(), EvalError> {
    if value.is_empty() || value.chars().any(char::is_whitespace) {
        return Err(EvalError::InvalidField {
            what,
            value: value.to_owned(),
        });
    }
    Ok(())
}

fn open(path: &Path, name: &str) -> Result<BufReader<File>, EvalError> {
    File::open(path)
        .map(BufReader::new)
        .map_err(|source| EvalError::Io {
            file: name.to_owned(),
            source,
        })
}

/// Calls `record` with the 1-based line number and the fields of every non-blank line. A UTF-8 byte-order mark
/// before the first line is the file's encoding mark, not part of its first query id.
fn for_each_record(
    reader: impl BufRead,
    file: &str,
    mut record: impl FnMut(usize, &[&str]) -> Result<(), EvalError>,
) -> Result<(), EvalError> {
    for (index, text) in reader.lines().enumerate() {
        let line = index + 1;
        let text = text.map_err(|source| EvalError::Malformed {
            file: file.to_owned(),
            line,
            reason: format!("cannot read line: {source}"),
        })?;
        let text = match line {
            1 => text.strip_prefix('\u{feff}').unwrap_or(&text),
            _ => &text,
        };
        let fields: Vec<&str> = text.split_whitespace().collect();
        if !fields.is_empty() {
            record(line, &fields)?;
        }
    }
    Ok(())
}

fn insert_once<V>(
    docs: &mut BTreeMap<String, V>,
    query_id: &str,
    doc_id: &str,
    value: V,
    file: &str,
    line: usize,
) -> Result<(), EvalError> {
    match docs.entry(doc_id.to_owned()) {
        Entry::Vacant(slot) => {
            slot.insert(value);
            Ok(())
        }
        Entry::Occupied(_) => Err(EvalError::Duplicate {
            file: file.to_owned(),
            line,
            query_id: query_id.to_owned(),
            doc_id: doc_id.to_owned(),
        }),
    }
}

fn malformed(file: &str, line: usize, reason: String) -> EvalError {
    EvalError::Malformed {
        file: file.to_owned(),
        line,
        reason,
    }
}
