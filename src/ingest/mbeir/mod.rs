//! The M-BEIR on-disk format, as the TIGER-Lab/M-BEIR download publishes it: query and pool jsonl files, qrels
//! text files, and an instructions TSV. [`names`] says how its file names map to splits, datasets, tasks and
//! pools.

pub mod names;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::Value;

use self::names::{
    candidate_modality, dataset_prefix, global_slice, qualified_qid, split_of, PoolFile, PoolQuery,
    Pools, QueryFile,
};
use super::collect::{Added, Collection};
use super::instructions::Instructions;
use super::lines::read_lines;
use super::records::{mbeir_task, Doc, Modality, Origin, Qrel, Query};
use super::{relative, IngestError};

/// Where the files are, as globs relative to the root (each field one or more globs, their matches merged).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub queries: Vec<String>,
    pub pool: Vec<String>,
    pub qrels: Vec<String>,
    pub instructions: String,
}

impl Layout {
    /// M-BEIR's layout, for one split or (None) train, val and test.
    ///
    /// Queries come from the per-dataset train files and the per-task val and test files; the union
    /// directories (`query/union_train/`, `query/union_val/`) repeat those queries, upsampled, and are not read.
    /// Pools: every local pool, and the global pools of the train and val splits, because MSCOCO's local pools
    /// serve its test queries only: its train and val queries find their candidates in `mbeir_union_train` and
    /// `mbeir_union_val` (a document listed in both a local and a global pool is kept once, in its local pool).
    /// The global test pool (M-BEIR's "global" evaluation over all 5.6M candidates) is not read by default.
    pub fn mbeir(split: Option<&str>) -> Self {
        let splits: Vec<&str> = match split {
            Some(split) => vec![split],
            None => vec!["train", "val", "test"],
        };
        let mut pool = vec!["cand_pool/local/*.jsonl".to_string()];
        pool.extend(
            splits
                .iter()
                .filter(|split| **split != "test")
                .map(|split| format!("cand_pool/global/mbeir_union_{split}_cand_pool.jsonl")),
        );
        Self {
            queries: splits
                .iter()
                .map(|s| format!("query/{s}/*.jsonl"))
                .collect(),
            pool,
            qrels: splits.iter().map(|s| format!("qrels/{s}/*.txt")).collect(),
            instructions: "instructions/query_instructions.tsv".into(),
        }
    }
}

/// The input files a layout names under a root; the instructions file is optional.
pub struct Files {
    pub queries: Vec<PathBuf>,
    /// Local pools first, then global ones (a document listed in both belongs to its local pool).
    pub pool: Vec<PathBuf>,
    pub qrels: Vec<PathBuf>,
    pub instructions: Option<PathBuf>,
}

impl Files {
    pub fn resolve(root: &Path, layout: &Layout) -> Result<Self, IngestError> {
        let instructions = root.join(&layout.instructions);
        let mut pool = glob_all(root, &layout.pool)?;
        pool.sort_by_key(|path| PoolFile::of(path).is_global());
        Ok(Self {
            queries: glob_all(root, &layout.queries)?,
            pool,
            qrels: glob_all(root, &layout.qrels)?,
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

/// Files matching any of `patterns` under `root`, sorted, each once.
fn glob_all(root: &Path, patterns: &[String]) -> Result<Vec<PathBuf>, IngestError> {
    let mut files = Vec::new();
    for pattern in patterns {
        files.extend(glob_files(root, pattern)?);
    }
    files.sort();
    files.dedup();
    Ok(files)
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

/// How the records are read: the seed that picks each query's instruction, and the tasks kept.
#[derive(Debug, Clone)]
pub struct ReadOptions {
    pub seed: u64,
    /// Only queries of these M-BEIR task ids; all when `None`.
    pub tasks: Option<Vec<i32>>,
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
    pos_cand_list: Vec<Value>,
    #[serde(default)]
    neg_cand_list: Vec<Value>,
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

/// Everything the readers share: where files are, what their names say, and how datasets are labelled.
struct Reader<'a> {
    root: &'a Path,
    options: &'a ReadOptions,
    instructions: Instructions,
    pools: Pools,
}

/// Reads all M-BEIR files into `out`. Pools first, so that queries can be checked against them.
pub fn read(
    root: &Path,
    files: &Files,
    options: &ReadOptions,
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
    let pool_files: Vec<PoolFile> = files.pool.iter().map(|p| PoolFile::of(p)).collect();
    let reader = Reader {
        root,
        options,
        instructions,
        pools: Pools::new(&pool_files),
    };
    for (path, pool) in files.pool.iter().zip(&pool_files) {
        reader.read_pool(path, pool, out)?;
    }
    for path in &files.queries {
        reader.read_queries(path, out)?;
    }
    for path in &files.qrels {
        read_qrels(root, path, out)?;
    }
    Ok(())
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

impl Reader<'_> {
    /// The dataset a record of a mixed file belongs to, from its id's prefix: the name the instructions give
    /// that dataset id (lower case, as file names spell it), else the prefix itself.
    fn dataset_label(&self, id: &str) -> String {
        let Some(prefix) = dataset_prefix(id) else {
            return "unknown".into();
        };
        self.instructions
            .dataset_name(prefix)
            .map(str::to_lowercase)
            .unwrap_or_else(|| prefix.to_string())
    }

    fn read_pool(
        &self,
        path: &Path,
        pool: &PoolFile,
        out: &mut Collection,
    ) -> Result<(), IngestError> {
        each_json_line(
            self.root,
            path,
            out,
            |row: PoolLine, origin, key, out| match self.pool_doc(row, pool, origin.clone()) {
                Ok(doc) => {
                    out.add_doc(doc);
                }
                Err((id, reason, detail)) => {
                    out.reject_line(id.as_deref().unwrap_or(&key), &origin, reason, detail)
                }
            },
        )
    }

    fn pool_doc(&self, row: PoolLine, pool: &PoolFile, origin: Origin) -> Result<Doc, LineProblem> {
        let did =
            non_empty(row.did).ok_or((None, "missing_id", "the line has no `did`".to_string()))?;
        let modality = parse_modality(row.modality.as_deref())
            .map_err(|e| (Some(did.clone()), "unknown_modality", e))?;
        let text = non_empty(row.txt).filter(|_| modality.has_text());
        let image = non_empty(row.img_path).filter(|_| modality.has_image());
        check_parts(modality, text.is_some(), image.is_some())
            .map_err(|e| (Some(did.clone()), "modality_mismatch", e))?;
        let (dataset, pool) = match pool {
            PoolFile::Local(name) => (names::Name::parse(name).dataset, name.clone()),
            PoolFile::Global { split } => {
                let label = self.dataset_label(&did);
                let slice = global_slice(split, &label, modality);
                (label, slice)
            }
        };
        Ok(Doc {
            did,
            modality,
            text,
            image,
            dataset,
            pool,
            origin,
        })
    }

    fn read_queries(&self, path: &Path, out: &mut Collection) -> Result<(), IngestError> {
        let file = QueryFile::of(path);
        each_json_line(self.root, path, out, |row: QueryLine, origin, key, out| {
            let judged = Judged::of(&row);
            match self.query_of(row, &file, origin.clone(), out) {
                Ok(Some(query)) => add_query(out, query, judged),
                Ok(None) => {}
                Err((id, reason, detail)) => {
                    out.reject_line(id.as_deref().unwrap_or(&key), &origin, reason, detail)
                }
            }
        })
    }

    /// The query of a line, or `None` when its task is not among the ones asked for.
    fn query_of(
        &self,
        row: QueryLine,
        file: &QueryFile,
        origin: Origin,
        out: &mut Collection,
    ) -> Result<Option<Query>, LineProblem> {
        let raw =
            non_empty(row.qid).ok_or((None, "missing_id", "the line has no `qid`".to_string()))?;
        let qid = qualified_qid(&file.split, &raw);
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
        let task_id = task_of(&row.task_id, file, &row.pos_cand_list, modality, out)
            .map_err(|e| (Some(qid.clone()), "task_mismatch", e))?;
        if let Some(tasks) = &self.options.tasks {
            if !task_id.is_some_and(|task| tasks.contains(&task)) {
                out.skip_query(qid);
                return Ok(None);
            }
        }
        let dataset = if file.union {
            self.dataset_label(&raw)
        } else {
            file.parsed.dataset.clone()
        };
        let cand = task_id.and_then(candidate_modality).or_else(|| {
            dids(&row.pos_cand_list)
                .iter()
                .find_map(|did| out.doc_modality(did))
        });
        let prefix_label = dataset_prefix(&raw).map(|_| self.dataset_label(&raw));
        let pool = self
            .pools
            .resolve(&PoolQuery {
                dataset: &dataset,
                file_name: &file.name,
                task: task_id,
                split: &file.split,
                prefix_label: prefix_label.as_deref(),
                candidate_modality: cand,
            })
            .map_err(|tried| {
                (
                    Some(qid.clone()),
                    "no_pool",
                    format!(
                        "no candidate pool for dataset `{dataset}`, task {}, split `{}` among the pool files read (looked for {})",
                        task_id.map_or("unknown".into(), |t| t.to_string()),
                        file.split,
                        tried.join(", ")
                    ),
                )
            })?;
        Ok(Some(Query {
            instruction: self
                .instructions
                .pick(self.options.seed, &raw, modality, cand),
            qid,
            modality,
            text,
            image,
            task_id,
            dataset,
            pool,
            split: file.split.clone(),
            origin,
        }))
    }
}

/// The documents a query line judges: its positives (relevance 1) and listed negatives (relevance 0).
struct Judged {
    positives: Vec<String>,
    negatives: Vec<String>,
}

impl Judged {
    fn of(row: &QueryLine) -> Self {
        Self {
            positives: dids(&row.pos_cand_list),
            negatives: dids(&row.neg_cand_list),
        }
    }
}

/// Adds a query with its judgements; a query that conflicts with an earlier one of the same id adds neither.
fn add_query(out: &mut Collection, query: Query, judged: Judged) {
    let mut defining = judged.positives.clone();
    defining.extend(judged.negatives.iter().map(|did| format!("-{did}")));
    let (qid, origin) = (query.qid.clone(), query.origin.clone());
    if out.add_query(query, &defining) == Added::Conflict {
        return;
    }
    let judgements = judged
        .positives
        .into_iter()
        .map(|did| (did, 1))
        .chain(judged.negatives.into_iter().map(|did| (did, 0)));
    for (did, relevance) in judgements {
        out.add_qrel(Qrel {
            qid: qid.clone(),
            did,
            relevance,
            origin: origin.clone(),
        });
    }
}

/// The dids of a candidate list, whose entries M-BEIR writes as strings (the dataset card shows `{"did": ..}`
/// objects; both are read).
fn dids(list: &[Value]) -> Vec<String> {
    list.iter()
        .filter_map(|entry| match entry {
            Value::String(did) => Some(did.clone()),
            Value::Object(map) => map.get("did").and_then(Value::as_str).map(str::to_string),
            _ => None,
        })
        .filter(|did| !did.trim().is_empty())
        .collect()
}

/// A query's task: the line's `task_id`, else the file name's, else the pair of its modality and its first
/// positive's. A line whose task contradicts its file name is refused.
fn task_of(
    line: &Option<i32>,
    file: &QueryFile,
    positives: &[Value],
    modality: Modality,
    out: &Collection,
) -> Result<Option<i32>, String> {
    if let (Some(line), Some(named)) = (line, file.parsed.task) {
        if *line != named {
            return Err(format!(
                "task_id {line} in a file named for task {named} ({})",
                file.name
            ));
        }
    }
    Ok(line.or(file.parsed.task).or_else(|| {
        dids(positives)
            .iter()
            .find_map(|did| out.doc_modality(did))
            .map(|cand| mbeir_task(modality, cand).0)
    }))
}

fn read_qrels(root: &Path, path: &Path, out: &mut Collection) -> Result<(), IngestError> {
    let file = relative(root, path);
    let split = split_of(path);
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
                qid: qualified_qid(&split, cols[0]),
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
