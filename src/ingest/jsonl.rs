//! Shared pieces of the trainer-format readers (FlagEmbedding, ms-swift): one query per line, documents given
//! inline and identified by their content.

use std::path::Path;

use super::collect::Collection;
use super::lines::read_lines;
use super::records::{Doc, Modality, Origin, Qrel, Query};
use super::{relative, IngestError};
use crate::digest::sha256_hex;

/// A document given inline: its text and image reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InlineDoc {
    pub text: Option<String>,
    pub image: Option<String>,
}

/// A query line once parsed by a format.
pub struct InlineQuery {
    pub text: Option<String>,
    pub image: Option<String>,
    pub instruction: Option<String>,
    pub positives: Vec<InlineDoc>,
    pub negatives: Vec<InlineDoc>,
}

/// Reads every line of `path` with `parse` and adds its query, documents and judgements. Documents are identified
/// by a hash of their content, so the same passage under many queries is one document; listed negatives become
/// judgements of relevance 0 (judged non-relevant), which mining treats as given negatives.
pub fn read(
    root: &Path,
    path: &Path,
    split: &str,
    out: &mut Collection,
    parse: impl Fn(&str) -> Result<InlineQuery, (&'static str, String)>,
) -> Result<(), IngestError> {
    let file = relative(root, path);
    let dataset = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    for line in read_lines(path)? {
        let origin = Origin {
            file: file.clone(),
            line: line.number,
        };
        let qid = format!("{dataset}:{}", line.number);
        let parsed = line
            .text
            .map_err(|e| ("invalid_utf8", e))
            .and_then(|t| parse(&t));
        let query = match parsed {
            Ok(q) => q,
            Err((reason, detail)) => {
                out.reject_line(&qid, &origin, reason, detail);
                continue;
            }
        };
        let Some(modality) = Modality::of(query.text.is_some(), query.image.is_some()) else {
            out.reject_line(
                &qid,
                &origin,
                "empty_query",
                "the query has neither text nor an image".into(),
            );
            continue;
        };
        let judged = query
            .positives
            .iter()
            .map(|d| (d, 1))
            .chain(query.negatives.iter().map(|d| (d, 0)));
        let mut cand_modality = None;
        let mut judged_ids = Vec::new();
        for (doc, relevance) in judged {
            let Some(doc_modality) = Modality::of(doc.text.is_some(), doc.image.is_some()) else {
                out.reject_line(
                    &qid,
                    &origin,
                    "empty_document",
                    "a listed document has neither text nor an image".into(),
                );
                continue;
            };
            if relevance > 0 {
                cand_modality.get_or_insert(doc_modality);
            }
            let did = document_id(&dataset, doc);
            judged_ids.push(format!("{relevance}:{did}"));
            if out.doc_modality(&did).is_none() {
                out.add_doc(Doc {
                    did: did.clone(),
                    modality: doc_modality,
                    text: doc.text.clone(),
                    image: doc.image.clone(),
                    dataset: dataset.clone(),
                    pool: dataset.clone(),
                    origin: origin.clone(),
                });
            }
            out.add_qrel(Qrel {
                qid: qid.clone(),
                did,
                relevance,
                origin: origin.clone(),
            });
        }
        out.add_query(
            Query {
                qid,
                modality,
                text: query.text,
                image: query.image,
                instruction: query.instruction,
                task_id: cand_modality.map(|c| super::records::mbeir_task(modality, c).0),
                dataset: dataset.clone(),
                pool: dataset.clone(),
                split: split.to_string(),
                origin,
            },
            &judged_ids,
        );
    }
    Ok(())
}

/// `<dataset>:d<16 hex of sha256 over the parts>`: stable across runs, shared by identical documents.
fn document_id(dataset: &str, doc: &InlineDoc) -> String {
    let key = format!(
        "{}\u{1f}{}",
        doc.text.as_deref().unwrap_or(""),
        doc.image.as_deref().unwrap_or("")
    );
    format!("{dataset}:d{}", &sha256_hex(key.as_bytes())[..16])
}

/// Drops empty strings, which inputs use interchangeably with null.
pub fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}
