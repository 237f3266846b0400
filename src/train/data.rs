//! Training groups from the shards stage: one query, its positive and its negatives, with every prompt part.
//!
//! `sft` rows of a group are contiguous, positive first, and carry the document parts themselves; a `cl` row is a
//! whole group whose documents are named by id, their parts joined from the ingest stage's corpus. Either way the
//! result is the same [`Group`], so the trainer does not care which dataset it was given. A group that breaks
//! the contract (labels out of order, a group id split over two runs of rows, a document missing from the corpus)
//! is rejected with its row, never guessed at.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use arrow::array::{Array, BooleanArray, ListArray, RecordBatch, StringArray, UInt64Array};

use super::failure::TrainRunError;
use crate::dataset::Dataset;
use crate::pipeline::Reject;

/// One side of a prompt: its text (empty when it has none) and its image, a key into the images dataset.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Part {
    pub text: String,
    pub image_id: Option<String>,
}

/// A training group: documents[0] is the positive, the rest its negatives in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub group_id: u64,
    pub qid: String,
    pub instruction: String,
    pub query: Part,
    /// `(did, parts)`, positive first.
    pub documents: Vec<(String, Part)>,
    /// 1-based row of the group's first row in its dataset, for rejects.
    pub row: u64,
}

impl Group {
    pub fn negatives(&self) -> usize {
        self.documents.len().saturating_sub(1)
    }

    /// Every image id the group's prompts use.
    pub fn image_ids(&self) -> impl Iterator<Item = &str> {
        self.query
            .image_id
            .iter()
            .chain(
                self.documents
                    .iter()
                    .filter_map(|(_, d)| d.image_id.as_ref()),
            )
            .map(String::as_str)
    }
}

/// The groups read from a dataset, and the rows that could not form one.
#[derive(Debug, Default)]
pub struct GroupSet {
    pub groups: Vec<Group>,
    pub rejects: Vec<Reject>,
}

/// Reads the groups of an `sft` dataset.
pub fn read_sft(dataset: &Dataset) -> Result<GroupSet, TrainRunError> {
    let source = dataset.path().display().to_string();
    let mut reader = SftReader {
        source: source.clone(),
        out: GroupSet::default(),
        current: None,
        seen: HashSet::new(),
        broken: None,
    };
    let mut row = 0u64;
    for batch in dataset.batches()? {
        let batch = batch?;
        let columns = SftColumns::of(&batch, dataset.path())?;
        for i in 0..batch.num_rows() {
            row += 1;
            reader.push(row, &columns, i);
        }
    }
    reader.flush();
    Ok(reader.out)
}

struct SftColumns<'a> {
    group_id: &'a UInt64Array,
    qid: &'a StringArray,
    did: &'a StringArray,
    label: &'a BooleanArray,
    instruction: &'a StringArray,
    query_text: &'a StringArray,
    query_image: &'a StringArray,
    doc_text: &'a StringArray,
    doc_image: &'a StringArray,
}

impl<'a> SftColumns<'a> {
    fn of(batch: &'a RecordBatch, path: &Path) -> Result<Self, TrainRunError> {
        Ok(Self {
            group_id: column(batch, path, "group_id")?,
            qid: column(batch, path, "qid")?,
            did: column(batch, path, "did")?,
            label: column(batch, path, "label")?,
            instruction: column(batch, path, "instruction")?,
            query_text: column(batch, path, "query_text")?,
            query_image: column(batch, path, "query_image_id")?,
            doc_text: column(batch, path, "doc_text")?,
            doc_image: column(batch, path, "doc_image_id")?,
        })
    }
}

/// Assembles contiguous rows into groups, one group at a time.
struct SftReader {
    source: String,
    out: GroupSet,
    current: Option<Group>,
    seen: HashSet<u64>,
    /// The group being skipped after a broken row, and why: its remaining rows are dropped with it.
    broken: Option<(u64, u64)>,
}

impl SftReader {
    fn push(&mut self, row: u64, c: &SftColumns, i: usize) {
        let group_id = c.group_id.value(i);
        let label = c.label.value(i);
        let did = c.did.value(i).to_string();
        let document = Part {
            text: text(c.doc_text, i),
            image_id: optional(c.doc_image, i),
        };
        if let Some((broken, _)) = self.broken {
            if broken == group_id {
                return;
            }
            self.broken = None;
        }
        if self.current.as_ref().map(|g| g.group_id) == Some(group_id) {
            if label {
                self.break_group(row, "group_two_positives", "a second positive row");
            } else if let Some(group) = &mut self.current {
                group.documents.push((did, document));
            }
            return;
        }
        self.flush();
        if !self.seen.insert(group_id) {
            self.reject(
                row,
                group_id,
                "group_not_contiguous",
                "the group's rows are split by rows of other groups",
            );
            self.broken = Some((group_id, row));
            return;
        }
        if !label {
            self.reject(
                row,
                group_id,
                "group_positive_not_first",
                "the group's first row is not its positive",
            );
            self.broken = Some((group_id, row));
            return;
        }
        self.current = Some(Group {
            group_id,
            qid: c.qid.value(i).to_string(),
            instruction: text(c.instruction, i),
            query: Part {
                text: text(c.query_text, i),
                image_id: optional(c.query_image, i),
            },
            documents: vec![(did, document)],
            row,
        });
    }

    fn break_group(&mut self, row: u64, reason: &str, detail: &str) {
        if let Some(group) = self.current.take() {
            self.reject(row, group.group_id, reason, detail);
            self.broken = Some((group.group_id, row));
        }
    }

    fn flush(&mut self) {
        if let Some(group) = self.current.take() {
            if group.negatives() == 0 {
                self.reject(
                    group.row,
                    group.group_id,
                    "group_without_negatives",
                    "the group has no negative rows",
                );
            } else {
                self.out.groups.push(group);
            }
        }
    }

    fn reject(&mut self, row: u64, group_id: u64, reason: &str, detail: &str) {
        self.out.rejects.push(
            Reject::new(&self.source, reason, detail)
                .at_line(row)
                .with_id(group_id.to_string()),
        );
    }
}

/// Reads the groups of a `cl` dataset, taking document parts from `corpus`.
pub fn read_cl(dataset: &Dataset, corpus: &Dataset) -> Result<GroupSet, TrainRunError> {
    let source = dataset.path().display().to_string();
    struct Row {
        group: Group,
        dids: Vec<String>,
    }
    let mut rows = Vec::new();
    let mut row = 0u64;
    for batch in dataset.batches()? {
        let batch = batch?;
        let path = dataset.path();
        let group_id: &UInt64Array = column(&batch, path, "group_id")?;
        let qid: &StringArray = column(&batch, path, "qid")?;
        let positive: &StringArray = column(&batch, path, "positive")?;
        let negatives: &ListArray = column(&batch, path, "negatives")?;
        let instruction: &StringArray = column(&batch, path, "instruction")?;
        let query_text: &StringArray = column(&batch, path, "query_text")?;
        let query_image: &StringArray = column(&batch, path, "query_image_id")?;
        for i in 0..batch.num_rows() {
            row += 1;
            let list = negatives.value(i);
            let names =
                list.as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| TrainRunError::Data {
                        path: path.to_path_buf(),
                        message: "column `negatives` is not a list of strings".into(),
                    })?;
            let mut dids = vec![positive.value(i).to_string()];
            dids.extend((0..names.len()).map(|k| names.value(k).to_string()));
            rows.push(Row {
                group: Group {
                    group_id: group_id.value(i),
                    qid: qid.value(i).to_string(),
                    instruction: text(instruction, i),
                    query: Part {
                        text: text(query_text, i),
                        image_id: optional(query_image, i),
                    },
                    documents: Vec::new(),
                    row,
                },
                dids,
            });
        }
    }
    let wanted: HashSet<&str> = rows
        .iter()
        .flat_map(|r| r.dids.iter().map(String::as_str))
        .collect();
    let docs = read_corpus(corpus, &wanted)?;
    let mut out = GroupSet::default();
    let mut seen = HashSet::new();
    for Row { mut group, dids } in rows {
        let reject = |reason: &str, detail: String| {
            Reject::new(&source, reason, detail)
                .at_line(group.row)
                .with_id(group.group_id.to_string())
        };
        if !seen.insert(group.group_id) {
            out.rejects.push(reject(
                "duplicate_group",
                "the group id appears on an earlier row".into(),
            ));
            continue;
        }
        if dids.len() < 2 {
            out.rejects.push(reject(
                "group_without_negatives",
                "the group lists no negatives".into(),
            ));
            continue;
        }
        if let Some(missing) = dids.iter().find(|d| !docs.contains_key(d.as_str())) {
            out.rejects.push(reject(
                "unknown_document",
                format!(
                    "document `{missing}` is not in the corpus {}",
                    corpus.path().display()
                ),
            ));
            continue;
        }
        group.documents = dids
            .into_iter()
            .map(|did| {
                let part = docs.get(did.as_str()).cloned().unwrap_or_default();
                (did, part)
            })
            .collect();
        out.groups.push(group);
    }
    Ok(out)
}

/// The parts of the corpus documents in `wanted`.
fn read_corpus(
    corpus: &Dataset,
    wanted: &HashSet<&str>,
) -> Result<HashMap<String, Part>, TrainRunError> {
    let mut docs = HashMap::with_capacity(wanted.len());
    for batch in corpus.batches()? {
        let batch = batch?;
        let did: &StringArray = column(&batch, corpus.path(), "did")?;
        let text_column: &StringArray = column(&batch, corpus.path(), "text")?;
        let image: &StringArray = column(&batch, corpus.path(), "image_id")?;
        for i in 0..batch.num_rows() {
            if wanted.contains(did.value(i)) {
                docs.insert(
                    did.value(i).to_string(),
                    Part {
                        text: text(text_column, i),
                        image_id: optional(image, i),
                    },
                );
            }
        }
    }
    Ok(docs)
}

/// Cuts every group to `negatives` negatives (keeping the first ones) and rejects the groups that have fewer. With
/// `None`, N is the largest number of negatives in the data.
pub fn fix_negatives(set: &mut GroupSet, negatives: Option<usize>, source: &str) -> usize {
    let n = negatives.unwrap_or_else(|| set.groups.iter().map(Group::negatives).max().unwrap_or(0));
    let mut kept = Vec::with_capacity(set.groups.len());
    for mut group in std::mem::take(&mut set.groups) {
        if group.negatives() < n {
            set.rejects.push(
                Reject::new(
                    source,
                    "short_of_negatives",
                    format!(
                        "the group has {} negatives, training uses {n}",
                        group.negatives()
                    ),
                )
                .at_line(group.row)
                .with_id(group.group_id.to_string()),
            );
            continue;
        }
        group.documents.truncate(n + 1);
        kept.push(group);
    }
    set.groups = kept;
    n
}

fn column<'a, T: 'static>(
    batch: &'a RecordBatch,
    path: &Path,
    name: &str,
) -> Result<&'a T, TrainRunError> {
    let bad = |message: String| TrainRunError::Data {
        path: path.to_path_buf(),
        message,
    };
    let array = batch
        .column_by_name(name)
        .ok_or_else(|| bad(format!("no column `{name}`")))?;
    array
        .as_any()
        .downcast_ref::<T>()
        .ok_or_else(|| bad(format!("column `{name}` has type {}", array.data_type())))
}

fn text(column: &StringArray, i: usize) -> String {
    if column.is_null(i) {
        String::new()
    } else {
        column.value(i).to_string()
    }
}

fn optional(column: &StringArray, i: usize) -> Option<String> {
    (!column.is_null(i)).then(|| column.value(i).to_string())
}
