//! Running the stages that depend on the training seed over several seeds, so that a pipeline can tell a finding
//! from the noise of one training run.
//!
//! With `seeds = N` in `[pipeline]` (or `--seeds N`), the stages marked `per_seed = true` run N times and every
//! other stage once. Seed 1 of a per-seed stage is the stage itself, under its own name and with the seed a
//! single-seed run gives it, so its outputs and fingerprint are a single-seed run's: a run over N seeds reuses a
//! single-seed run's outputs as its seed 1, and `seeds = 1` is the single-seed pipeline unchanged. Seed k > 1 is
//! the replica `<stage>@s<k>`, run with seed `base + k - 1` (`base`: the stage's own `seed`, else the
//! pipeline's) into the directory of that name.
//!
//! A replica reads the same seed's run of every per-seed stage it names (`eval_sft@s2` reads `train_sft@s2`) and
//! the single run of every other stage. A stage that is not per seed reads seed 1 of a per-seed stage (a release
//! packages one model), unless it reads over seeds ([`super::Stage::over_seeds`]: a report aggregates them).
//!
//! A stage table's name cannot hold `@`, so a replica's name never clashes with a stage of the file.

use std::collections::BTreeMap;

use super::{PipelineConfig, PipelineError, StageSpec};

/// What joins a stage's name and its seed number in a replica's name.
const MARK: &str = "@s";

/// The runs of each per-seed stage over the seeds, in seed order, the stage itself first:
/// `train_sft` -> `[train_sft, train_sft@s2, train_sft@s3]`.
pub type SeedRuns = BTreeMap<String, Vec<String>>;

/// The name of seed `seed_number`'s run (counted from 1) of per-seed stage `stage`.
pub fn replica_name(stage: &str, seed_number: u32) -> String {
    match seed_number {
        0 | 1 => stage.to_owned(),
        k => format!("{stage}{MARK}{k}"),
    }
}

/// The stage and seed number a run name stands for: `eval_sft@s3` is seed 3 of `eval_sft`; any other name is seed
/// 1 of itself.
pub fn replica_of(name: &str) -> (&str, u32) {
    name.rsplit_once(MARK)
        .and_then(|(stage, number)| Some((stage, number.parse::<u32>().ok()?)))
        .filter(|&(stage, number)| !stage.is_empty() && replica_name(stage, number) == name)
        .unwrap_or((name, 1))
}

/// The seed of seed `seed_number`'s run of a stage whose own seed is `base`. Consecutive seeds key unrelated
/// streams (ChaCha, SHA-256 of the seed), and they are easy to name: a replica is rerun on its own by giving its
/// stage `seed = base + k - 1`.
pub fn replica_seed(base: u64, seed_number: u32) -> u64 {
    base.wrapping_add(u64::from(seed_number.max(1) - 1))
}

/// One stage run of the expanded pipeline.
#[derive(Debug, Clone)]
pub struct Placement {
    /// The stage's table, named as the run (`train_sft@s2` for a replica).
    pub spec: StageSpec,
    /// The seed the run gets.
    pub seed: u64,
    /// For a replica: each per-seed stage, by the name the table gives it, to the run of the replica's seed.
    pub scope: BTreeMap<String, String>,
}

/// A pipeline expanded over its seeds.
#[derive(Debug, Clone)]
pub struct Expansion {
    /// Every stage run in run order: each per-seed stage followed by its replicas.
    pub placements: Vec<Placement>,
    /// The runs of every per-seed stage; empty over one seed.
    pub runs: SeedRuns,
}

/// Expands `config` over `seeds` seeds (see the module docs). More than one seed needs a per-seed stage.
pub fn expand(config: &PipelineConfig, seeds: u32) -> Result<Expansion, PipelineError> {
    let per_seed: Vec<&str> = config
        .stages
        .iter()
        .filter(|spec| spec.per_seed)
        .map(|spec| spec.name.as_str())
        .collect();
    if seeds > 1 && per_seed.is_empty() {
        return Err(PipelineError::Config {
            path: config.path.clone(),
            message: format!(
                "{seeds} seeds, but no stage is marked `per_seed = true`: mark the stages to run once per seed \
                 (the trainings and their evals)"
            ),
        });
    }
    let mut placements = Vec::new();
    let mut runs = SeedRuns::new();
    for spec in &config.stages {
        let base = spec.seed.unwrap_or(config.seed);
        let copies = if spec.per_seed { seeds.max(1) } else { 1 };
        for number in 1..=copies {
            let scope = match number {
                1 => BTreeMap::new(),
                _ => per_seed
                    .iter()
                    .map(|&stage| (stage.to_owned(), replica_name(stage, number)))
                    .collect(),
            };
            let name = replica_name(&spec.name, number);
            if seeds > 1 && spec.per_seed {
                runs.entry(spec.name.clone())
                    .or_default()
                    .push(name.clone());
            }
            placements.push(Placement {
                spec: StageSpec {
                    name,
                    ..spec.clone()
                },
                seed: replica_seed(base, number),
                scope,
            });
        }
    }
    Ok(Expansion { placements, runs })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn pipeline(seeds: u32) -> PipelineConfig {
        let text = format!(
            r#"
            [pipeline]
            name = "t"
            workdir = "w"
            seed = 42
            seeds = {seeds}
            [shards]
            [train]
            per_seed = true
            [train_cl]
            kind = "train"
            per_seed = true
            seed = 7
            [eval]
            per_seed = true
            [report]
            [release]
            "#
        );
        PipelineConfig::parse(Path::new("t.toml"), &text).unwrap()
    }

    fn names(expansion: &Expansion) -> Vec<(&str, u64)> {
        expansion
            .placements
            .iter()
            .map(|p| (p.spec.name.as_str(), p.seed))
            .collect()
    }

    #[test]
    fn names_round_trip_and_other_names_are_seed_one() {
        assert_eq!(replica_name("train_sft", 1), "train_sft");
        assert_eq!(replica_name("train_sft", 3), "train_sft@s3");
        assert_eq!(replica_of("train_sft@s3"), ("train_sft", 3));
        assert_eq!(replica_of("train_sft"), ("train_sft", 1));
        for odd in ["a@s", "a@s1", "a@s02", "a@sx", "@s2", "a@s-2"] {
            assert_eq!(replica_of(odd), (odd, 1), "{odd}");
        }
        assert_eq!(replica_seed(42, 1), 42);
        assert_eq!(replica_seed(42, 3), 44);
        assert_eq!(replica_seed(u64::MAX, 2), 0);
    }

    #[test]
    fn one_seed_is_the_file_as_written() {
        let expansion = expand(&pipeline(1), 1).unwrap();
        assert_eq!(
            names(&expansion),
            [
                ("shards", 42),
                ("train", 42),
                ("train_cl", 7),
                ("eval", 42),
                ("report", 42),
                ("release", 42)
            ]
        );
        assert!(expansion.runs.is_empty());
        assert!(expansion.placements.iter().all(|p| p.scope.is_empty()));
    }

    #[test]
    fn per_seed_stages_follow_their_seed_one_with_their_replicas() {
        let config = pipeline(3);
        let expansion = expand(&config, config.seeds).unwrap();
        assert_eq!(
            names(&expansion),
            [
                ("shards", 42),
                ("train", 42),
                ("train@s2", 43),
                ("train@s3", 44),
                ("train_cl", 7),
                ("train_cl@s2", 8),
                ("train_cl@s3", 9),
                ("eval", 42),
                ("eval@s2", 43),
                ("eval@s3", 44),
                ("report", 42),
                ("release", 42)
            ]
        );
        assert_eq!(
            expansion.runs["eval"],
            ["eval", "eval@s2", "eval@s3"],
            "seed order, seed 1 first"
        );
        assert_eq!(expansion.runs.len(), 3);
        let eval_s3 = &expansion.placements[9];
        assert_eq!(eval_s3.scope["train"], "train@s3");
        assert_eq!(eval_s3.scope["eval"], "eval@s3");
        assert!(
            !eval_s3.scope.contains_key("shards"),
            "data stages run once"
        );
        let kinds: Vec<&str> = expansion
            .placements
            .iter()
            .map(|p| p.spec.kind.as_str())
            .collect();
        assert_eq!(kinds[5], "train", "a replica keeps its kind");
    }

    #[test]
    fn several_seeds_need_a_per_seed_stage() {
        let text = "[pipeline]\nname='t'\nworkdir='w'\n[a]\n";
        let config = PipelineConfig::parse(Path::new("t.toml"), text).unwrap();
        let err = expand(&config, 2).unwrap_err().to_string();
        assert!(
            err.contains("no stage is marked `per_seed = true`"),
            "{err}"
        );
        assert_eq!(expand(&config, 1).unwrap().placements.len(), 1);
    }
}
