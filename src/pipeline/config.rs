//! Pipeline files: a `[pipeline]` table and one table per stage, in run order.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::PipelineError;

/// A parsed pipeline file.
#[derive(Debug, Clone)]
pub struct PipelineConfig {
    /// The file it came from (for messages).
    pub path: PathBuf,
    pub name: String,
    /// Where stage directories go; relative paths are relative to the current directory.
    pub workdir: PathBuf,
    pub seed: u64,
    /// How many stages may run at the same time (those that do not read each other); 1 runs them in file order.
    pub jobs: usize,
    /// How many training seeds the `per_seed` stages run over (see [`super::seeds`]); 1 runs each once.
    pub seeds: u32,
    /// Stages in file order, which is run order.
    pub stages: Vec<StageSpec>,
}

/// One stage table.
#[derive(Debug, Clone)]
pub struct StageSpec {
    /// The table name: the stage's directory under the workdir and its name in `--from`/`--until`.
    pub name: String,
    /// What the stage is (`kind = "train"`); defaults to the table name, so `[ingest]` is an ingest stage and
    /// `[train_cl] kind = "train"` is a second train stage.
    pub kind: String,
    /// The stage's own seed (`seed = N` in its table), instead of the pipeline's: everything random in the stage
    /// derives from it.
    pub seed: Option<u64>,
    /// `per_seed = true`: the stage runs once per seed when the pipeline runs several (see [`super::seeds`]).
    pub per_seed: bool,
    /// The table without the keys above, handed to the stage's factory.
    pub table: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PipelineTable {
    name: String,
    workdir: PathBuf,
    #[serde(default)]
    seed: u64,
    #[serde(default = "one_job")]
    jobs: usize,
    #[serde(default = "one_seed")]
    seeds: u32,
    /// The embedding store every embed stage shares unless its table names its own (see [`share_store`]).
    #[serde(default)]
    store: Option<PathBuf>,
}

fn one_job() -> usize {
    1
}

fn one_seed() -> u32 {
    1
}

impl PipelineConfig {
    pub fn load(path: &Path) -> Result<Self, PipelineError> {
        let text = std::fs::read_to_string(path).map_err(PipelineError::io(path))?;
        Self::parse(path, &text)
    }

    /// Parses pipeline text; `path` is used in messages only.
    pub fn parse(path: &Path, text: &str) -> Result<Self, PipelineError> {
        let bad = |message: String| PipelineError::Config {
            path: path.to_path_buf(),
            message,
        };
        let mut doc: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let head = doc
            .remove("pipeline")
            .ok_or_else(|| bad("missing the [pipeline] table (name, workdir, seed)".into()))?;
        let head: PipelineTable = head
            .try_into()
            .map_err(|e: toml::de::Error| bad(format!("[pipeline]: {}", e.message())))?;
        let mut stages = Vec::with_capacity(doc.len());
        for (name, value) in doc {
            let toml::Value::Table(mut table) = value else {
                return Err(bad(format!("`{name}` must be a stage table ([{name}])")));
            };
            check_name(&name).map_err(|m| bad(format!("[{name}]: {m}")))?;
            let kind = match table.remove("kind") {
                None => name.clone(),
                Some(toml::Value::String(kind)) => kind,
                Some(other) => {
                    return Err(bad(format!(
                        "[{name}]: `kind` must be a string, got {other}"
                    )))
                }
            };
            let seed = match table.remove("seed") {
                None => None,
                Some(toml::Value::Integer(seed)) if seed >= 0 => Some(seed as u64),
                Some(other) => {
                    return Err(bad(format!(
                        "[{name}]: `seed` must be a non-negative integer, got {other}"
                    )))
                }
            };
            let per_seed = match table.remove("per_seed") {
                None => false,
                Some(toml::Value::Boolean(per_seed)) => per_seed,
                Some(other) => {
                    return Err(bad(format!(
                        "[{name}]: `per_seed` must be true or false, got {other}"
                    )))
                }
            };
            stages.push(StageSpec {
                name,
                kind,
                seed,
                per_seed,
                table,
            });
        }
        if stages.is_empty() {
            return Err(bad("the pipeline has no stages".into()));
        }
        if let Some(store) = &head.store {
            share_store(&mut stages, store);
        }
        if head.jobs == 0 {
            return Err(bad("[pipeline]: `jobs` must be at least 1".into()));
        }
        if head.seeds == 0 {
            return Err(bad("[pipeline]: `seeds` must be at least 1".into()));
        }
        Ok(Self {
            path: path.to_path_buf(),
            name: head.name,
            workdir: head.workdir,
            seed: head.seed,
            jobs: head.jobs,
            seeds: head.seeds,
            stages,
        })
    }

    /// The position of a stage by name, or an error listing the names there are.
    pub fn position(&self, name: &str) -> Result<usize, PipelineError> {
        self.stages
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| {
                let names: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
                PipelineError::Config {
                    path: self.path.clone(),
                    message: format!("no stage named `{name}` (stages: {})", names.join(", ")),
                }
            })
    }
}

/// The stage kind whose table takes `store`.
const EMBED_KIND: &str = "embed";

/// `store = DIR` in `[pipeline]`: every embed stage without a `store` of its own gets this one, so that all the
/// pipeline's embed stages (and the pipelines of other runs that name the same directory) share one embedding
/// store. Written into the stage's table, it is part of the stage's configuration like a `store` given there.
fn share_store(stages: &mut [StageSpec], store: &Path) {
    for stage in stages.iter_mut().filter(|s| s.kind == EMBED_KIND) {
        stage
            .table
            .entry("store")
            .or_insert_with(|| toml::Value::String(store.to_string_lossy().into_owned()));
    }
}

/// Stage names become directory names, so they are kept to a portable alphabet.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err("stage names may use only a-z, 0-9, '_' and '-'".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stages_keep_file_order_and_kinds_default_to_names() {
        let text = r#"
            [pipeline]
            name = "t"
            workdir = "runs/t"
            seed = 7
            [zeta]
            x = 1
            [alpha]
            kind = "zeta"
            seed = 11
            per_seed = true
        "#;
        let p = PipelineConfig::parse(Path::new("t.toml"), text).unwrap();
        assert_eq!(p.seed, 7);
        assert_eq!(p.jobs, 1);
        assert_eq!(p.seeds, 1);
        let names: Vec<_> = p
            .stages
            .iter()
            .map(|s| (s.name.as_str(), s.kind.as_str()))
            .collect();
        assert_eq!(names, [("zeta", "zeta"), ("alpha", "zeta")]);
        assert!(!p.stages[1].table.contains_key("kind"));
        assert_eq!(
            (p.stages[0].seed, p.stages[0].per_seed),
            (None, false),
            "the pipeline's seed, run once"
        );
        assert_eq!((p.stages[1].seed, p.stages[1].per_seed), (Some(11), true));
        assert!(
            p.stages[1].table.is_empty(),
            "`seed` and `per_seed` are the runner's keys, not the stage's"
        );
    }

    #[test]
    fn the_pipeline_store_is_every_embed_stage_s_unless_it_names_its_own() {
        let text = r#"
            [pipeline]
            name = "t"
            workdir = "runs/t"
            store = "/data/store"
            [embed]
            from = "ingest"
            [embed_text]
            kind = "embed"
            store = "/other"
            [mine]
            k = 3
        "#;
        let p = PipelineConfig::parse(Path::new("t.toml"), text).unwrap();
        let store = |i: usize| p.stages[i].table.get("store").and_then(|v| v.as_str());
        assert_eq!(store(0), Some("/data/store"));
        assert_eq!(store(1), Some("/other"), "the stage's own key wins");
        assert_eq!(store(2), None, "only embed stages take a store");
    }

    #[test]
    fn errors_name_the_file_and_problem() {
        let error = |text: &str| {
            PipelineConfig::parse(Path::new("p.toml"), text)
                .unwrap_err()
                .to_string()
        };
        let err = error("[pipeline]\nname='x'\n");
        assert!(
            err.starts_with("p.toml: [pipeline]: missing field `workdir`"),
            "{err}"
        );
        let err = error("[pipeline]\nname='x'\nworkdir='w'\n[Bad]\n");
        assert!(err.contains("[Bad]: stage names"), "{err}");
        let err = error("[pipeline]\nname='x'\nworkdir='w'\njobs=0\n[a]\n");
        assert!(err.contains("`jobs` must be at least 1"), "{err}");
        let err = error("[pipeline]\nname='x'\nworkdir='w'\nseeds=0\n[a]\n");
        assert!(err.contains("`seeds` must be at least 1"), "{err}");
        let err = error("[pipeline]\nname='x'\nworkdir='w'\n[a]\nper_seed='yes'\n");
        assert!(
            err.contains("[a]: `per_seed` must be true or false"),
            "{err}"
        );
        let err = error("[pipeline]\nname='x'\nworkdir='w'\n[a]\nseed=-1\n");
        assert!(
            err.contains("[a]: `seed` must be a non-negative integer"),
            "{err}"
        );
        let err = error("[pipeline\n");
        assert!(err.contains("line 1"), "{err}");
    }
}
