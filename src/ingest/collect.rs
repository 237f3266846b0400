//! Validation that spans records: repeated ids, judgements that point nowhere, queries left without a positive,
//! and shard ownership.
//!
//! Every shard reads every input line (parsing is cheap next to loading images), so checks that need the whole
//! input, such as "is this did in the pool", give the same answer in every shard; each record and each reject is
//! then kept only by the shard that owns its id.
//!
//! A record whose id was seen before is one record listed twice when its content is the same (M-BEIR lists a
//! document in its task's local pool and again in the global pool; its upsampled union file repeats queries):
//! it is kept once. When the content differs, the first occurrence is kept and the later one is a reject row.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::records::{Doc, Modality, Origin, Qrel, Query};
use crate::pipeline::Reject;
use crate::shard::{stable_hash, Shard};

/// Records read so far, the ones this shard owns, and their rejects.
pub struct Collection {
    shard: Shard,
    pub(crate) docs: Vec<Doc>,
    pub(crate) queries: Vec<Query>,
    pending_qrels: Vec<Qrel>,
    pub(crate) rejects: Vec<Reject>,
    /// Owned input records (kept or rejected): the denominator of the reject share.
    pub(crate) records: u64,
    /// Every document read, owned or not, by did.
    seen_docs: HashMap<String, Seen>,
    /// Every query read, owned or not, by qid.
    seen_queries: HashMap<String, Seen>,
    /// Documents that are not in the corpus although a line named them (their image failed, say).
    rejected_docs: HashSet<String>,
    /// Queries left out on purpose (another task than the ones asked for): their judgements go with them.
    skipped_qids: HashSet<String>,
    /// Owned records listed again with the same content, kept once.
    pub(crate) repeats: u64,
    /// The input files records came from, in the order first seen.
    files: Vec<String>,
}

/// What is remembered of every record read, to recognise its repeats: kept small (the file as an index into
/// [`Collection::files`]) because every shard remembers every record.
struct Seen {
    modality: Modality,
    content: u64,
    file: u32,
    line: u64,
    /// The image reference of a document another shard owns (an owned one keeps its whole record).
    foreign_image: Option<Box<str>>,
}

/// What became of a record handed to the collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    New,
    /// The same id with the same content: one record listed twice, kept once.
    Repeat,
    /// The same id with other content: the later record is rejected.
    Conflict,
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
            seen_docs: HashMap::new(),
            seen_queries: HashMap::new(),
            rejected_docs: HashSet::new(),
            skipped_qids: HashSet::new(),
            repeats: 0,
            files: Vec::new(),
        }
    }

    /// The modality of any document read so far, owned or not.
    pub fn doc_modality(&self, did: &str) -> Option<Modality> {
        self.seen_docs.get(did).map(|seen| seen.modality)
    }

    pub fn add_doc(&mut self, doc: Doc) -> Added {
        let owned = self.count(&doc.did);
        let content = content_hash(&[
            doc.modality.as_str(),
            doc.text.as_deref().unwrap_or(""),
            doc.image.as_deref().unwrap_or(""),
        ]);
        let seen = Seen {
            modality: doc.modality,
            content,
            file: self.file_index(&doc.origin.file),
            line: doc.origin.line,
            foreign_image: doc.image.as_deref().filter(|_| !owned).map(Box::from),
        };
        let (added, first) = remember(&mut self.seen_docs, &doc.did, seen);
        if owned {
            self.note(added, first, &doc.origin, "did", &doc.did);
            if added == Added::New {
                self.docs.push(doc);
            }
        }
        added
    }

    /// Adds a query; `judged` lists what else defines it (its positives, say), so that a repeat with other
    /// judgements counts as a conflict.
    pub fn add_query(&mut self, query: Query, judged: &[String]) -> Added {
        let owned = self.count(&query.qid);
        let task = query.task_id.map(|t| t.to_string()).unwrap_or_default();
        let mut parts = vec![
            query.modality.as_str(),
            query.text.as_deref().unwrap_or(""),
            query.image.as_deref().unwrap_or(""),
            task.as_str(),
            query.pool.as_str(),
        ];
        let mut judged: Vec<&str> = judged.iter().map(String::as_str).collect();
        judged.sort_unstable();
        judged.dedup();
        parts.extend(judged);
        let content = content_hash(&parts);
        let seen = Seen {
            modality: query.modality,
            content,
            file: self.file_index(&query.origin.file),
            line: query.origin.line,
            foreign_image: None,
        };
        let (added, first) = remember(&mut self.seen_queries, &query.qid, seen);
        if owned {
            self.note(added, first, &query.origin, "qid", &query.qid);
            if added == Added::New {
                self.queries.push(query);
            }
        }
        added
    }

    /// Counts a repeat of an owned record, or rejects it when its content conflicts with the first occurrence.
    fn note(
        &mut self,
        added: Added,
        first: Option<(u32, u64)>,
        origin: &Origin,
        what: &str,
        id: &str,
    ) {
        match (added, first) {
            (Added::Repeat, _) => self.repeats += 1,
            (Added::Conflict, Some((file, line))) => {
                let detail = format!(
                    "{what} `{id}` was read before with other content ({}:{line}); the first occurrence is kept",
                    self.files[file as usize]
                );
                self.rejects
                    .push(reject(origin, &format!("conflicting_{what}"), detail).with_id(id));
            }
            _ => {}
        }
    }

    fn file_index(&mut self, file: &str) -> u32 {
        match self.files.iter().rposition(|known| known == file) {
            Some(at) => at as u32,
            None => {
                self.files.push(file.to_string());
                (self.files.len() - 1) as u32
            }
        }
    }

    /// The image reference of a document another shard owns.
    pub fn doc_image(&self, did: &str) -> Option<String> {
        self.seen_docs
            .get(did)
            .and_then(|seen| seen.foreign_image.as_deref())
            .map(str::to_string)
    }

    /// Queries left out on purpose.
    pub fn skipped(&self) -> usize {
        self.skipped_qids.len()
    }

    /// A query left out on purpose: its judgements are dropped too, without reject rows.
    pub fn skip_query(&mut self, qid: String) {
        self.skipped_qids.insert(qid);
    }

    /// Judgements are checked once every document and query has been read.
    pub fn add_qrel(&mut self, qrel: Qrel) {
        if self.skipped_qids.contains(&qrel.qid) {
            return;
        }
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

    /// Takes a document out of the corpus after it was read (its image failed): judgements that name it are
    /// rejected in [`Self::finish_qrels`]. Called for owned and other shards' documents alike.
    pub fn drop_doc(&mut self, did: &str) {
        self.rejected_docs.insert(did.to_string());
        self.docs.retain(|doc| doc.did != did);
    }

    /// The dids of documents that some owned query judges relevant and another shard owns: this shard must know
    /// whether they make it into the corpus to know whether the query keeps a positive.
    pub fn foreign_positives(&self) -> Vec<String> {
        let mut dids: Vec<String> = self
            .pending_qrels
            .iter()
            .filter(|qrel| qrel.relevance > 0 && !self.shard.owns(&qrel.did))
            .filter(|qrel| self.seen_docs.contains_key(&qrel.did))
            .map(|qrel| qrel.did.clone())
            .collect();
        dids.sort_unstable();
        dids.dedup();
        dids
    }

    /// Counts a record toward this shard if it owns `key`, and says whether it does.
    fn count(&mut self, key: &str) -> bool {
        let owned = self.shard.owns(key);
        if owned {
            self.records += 1;
        }
        owned
    }

    /// Rejects the owned queries that no kept document is relevant to (an empty positive list, or every positive
    /// unknown or rejected): a query without a positive forms no training group and scores nothing in
    /// evaluation, and kept with only its negatives it would read as data it is not. Returns their qids.
    pub fn reject_queries_without_positives(&mut self) -> HashSet<String> {
        let mut positives: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
        for qrel in &self.pending_qrels {
            if qrel.relevance <= 0 {
                continue;
            }
            let entry = positives.entry(qrel.qid.as_str()).or_default();
            entry.0 += 1;
            if self.is_corpus_doc(&qrel.did) {
                entry.1 += 1;
            }
        }
        let mut rejected = HashSet::new();
        let mut rejects = Vec::new();
        for query in &self.queries {
            let (listed, kept) = positives.get(query.qid.as_str()).copied().unwrap_or((0, 0));
            if kept > 0 {
                continue;
            }
            let detail = if listed == 0 {
                "no relevant document is listed for this query".to_string()
            } else {
                format!(
                    "none of its {listed} relevant documents is in the corpus (unknown or rejected: see their rows)"
                )
            };
            rejects.push(reject(&query.origin, "no_positive", detail).with_id(&query.qid));
            rejected.insert(query.qid.clone());
        }
        self.queries.retain(|query| !rejected.contains(&query.qid));
        self.rejects.extend(rejects);
        rejected
    }

    fn is_corpus_doc(&self, did: &str) -> bool {
        self.seen_docs.contains_key(did) && !self.rejected_docs.contains(did)
    }

    /// Validates the judgements against the full id sets: a qrel to an unknown or rejected query or document is
    /// rejected; repeated (qid, did) pairs keep the highest relevance. Returns them in first-seen order.
    pub fn finish_qrels(&mut self) -> Vec<Qrel> {
        let kept_qids: HashSet<&str> = self.queries.iter().map(|q| q.qid.as_str()).collect();
        let mut index: HashMap<(String, String), usize> = HashMap::new();
        let mut out: Vec<Qrel> = Vec::new();
        let mut rejects = Vec::new();
        for qrel in self.pending_qrels.drain(..) {
            let problem = if !self.seen_queries.contains_key(&qrel.qid) {
                Some((
                    "unknown_qid",
                    format!("qid `{}` is not among the queries", qrel.qid),
                ))
            } else if !self.seen_docs.contains_key(&qrel.did) {
                Some((
                    "unknown_did",
                    format!("did `{}` is not in the candidate pool", qrel.did),
                ))
            } else if self.rejected_docs.contains(&qrel.did) {
                Some((
                    "document_rejected",
                    format!(
                        "document `{}` was rejected (see its own reject row), so the corpus lacks it",
                        qrel.did
                    ),
                ))
            } else if !kept_qids.contains(qrel.qid.as_str()) {
                Some((
                    "query_rejected",
                    format!("query `{}` was rejected (see its own reject row)", qrel.qid),
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

/// Records the first occurrence of `id`, or says how a later one relates to it (with the first one's file index
/// and line when they conflict).
fn remember(
    seen: &mut HashMap<String, Seen>,
    id: &str,
    record: Seen,
) -> (Added, Option<(u32, u64)>) {
    match seen.get(id) {
        None => {
            seen.insert(id.to_string(), record);
            (Added::New, None)
        }
        Some(first) if first.content == record.content => (Added::Repeat, None),
        Some(first) => (Added::Conflict, Some((first.file, first.line))),
    }
}

/// A hash of a record's parts, each followed by a separator so that shifting text between parts changes it.
fn content_hash(parts: &[&str]) -> u64 {
    let mut bytes = Vec::new();
    for part in parts {
        bytes.extend_from_slice(part.as_bytes());
        bytes.push(0x1f);
    }
    stable_hash(&bytes)
}

pub(crate) fn reject(origin: &Origin, reason: &str, detail: String) -> Reject {
    Reject::new(origin.file.clone(), reason, detail).at_line(origin.line)
}
