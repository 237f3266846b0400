//! Validation that spans records: duplicate ids, judgements that point nowhere, and shard ownership.
//!
//! Every shard reads every input line (parsing is cheap next to loading images), so checks that need the whole
//! input, such as "is this did in the pool", give the same answer in every shard; each record and each reject is
//! then kept only by the shard that owns its id.

use std::collections::{HashMap, HashSet};

use super::records::{Doc, Modality, Origin, Qrel, Query};
use crate::pipeline::Reject;
use crate::shard::Shard;

/// Records read so far, the ones this shard owns, and their rejects.
pub struct Collection {
    shard: Shard,
    pub(crate) docs: Vec<Doc>,
    pub(crate) queries: Vec<Query>,
    pending_qrels: Vec<Qrel>,
    pub(crate) rejects: Vec<Reject>,
    /// Owned input records (kept or rejected): the denominator of the reject share.
    pub(crate) records: u64,
    doc_modality: HashMap<String, Modality>,
    qids: HashSet<String>,
}

impl Collection {
    pub fn new(shard: Shard) -> Self {
        Self {
            shard,
            docs: Vec::new(),
            queries: Vec::new(),
            pending_qrels: Vec::new(),
            rejects: Vec::new(),
            records: 0,
            doc_modality: HashMap::new(),
            qids: HashSet::new(),
        }
    }

    /// The modality of any document read so far, owned or not.
    pub fn doc_modality(&self, did: &str) -> Option<Modality> {
        self.doc_modality.get(did).copied()
    }

    pub fn add_doc(&mut self, doc: Doc) {
        let owned = self.count(&doc.did);
        if self.doc_modality.contains_key(&doc.did) {
            if owned {
                let detail = format!(
                    "did `{}` appeared earlier; the first occurrence is kept",
                    doc.did
                );
                self.rejects
                    .push(reject(&doc.origin, "duplicate_did", detail).with_id(&doc.did));
            }
            return;
        }
        self.doc_modality.insert(doc.did.clone(), doc.modality);
        if owned {
            self.docs.push(doc);
        }
    }

    pub fn add_query(&mut self, query: Query) {
        let owned = self.count(&query.qid);
        if !self.qids.insert(query.qid.clone()) {
            if owned {
                let detail = format!(
                    "qid `{}` appeared earlier; the first occurrence is kept",
                    query.qid
                );
                self.rejects
                    .push(reject(&query.origin, "duplicate_qid", detail).with_id(&query.qid));
            }
            return;
        }
        if owned {
            self.queries.push(query);
        }
    }

    /// Judgements are checked once every document and query has been read.
    pub fn add_qrel(&mut self, qrel: Qrel) {
        if self.count(&qrel.qid) {
            self.pending_qrels.push(qrel);
        }
    }

    /// A line that could not be read as a record; `key` decides which shard reports it (an id if one could be
    /// read, else file and line).
    pub fn reject_line(&mut self, key: &str, origin: &Origin, reason: &str, detail: String) {
        if self.count(key) {
            self.rejects.push(reject(origin, reason, detail));
        }
    }

    /// Rejects a record this shard owns after the fact (its image failed to load, say).
    pub fn reject_owned(&mut self, rejected: Reject) {
        self.rejects.push(rejected);
    }

    /// Counts a record toward this shard if it owns `key`, and says whether it does.
    fn count(&mut self, key: &str) -> bool {
        let owned = self.shard.owns(key);
        if owned {
            self.records += 1;
        }
        owned
    }

    /// Validates the judgements against the full id sets: a qrel to an unknown or rejected query or document is
    /// rejected; repeated (qid, did) pairs keep the highest relevance. Returns them in first-seen order.
    pub fn finish_qrels(&mut self) -> Vec<Qrel> {
        let kept_qids: HashSet<&str> = self.queries.iter().map(|q| q.qid.as_str()).collect();
        let mut index: HashMap<(String, String), usize> = HashMap::new();
        let mut out: Vec<Qrel> = Vec::new();
        let mut rejects = Vec::new();
        for qrel in self.pending_qrels.drain(..) {
            let problem = if !self.qids.contains(&qrel.qid) {
                Some((
                    "unknown_qid",
                    format!("qid `{}` is not among the queries", qrel.qid),
                ))
            } else if !kept_qids.contains(qrel.qid.as_str()) {
                Some((
                    "query_rejected",
                    format!("query `{}` was rejected (see its own reject row)", qrel.qid),
                ))
            } else if !self.doc_modality.contains_key(&qrel.did) {
                Some((
                    "unknown_did",
                    format!("did `{}` is not in the candidate pool", qrel.did),
                ))
            } else {
                None
            };
            if let Some((reason, detail)) = problem {
                rejects.push(
                    reject(&qrel.origin, reason, detail)
                        .with_id(format!("{} {}", qrel.qid, qrel.did)),
                );
                continue;
            }
            match index.get(&(qrel.qid.clone(), qrel.did.clone())) {
                Some(&at) => out[at].relevance = out[at].relevance.max(qrel.relevance),
                None => {
                    index.insert((qrel.qid.clone(), qrel.did.clone()), out.len());
                    out.push(qrel);
                }
            }
        }
        self.rejects.extend(rejects);
        out
    }
}

pub(crate) fn reject(origin: &Origin, reason: &str, detail: String) -> Reject {
    Reject::new(origin.file.clone(), reason, detail).at_line(origin.line)
}
