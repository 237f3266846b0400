//! The (query, positive) pairs of the ingest datasets, and the pixels of the images they show.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use arrow::array::{Array, Int32Array, LargeBinaryArray, RecordBatch, StringArray};
use rayon::prelude::*;

use super::error::DualEncoderError;
use crate::dataset::{columns, Dataset};
use crate::media::preprocess::{ClipProcessor, ImagePreprocessor};
use crate::pipeline::Reject;
use crate::schema::outputs;

/// One side of a pair as the embed stage embeds it: its text, its image, or both.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Record {
    pub text: Option<String>,
    pub image_id: Option<String>,
}

/// A query and one of its relevant documents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub qid: String,
    pub did: String,
    pub query: Record,
    pub doc: Record,
}

/// The pairs of the training split and of the held-out split, in (qid, did) order, and the qrels rows that could
/// not become pairs.
#[derive(Debug, Default)]
pub struct PairSet {
    pub train: Vec<Pair>,
    pub val: Vec<Pair>,
    pub rejects: Vec<Reject>,
}

impl PairSet {
    /// Reads the ingest stage's `queries`, `corpus` and `qrels` under `ingest`.
    pub fn read(
        ingest: &Path,
        split: &str,
        val_split: Option<&str>,
    ) -> Result<Self, DualEncoderError> {
        let corpus = read_corpus(&ingest.join(outputs::ingest::CORPUS))?;
        let queries = read_queries(&ingest.join(outputs::ingest::QUERIES), split, val_split)?;
        let qrels_path = ingest.join(outputs::ingest::QRELS);
        let mut set = PairSet::default();
        let mut train: BTreeMap<(String, String), Pair> = BTreeMap::new();
        let mut val: BTreeMap<(String, String), Pair> = BTreeMap::new();
        for batch in Dataset::open(&qrels_path)?.batches()? {
            let batch = batch?;
            let (qid, did) = (
                utf8(&batch, "qid", &qrels_path)?,
                utf8(&batch, "did", &qrels_path)?,
            );
            let relevance = column::<Int32Array>(&batch, "relevance", "int32", &qrels_path)?;
            for row in 0..batch.num_rows() {
                if relevance.value(row) <= 0 {
                    continue;
                }
                let Some((query_split, query)) = queries.get(qid.value(row)) else {
                    continue;
                };
                let Some(doc) = corpus.get(did.value(row)) else {
                    set.rejects.push(
                        Reject::new(
                            qrels_path.display().to_string(),
                            "unknown_did",
                            format!("positive `{}` is not in the corpus", did.value(row)),
                        )
                        .with_id(qid.value(row)),
                    );
                    continue;
                };
                let key = (qid.value(row).to_string(), did.value(row).to_string());
                let pair = Pair {
                    qid: key.0.clone(),
                    did: key.1.clone(),
                    query: query.clone(),
                    doc: doc.clone(),
                };
                match query_split == split {
                    true => train.insert(key, pair),
                    false => val.insert(key, pair),
                };
            }
        }
        set.train = train.into_values().collect();
        set.val = val.into_values().collect();
        if set.train.is_empty() {
            return Err(DualEncoderError::NoPairs {
                split: split.into(),
                path: ingest.to_path_buf(),
            });
        }
        Ok(set)
    }

    /// Every image id a pair shows.
    pub fn image_ids(&self) -> HashSet<&str> {
        self.train
            .iter()
            .chain(&self.val)
            .flat_map(|p| [&p.query.image_id, &p.doc.image_id])
            .filter_map(|id| id.as_deref())
            .collect()
    }

    /// Drops the pairs that show an image missing from `pixels`, rejecting each with the image's problem.
    pub fn drop_unusable(&mut self, pixels: &Pixels, source: &str) {
        let usable = |pair: &Pair, rejects: &mut Vec<Reject>| {
            for id in [&pair.query.image_id, &pair.doc.image_id]
                .into_iter()
                .flatten()
            {
                if let Some(reason) = pixels.problem(id) {
                    rejects.push(
                        Reject::new(source, "bad_image", format!("image `{id}`: {reason}"))
                            .with_id(&pair.qid),
                    );
                    return false;
                }
            }
            true
        };
        let rejects = &mut self.rejects;
        self.train.retain(|p| usable(p, rejects));
        self.val.retain(|p| usable(p, rejects));
    }
}

/// Preprocessed images by id, `(3, side, side)` values each, and why the others could not be used.
#[derive(Debug, Default)]
pub struct Pixels {
    by_id: HashMap<String, Vec<f32>>,
    problems: HashMap<String, String>,
}

impl Pixels {
    /// Decodes and preprocesses the `wanted` images of the images dataset at `path`, in parallel.
    pub fn read(
        path: &Path,
        wanted: &HashSet<&str>,
        processor: &ClipProcessor,
    ) -> Result<Self, DualEncoderError> {
        let mut encoded: Vec<(String, Vec<u8>)> = Vec::with_capacity(wanted.len());
        for batch in Dataset::open(path)?.batches_of(256)? {
            let batch = batch?;
            let ids = utf8(&batch, "image_id", path)?;
            let bytes = column::<LargeBinaryArray>(&batch, "bytes", "large_binary", path)?;
            for row in 0..batch.num_rows() {
                if wanted.contains(ids.value(row)) {
                    encoded.push((ids.value(row).to_string(), bytes.value(row).to_vec()));
                }
            }
        }
        let done: Vec<(String, Result<Vec<f32>, String>)> = encoded
            .into_par_iter()
            .map(|(id, bytes)| {
                let pixels = processor
                    .preprocess_bytes(&bytes)
                    .map(|chw| chw.data)
                    .map_err(|e| e.to_string());
                (id, pixels)
            })
            .collect();
        let mut pixels = Pixels::default();
        for (id, result) in done {
            match result {
                Ok(values) => {
                    pixels.by_id.insert(id, values);
                }
                Err(reason) => {
                    pixels.problems.insert(id, reason);
                }
            }
        }
        for id in wanted {
            if !pixels.by_id.contains_key(*id) && !pixels.problems.contains_key(*id) {
                pixels
                    .problems
                    .insert(id.to_string(), "not in the images dataset".into());
            }
        }
        Ok(pixels)
    }

    pub fn get(&self, id: &str) -> Option<&[f32]> {
        self.by_id.get(id).map(Vec::as_slice)
    }

    fn problem(&self, id: &str) -> Option<&str> {
        match self.by_id.contains_key(id) {
            true => None,
            false => Some(
                self.problems
                    .get(id)
                    .map_or("not in the images dataset", String::as_str),
            ),
        }
    }
}

fn read_corpus(path: &Path) -> Result<HashMap<String, Record>, DualEncoderError> {
    let mut corpus = HashMap::new();
    for batch in Dataset::open(path)?.batches()? {
        let batch = batch?;
        let did = utf8(&batch, "did", path)?;
        let columns = RecordColumns::of(&batch, path)?;
        for row in 0..batch.num_rows() {
            corpus.insert(did.value(row).to_string(), columns.record(row));
        }
    }
    Ok(corpus)
}

/// Queries of the two splits by qid, with their split.
fn read_queries(
    path: &Path,
    split: &str,
    val_split: Option<&str>,
) -> Result<HashMap<String, (String, Record)>, DualEncoderError> {
    let mut queries = HashMap::new();
    for batch in Dataset::open(path)?.batches()? {
        let batch = batch?;
        let qid = utf8(&batch, "qid", path)?;
        let splits = utf8(&batch, "split", path)?;
        let columns = RecordColumns::of(&batch, path)?;
        for row in 0..batch.num_rows() {
            let query_split = splits.value(row);
            if query_split == split || Some(query_split) == val_split {
                queries.insert(
                    qid.value(row).to_string(),
                    (query_split.to_string(), columns.record(row)),
                );
            }
        }
    }
    Ok(queries)
}

struct RecordColumns<'a> {
    modality: &'a StringArray,
    text: &'a StringArray,
    image_id: &'a StringArray,
}

impl<'a> RecordColumns<'a> {
    fn of(batch: &'a RecordBatch, path: &Path) -> Result<Self, DualEncoderError> {
        Ok(Self {
            modality: utf8(batch, "modality", path)?,
            text: utf8(batch, "text", path)?,
            image_id: utf8(batch, "image_id", path)?,
        })
    }

    /// The parts the modality names; the ingest stage guarantees they are present.
    fn record(&self, row: usize) -> Record {
        let modality = self.modality.value(row);
        let has = |part: &str| modality.split(',').any(|m| m.trim() == part);
        let value = |a: &StringArray| (!a.is_null(row)).then(|| a.value(row).to_string());
        Record {
            text: value(self.text).filter(|_| has("text")),
            image_id: value(self.image_id).filter(|_| has("image")),
        }
    }
}

fn utf8<'a>(
    batch: &'a RecordBatch,
    name: &str,
    path: &Path,
) -> Result<&'a StringArray, DualEncoderError> {
    column(batch, name, "utf8", path)
}

/// The column `name` of a batch of the dataset at `path` as `A`, or an input error naming the dataset.
fn column<'a, A: Array + 'static>(
    batch: &'a RecordBatch,
    name: &str,
    ty: &str,
    path: &Path,
) -> Result<&'a A, DualEncoderError> {
    columns::typed(batch, name, ty).map_err(|message| DualEncoderError::Input {
        path: path.to_path_buf(),
        message,
    })
}
