//! What M-BEIR's file names say, and which candidate pool each query is searched against.
//!
//! The published download names its files by dataset, task and split, but not uniformly:
//!
//! ```text
//! query/train/mbeir_cirr_train.jsonl                   one file per dataset, its tasks mixed (task_id per line)
//! query/union_train/mbeir_union_up_train.jsonl         the train files again, concatenated and upsampled
//! query/test/mbeir_cirr_task7_test.jsonl               val and test: one file per dataset and task
//! cand_pool/local/mbeir_cirr_task7_cand_pool.jsonl     one pool per dataset and task, shared by every split
//! cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl   ... except MSCOCO's, which serve one split
//! cand_pool/global/mbeir_union_train_cand_pool.jsonl   every train query's candidates, all datasets together
//! qrels/train/mbeir_cirr_train_qrels.txt               per dataset for train, per task for val and test
//! ```
//!
//! So a query's pool is found from its dataset, its task and its split, never from its file name alone: the
//! pool `<dataset>_task<N>_<split>` if there is one, else `<dataset>_task<N>`, else the pool named like the
//! query file (the layout of umrank's demo world and of hand-made sets), else the part of the split's global
//! pool that holds the query's dataset and the task's candidate modality. Qids restart at 1 in every split,
//! so a query's id carries its split (`test/9:1`).

use std::collections::BTreeSet;
use std::path::Path;

use crate::modality::Modality;

/// The split a query or qrels file belongs to: the name of its directory, with the union directories
/// (`union_train`, `union_val`) counted as the split they repeat.
pub fn split_of(path: &Path) -> String {
    let dir = path
        .parent()
        .and_then(Path::file_name)
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "unknown".into());
    match dir.strip_prefix("union_") {
        Some(split) if !split.is_empty() => split.to_string(),
        _ => dir,
    }
}

/// The id a query gets: its split and M-BEIR's qid, which is unique only within a split.
pub fn qualified_qid(split: &str, qid: &str) -> String {
    format!("{split}/{qid}")
}

/// The part of a name between `mbeir_` and `suffix`: `mbeir_cirr_task7_cand_pool.jsonl` -> `cirr_task7`.
fn middle(path: &Path, suffix: &str) -> String {
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let stem = stem.strip_prefix("mbeir_").unwrap_or(&stem);
    stem.strip_suffix(suffix).unwrap_or(stem).to_string()
}

/// A name split into dataset, task and split: `mscoco_task0_test` -> (`mscoco`, 0, `test`), `cirr` -> (`cirr`,
/// none, none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Name {
    pub dataset: String,
    pub task: Option<i32>,
    pub split: Option<String>,
}

impl Name {
    pub fn parse(name: &str) -> Self {
        let Some(at) = name.find("_task") else {
            return Self {
                dataset: name.to_string(),
                task: None,
                split: None,
            };
        };
        let rest = &name[at + "_task".len()..];
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let task = rest[..digits].parse().ok();
        let after = &rest[digits..];
        match (task, after.strip_prefix('_')) {
            (Some(task), Some(split)) if !split.is_empty() => Self {
                dataset: name[..at].to_string(),
                task: Some(task),
                split: Some(split.to_string()),
            },
            (Some(task), None) if after.is_empty() => Self {
                dataset: name[..at].to_string(),
                task: Some(task),
                split: None,
            },
            _ => Self {
                dataset: name.to_string(),
                task: None,
                split: None,
            },
        }
    }
}

/// A query file: its split, the name in its file name, and what that name says.
#[derive(Debug, Clone)]
pub struct QueryFile {
    pub split: String,
    /// `cirr` for `mbeir_cirr_train.jsonl`, `cirr_task7` for `mbeir_cirr_task7_test.jsonl`.
    pub name: String,
    pub parsed: Name,
    /// The union files (`mbeir_union_up_train.jsonl`) mix datasets: each line's dataset is its qid's.
    pub union: bool,
}

impl QueryFile {
    pub fn of(path: &Path) -> Self {
        let split = split_of(path);
        let name = middle(path, &format!("_{split}"));
        let union = name == "union" || name.starts_with("union_");
        Self {
            parsed: Name::parse(&name),
            split,
            name,
            union,
        }
    }
}

/// A candidate pool file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolFile {
    /// A pool of one dataset (and usually one task), named by its file: `cirr_task7`, `mscoco_task0_test`.
    Local(String),
    /// `mbeir_union_<split>_cand_pool.jsonl`: the candidates of every query of a split, all datasets together.
    Global { split: String },
}

impl PoolFile {
    pub fn of(path: &Path) -> Self {
        let name = middle(path, "_cand_pool");
        match name.strip_prefix("union_") {
            Some(split) if !split.is_empty() => Self::Global {
                split: split.to_string(),
            },
            _ => Self::Local(name),
        }
    }

    /// Local pools are read before global ones, so that a document listed in both belongs to its local pool.
    pub fn is_global(&self) -> bool {
        matches!(self, Self::Global { .. })
    }
}

/// The pool key of a global pool's document or query: the split's pool, narrowed to one dataset (named by the
/// id prefix M-BEIR gives both qids and dids, `9:` in `9:1`) and one candidate modality, which is what one
/// dataset's task draws its candidates from.
pub fn global_slice(split: &str, dataset: &str, modality: Modality) -> String {
    format!("union_{split}/{dataset}/{modality}")
}

/// The id prefix that names a record's dataset in M-BEIR (`9` in `9:1`), if the id has one.
pub fn dataset_prefix(id: &str) -> Option<&str> {
    id.split_once(':').map(|(prefix, _)| prefix)
}

/// The pool names the read files offer, and the splits that have a global pool.
#[derive(Debug, Default)]
pub struct Pools {
    local: BTreeSet<String>,
    global: BTreeSet<String>,
}

/// What a query's pool is looked up by.
pub struct PoolQuery<'a> {
    pub dataset: &'a str,
    /// The query file's name (`cirr`, `cirr_task7`, `world_t2i`).
    pub file_name: &'a str,
    pub task: Option<i32>,
    pub split: &'a str,
    /// The dataset label of the query's id prefix, for the global pool.
    pub prefix_label: Option<&'a str>,
    pub candidate_modality: Option<Modality>,
}

impl Pools {
    pub fn new(files: &[PoolFile]) -> Self {
        let mut pools = Self::default();
        for file in files {
            match file {
                PoolFile::Local(name) => pools.local.insert(name.clone()),
                PoolFile::Global { split } => pools.global.insert(split.clone()),
            };
        }
        pools
    }

    /// The query's pool key, or the names looked for (for the reject's detail).
    pub fn resolve(&self, query: &PoolQuery) -> Result<String, Vec<String>> {
        let mut tried = Vec::new();
        if let Some(task) = query.task {
            tried.push(format!("{}_task{task}_{}", query.dataset, query.split));
            tried.push(format!("{}_task{task}", query.dataset));
        }
        tried.push(query.file_name.to_string());
        if let Some(found) = tried.iter().find(|name| self.local.contains(*name)) {
            return Ok(found.clone());
        }
        if self.global.contains(query.split) {
            if let (Some(label), Some(modality)) = (query.prefix_label, query.candidate_modality) {
                return Ok(global_slice(query.split, label, modality));
            }
        }
        tried.push(format!("union_{} (global)", query.split));
        Err(tried)
    }
}

/// The candidate modality of an M-BEIR task id.
pub fn candidate_modality(task: i32) -> Option<Modality> {
    use Modality::*;
    [Text, Image, ImageText]
        .into_iter()
        .flat_map(|query| [Text, Image, ImageText].map(|cand| (query, cand)))
        .find(|&(query, cand)| crate::modality::mbeir_task(query, cand).0 == task)
        .map(|(_, cand)| cand)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_dataset_task_and_split() {
        let parsed = Name::parse("mscoco_task0_test");
        assert_eq!(parsed.dataset, "mscoco");
        assert_eq!(parsed.task, Some(0));
        assert_eq!(parsed.split.as_deref(), Some("test"));
        assert_eq!(Name::parse("cirr_task7").task, Some(7));
        assert_eq!(Name::parse("cirr").task, None);
        assert_eq!(Name::parse("world_t2i").dataset, "world_t2i");
        assert_eq!(Name::parse("odd_taskx").dataset, "odd_taskx");
    }

    #[test]
    fn files_name_their_split_and_pool() {
        let train = QueryFile::of(Path::new("query/train/mbeir_cirr_train.jsonl"));
        assert_eq!(
            (train.split.as_str(), train.name.as_str()),
            ("train", "cirr")
        );
        let union = QueryFile::of(Path::new("query/union_train/mbeir_union_up_train.jsonl"));
        assert_eq!(union.split, "train");
        assert!(union.union);
        let test = QueryFile::of(Path::new("query/test/mbeir_mscoco_task3_test.jsonl"));
        assert_eq!(test.parsed.task, Some(3));
        assert_eq!(
            PoolFile::of(Path::new(
                "cand_pool/global/mbeir_union_train_cand_pool.jsonl"
            )),
            PoolFile::Global {
                split: "train".into()
            }
        );
        assert_eq!(
            PoolFile::of(Path::new(
                "cand_pool/local/mbeir_mscoco_task0_test_cand_pool.jsonl"
            )),
            PoolFile::Local("mscoco_task0_test".into())
        );
    }

    #[test]
    fn pools_resolve_by_dataset_task_and_split() {
        let pools = Pools::new(&[
            PoolFile::Local("cirr_task7".into()),
            PoolFile::Local("mscoco_task0_test".into()),
            PoolFile::Local("world_t2i".into()),
            PoolFile::Global {
                split: "train".into(),
            },
        ]);
        let query = |dataset, file_name, task, split| PoolQuery {
            dataset,
            file_name,
            task,
            split,
            prefix_label: Some("mscoco"),
            candidate_modality: task.and_then(candidate_modality),
        };
        assert_eq!(
            pools.resolve(&query("cirr", "cirr", Some(7), "train")),
            Ok("cirr_task7".into())
        );
        assert_eq!(
            pools.resolve(&query("mscoco", "mscoco_task0", Some(0), "test")),
            Ok("mscoco_task0_test".into())
        );
        assert_eq!(
            pools.resolve(&query("mscoco", "mscoco", Some(0), "train")),
            Ok("union_train/mscoco/image".into())
        );
        assert_eq!(
            pools.resolve(&query("world_t2i", "world_t2i", Some(0), "val")),
            Ok("world_t2i".into())
        );
        assert!(pools
            .resolve(&query("mscoco", "mscoco", Some(0), "val"))
            .is_err());
    }
}
