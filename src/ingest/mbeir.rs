//! The M-BEIR on-disk format: query and pool jsonl files, qrels text files, and an instructions TSV.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::collect::Collection;
use super::instructions::Instructions;
use super::lines::read_lines;
use super::records::{mbeir_task, Doc, Modality, Origin, Qrel, Query};
use super::{relative, IngestError};

/// Where the files are, as globs relative to the root. The defaults are M-BEIR's layout.
#[derive(Debug, Clone)]
pub struct Layout {
    pub queries: String,
    pub pool: String,
    pub qrels: String,
    pub instructions: String,
}

impl Layout {
    /// M-BEIR's layout, for one split or (None) all of them.
    pub fn mbeir(split: Option<&str>) -> Self {
        let split = split.unwrap_or("*");
        Self {
            queries: format!("query/{split}/*.jsonl"),
            pool: "cand_pool/local/*.jsonl".into(),
            qrels: format!("qrels/{split}/*.txt"),
            instructions: "instructions/query_instructions.tsv".into(),
        }
    }
}

/// The input files a layout names under a root, sorted; the instructions file is optional.
pub struct Files {
    pub queries: Vec<PathBuf>,
    pub pool: Vec<PathBuf>,
    pub qrels: Vec<PathBuf>,
    pub instructions: Option<PathBuf>,
}

impl Files {
    pub fn resolve(root: &Path, layout: &Layout) -> Result<Self, IngestError> {
        let instructions = root.join(&layout.instructions);
        Ok(Self {
            queries: glob_files(root, &layout.queries)?,
            pool: glob_files(root, &layout.pool)?,
            qrels: glob_files(root, &layout.qrels)?,
            instructions: instructions.is_file().then_some(instructions),
        })
    }

    pub fn all(&self) -> Vec<PathBuf> {
        let mut all: Vec<PathBuf> = self
            .queries
            .iter()
            .chain(&self.pool)
            .chain(&self.qrels)
            .cloned()
            .collect();
        all.extend(self.instructions.clone());
        all
    }
}

/// Files matching `pattern` under `root`, sorted.
pub fn glob_files(root: &Path, pattern: &str) -> Result<Vec<PathBuf>, IngestError> {
    let full = root.join(pattern);
    let full = full.to_string_lossy();
    let paths =
        glob::glob(&full).map_err(|e| IngestError::Config(format!("bad glob `{pattern}`: {e}")))?;
    let mut files: Vec<PathBuf> = paths
        .filter_map(Result::ok)
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

#[derive(Deserialize)]
struct QueryLine {
    qid: Option<String>,
    #[serde(default)]
    query_txt: Option<String>,
    #[serde(default)]
    query_img_path: Option<String>,
    query_modality: Option<String>,
    #[serde(default)]
    pos_cand_list: Vec<String>,
    #[serde(default)]
    task_id: Option<i32>,
}

#[derive(Deserialize)]
struct PoolLine {
    did: Option<String>,
    #[serde(default)]
    txt: Option<String>,
    #[serde(default)]
    img_path: Option<String>,
    modality: Option<String>,
}

/// Reads all M-BEIR files into `out`. Pool first, so that queries can be checked against it.
pub fn read(
    root: &Path,
    files: &Files,
    seed: u64,
    out: &mut Collection,
) -> Result<(), IngestError> {
    let instructions = match &files.instructions {
        Some(path) => Instructions::load(path, &relative(root, path))?,
        None => {
            tracing::warn!(
                "no instructions file under {}: queries get no instruction",
                root.display()
            );
            Instructions::default()
        }
    };
    for path in &files.pool {
        read_pool(root, path, out)?;
    }
    for path in &files.queries {
        read_queries(root, path, seed, &instructions, out)?;
    }
    for path in &files.qrels {
        read_qrels(root, path, out)?;
    }
    Ok(())
}

/// `mbeir_<name>_cand_pool.jsonl` -> `<name>`; `mbeir_<name>_<split>.jsonl` -> `<name>`.
fn dataset_name(path: &Path, suffix: &str) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.strip_prefix("mbeir_").unwrap_or(&stem);
    stem.strip_suffix(suffix).unwrap_or(stem).to_string()
}

/// The split a query file belongs to: the name of its directory.
fn split_of(path: &Path) -> String {
    path.parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown".into())
}

fn read_pool(root: &Path, path: &Path, out: &mut Collection) -> Result<(), IngestError> {
    let dataset = dataset_name(path, "_cand_pool");
    each_json_line(
        root,
        path,
        out,
        |row: PoolLine, origin, key, out| match pool_doc(row, &dataset, origin.clone()) {
            Ok(doc) => out.add_doc(doc),
            Err((id, reason, detail)) => {
                out.reject_line(id.as_deref().unwrap_or(&key), &origin, reason, detail)
            }
        },
    )
}

/// Reads a jsonl file of `T` rows, rejecting lines that are not UTF-8 or not a `T`, and hands every other row to
/// `f` with its origin and the shard key for rejects that carry no id.
fn each_json_line<T: serde::de::DeserializeOwned>(
    root: &Path,
    path: &Path,
    out: &mut Collection,
    mut f: impl FnMut(T, Origin, String, &mut Collection),
) -> Result<(), IngestError> {
    let file = relative(root, path);
    for line in read_lines(path)? {
        let origin = Origin {
            file: file.clone(),
            line: line.number,
        };
        let key = format!("{file}:{}", line.number);
        let parsed = line.text.map_err(|e| ("invalid_utf8", e)).and_then(|t| {
            serde_json::from_str::<T>(&t).map_err(|e| ("malformed_json", e.to_string()))
        });
        match parsed {
            Ok(row) => f(row, origin, key, out),
            Err((reason, detail)) => out.reject_line(&key, &origin, reason, detail),
        }
    }
    Ok(())
}

type LineProblem = (Option<String>, &'static str, String);

fn pool_doc(row: PoolLine, dataset: &str, origin: Origin) -> Result<Doc, LineProblem> {
    let did =
        non_empty(row.did).ok_or((None, "missing_id", "the line has no `did`".to_string()))?;
    let modality = parse_modality(row.modality.as_deref())
        .map_err(|e| (Some(did.clone()), "unknown_modality", e))?;
    let text = non_empty(row.txt).filter(|_| modality.has_text());
    let image = non_empty(row.img_path).filter(|_| modality.has_image());
    check_parts(modality, text.is_some(), image.is_some())
        .map_err(|e| (Some(did.clone()), "modality_mismatch", e))?;
    Ok(Doc {
        did,
        modality,
        text,
        image,
        dataset: dataset.to_string(),
        origin,
    })
}

fn read_queries(
    root: &Path,
    path: &Path,
    seed: u64,
    instructions: &Instructions,
    out: &mut Collection,
) -> Result<(), IngestError> {
    let split = split_of(path);
    let dataset = dataset_name(path, &format!("_{split}"));
    each_json_line(root, path, out, |row: QueryLine, origin, key, out| {
        let positives = row.pos_cand_list.clone();
        match query_of(row, &dataset, &split, origin.clone(), out) {
            Ok(mut query) => {
                let cand = positives.iter().find_map(|did| out.doc_modality(did));
                query.instruction = instructions.pick(seed, &query.qid, query.modality, cand);
                for did in positives {
                    out.add_qrel(Qrel {
                        qid: query.qid.clone(),
                        did,
                        relevance: 1,
                        origin: origin.clone(),
                    });
                }
                out.add_query(query);
            }
            Err((id, reason, detail)) => {
                out.reject_line(id.as_deref().unwrap_or(&key), &origin, reason, detail)
            }
        }
    })
}

fn query_of(
    row: QueryLine,
    dataset: &str,
    split: &str,
    origin: Origin,
    out: &Collection,
) -> Result<Query, LineProblem> {
    let qid =
        non_empty(row.qid).ok_or((None, "missing_id", "the line has no `qid`".to_string()))?;
    let (text, image) = (non_empty(row.query_txt), non_empty(row.query_img_path));
    if text.is_none() && image.is_none() {
        return Err((
            Some(qid),
            "empty_query",
            "the query has neither text nor an image".into(),
        ));
    }
    let modality = parse_modality(row.query_modality.as_deref())
        .map_err(|e| (Some(qid.clone()), "unknown_modality", e))?;
    let text = text.filter(|_| modality.has_text());
    let image = image.filter(|_| modality.has_image());
    check_parts(modality, text.is_some(), image.is_some())
        .map_err(|e| (Some(qid.clone()), "modality_mismatch", e))?;
    let task_id = row.task_id.or_else(|| {
        row.pos_cand_list
            .iter()
            .find_map(|did| out.doc_modality(did))
            .map(|cand| mbeir_task(modality, cand).0)
    });
    Ok(Query {
        qid,
        modality,
        text,
        image,
        instruction: None,
        task_id,
        dataset: dataset.to_string(),
        split: split.to_string(),
        origin,
    })
}

fn read_qrels(root: &Path, path: &Path, out: &mut Collection) -> Result<(), IngestError> {
    let file = relative(root, path);
    for line in read_lines(path)? {
        let origin = Origin {
            file: file.clone(),
            line: line.number,
        };
        let key = format!("{file}:{}", line.number);
        let text = match line.text {
            Ok(t) => t,
            Err(e) => {
                out.reject_line(&key, &origin, "invalid_utf8", e);
                continue;
            }
        };
        let cols: Vec<&str> = text.split_whitespace().collect();
        let relevance = cols.get(3).map(|r| r.parse::<i32>());
        match (cols.len() >= 4, relevance) {
            (true, Some(Ok(relevance))) => out.add_qrel(Qrel {
                qid: cols[0].to_string(),
                did: cols[2].to_string(),
                relevance,
                origin,
            }),
            _ => out.reject_line(
                cols.first().copied().unwrap_or(&key),
                &origin,
                "malformed_qrel",
                format!("expected `qid 0 did relevance [task_id]`, got `{text}`"),
            ),
        }
    }
    Ok(())
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.trim().is_empty())
}

fn parse_modality(m: Option<&str>) -> Result<Modality, String> {
    m.ok_or_else(|| "the line has no modality".to_string())?
        .parse()
}

/// A record must carry what its modality says. (Parts its modality does not name are dropped before this.)
fn check_parts(modality: Modality, has_text: bool, has_image: bool) -> Result<(), String> {
    if modality.has_text() && !has_text {
        return Err(format!("modality `{modality}` but no text"));
    }
    if modality.has_image() && !has_image {
        return Err(format!("modality `{modality}` but no image path"));
    }
    Ok(())
}
