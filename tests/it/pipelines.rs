//! The shipped pipeline files (pipelines/*.toml) are valid as `umrank run` reads them: every table builds its stage
//! with the real registry, unknown keys anywhere are refused, every stage reads only stages above it; the probe is
//! the whole unified-loss grid on one set of shards; the CL twin differs from the SFT pipeline only where it
//! should; and `umrank run --check` says all this without running anything.

use crate::common::cli::umrank;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use umrank::pipeline::{PipelineConfig, RunOptions, Runner, StageSpec};

fn pipelines_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines")
}

/// Every pipeline file, in name order.
fn pipeline_files() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(pipelines_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}

fn load(name: &str) -> PipelineConfig {
    PipelineConfig::load(&pipelines_dir().join(name)).unwrap()
}

/// What `umrank run` does before running: parse, then build every stage with the registry.
fn build(config: &PipelineConfig) -> Result<Runner, String> {
    Runner::from_config(config, &umrank::stages::registry(), RunOptions::default())
        .map_err(|e| e.to_string())
}

fn stage<'a>(config: &'a PipelineConfig, name: &str) -> &'a StageSpec {
    config
        .stages
        .iter()
        .find(|s| s.name == name)
        .unwrap_or_else(|| panic!("{}: no stage {name}", config.path.display()))
}

fn text(spec: &StageSpec, key: &str) -> Option<String> {
    spec.table.get(key).map(|v| match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

#[test]
fn every_pipeline_file_builds_every_stage_and_passes_the_check() {
    let files = pipeline_files();
    let names: BTreeSet<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    for expected in [
        "demo.toml",
        "probe.toml",
        "mbeir-gme-qwen25vl.toml",
        "mbeir-gme-qwen25vl-cl.toml",
        "text-minilm-qwen3.toml",
    ] {
        assert!(names.contains(expected), "pipelines/{expected} is missing");
    }
    for file in &files {
        let config = PipelineConfig::load(file).unwrap();
        let runner = build(&config).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let plans = runner
            .check()
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let order: Vec<&str> = plans.iter().map(|p| p.name.as_str()).collect();
        let expected: Vec<&str> = config.stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(order, expected, "{}", file.display());
        for plan in &plans {
            assert!(plan.config.is_object(), "{}: {}", file.display(), plan.name);
        }
    }
}

/// Adds `key = 1` to the stage table, or to its nested table `path` (e.g. `[mine.filter]`).
fn with_extra_key(config: &PipelineConfig, stage: usize, path: &[String]) -> PipelineConfig {
    let mut config = config.clone();
    let mut table = &mut config.stages[stage].table;
    for part in path {
        table = match table.get_mut(part) {
            Some(toml::Value::Table(t)) => t,
            _ => unreachable!("the path was taken from the table"),
        };
    }
    table.insert("not_a_umrank_key".into(), toml::Value::Integer(1));
    config
}

/// The paths of every nested table of a stage table, the table itself first (an empty path).
fn table_paths(table: &toml::Table) -> Vec<Vec<String>> {
    let mut paths = vec![Vec::new()];
    for (key, value) in table {
        if let toml::Value::Table(inner) = value {
            for mut sub in table_paths(inner) {
                sub.insert(0, key.clone());
                paths.push(sub);
            }
        }
    }
    paths
}

#[test]
fn an_unknown_key_in_any_table_of_any_pipeline_is_an_error_naming_stage_and_key() {
    let mut tried = 0;
    for file in pipeline_files() {
        let config = PipelineConfig::load(&file).unwrap();
        for (i, spec) in config.stages.iter().enumerate() {
            for path in table_paths(&spec.table) {
                let broken = with_extra_key(&config, i, &path);
                let err = match build(&broken) {
                    Ok(_) => panic!(
                        "{}: [{}] {path:?} accepted an unknown key",
                        file.display(),
                        spec.name
                    ),
                    Err(e) => e,
                };
                assert!(
                    err.contains(&format!("[{}]", spec.name)) && err.contains("not_a_umrank_key"),
                    "{}: {err}",
                    file.display()
                );
                tried += 1;
            }
        }
    }
    assert!(tried >= 50, "only {tried} tables tried");
}

#[test]
fn the_probe_trains_the_whole_grid_on_one_set_of_shards_and_reports_all_of_it() {
    let probe = load("probe.toml");
    let trains: Vec<&StageSpec> = probe.stages.iter().filter(|s| s.kind == "train").collect();
    let cells: BTreeSet<(String, String, bool)> = trains
        .iter()
        .map(|s| {
            assert_eq!(
                text(s, "objective").as_deref(),
                Some("unified"),
                "{}",
                s.name
            );
            (
                text(s, "weight").unwrap(),
                text(s, "direction").unwrap(),
                s.table.contains_key("tau"),
            )
        })
        .collect();
    let mut expected = BTreeSet::new();
    for (weight, tau) in [
        ("sft", false),
        ("cl", false),
        ("const", false),
        ("const", true),
    ] {
        for direction in ["sft", "cl"] {
            expected.insert((weight.to_owned(), direction.to_owned(), tau));
        }
    }
    assert_eq!(trains.len(), 8);
    assert_eq!(cells, expected);

    // Apart from the objective's own keys, the eight train tables are the same: same shards, model, budget.
    let rest = |s: &StageSpec| {
        let mut t = s.table.clone();
        for key in ["weight", "direction", "tau"] {
            t.remove(key);
        }
        t
    };
    for train in &trains[1..] {
        assert_eq!(rest(train), rest(trains[0]), "{} differs", train.name);
    }

    // One eval per train stage, ranking by the score its direction trains; the report covers all of them.
    let evals: Vec<&StageSpec> = probe.stages.iter().filter(|s| s.kind == "eval").collect();
    assert_eq!(evals.len(), 8);
    for train in &trains {
        let mine: Vec<&&StageSpec> = evals
            .iter()
            .filter(|e| text(e, "model_from").as_deref() == Some(train.name.as_str()))
            .collect();
        assert_eq!(
            mine.len(),
            1,
            "{} has {} eval stages",
            train.name,
            mine.len()
        );
        let score = match text(train, "direction").as_deref() {
            Some("sft") => "p_yes",
            _ => "z_yes",
        };
        assert_eq!(text(mine[0], "score").as_deref(), Some(score));
    }
    let report = stage(&probe, "report");
    let reported: Vec<String> = report.table["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    let eval_names: Vec<String> = evals.iter().map(|e| e.name.clone()).collect();
    assert_eq!(reported, eval_names);
    assert_eq!(probe.stages.last().unwrap().name, "report");
    assert!(
        trains.iter().chain(&evals).all(|s| s.per_seed),
        "`--seeds N` runs every cell over N seeds"
    );
}

#[test]
fn the_probe_builds_its_data_as_the_demo_does() {
    let probe = load("probe.toml");
    let demo = load("demo.toml");
    assert_eq!(probe.seed, demo.seed);
    for name in ["world", "ingest", "embedder", "embed", "mine", "shards"] {
        assert_eq!(
            stage(&probe, name).table,
            stage(&demo, name).table,
            "[{name}] of probe.toml and demo.toml differ: the probe is meant to run on the demo's data"
        );
    }
}

/// The stage tables of a pipeline by name.
fn tables(config: &PipelineConfig) -> BTreeMap<String, (String, toml::Table)> {
    config
        .stages
        .iter()
        .map(|s| (s.name.clone(), (s.kind.clone(), s.table.clone())))
        .collect()
}

/// The keys whose values differ between two tables (present in one only, or unequal).
fn differing_keys(a: &toml::Table, b: &toml::Table) -> BTreeSet<String> {
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

#[test]
fn the_cl_twin_shares_the_data_stages_and_differs_only_in_objective_data_and_score() {
    let sft = load("mbeir-gme-qwen25vl.toml");
    let cl = load("mbeir-gme-qwen25vl-cl.toml");
    assert_eq!(sft.workdir, cl.workdir, "the twins share their data stages");
    assert_eq!(sft.seed, cl.seed);
    let (sft, cl) = (tables(&sft), tables(&cl));
    for shared in ["ingest", "embed", "mine", "shards"] {
        assert_eq!(
            sft[shared], cl[shared],
            "[{shared}] differs between the twins"
        );
    }
    let keys = |a: &str, b: &str| differing_keys(&sft[a].1, &cl[b].1);
    let set = |keys: &[&str]| keys.iter().map(|k| k.to_string()).collect::<BTreeSet<_>>();
    assert_eq!(
        keys("train", "train_cl"),
        set(&["objective", "data", "temperature"])
    );
    assert_eq!(cl["train_cl"].1["objective"].as_str(), Some("cl"));
    assert_eq!(cl["train_cl"].1["data"].as_str(), Some("cl"));
    assert_eq!(keys("eval", "eval_cl"), set(&["adapter_from", "score"]));
    assert_eq!(cl["eval_cl"].1["score"].as_str(), Some("z_yes"));
    assert_eq!(sft["eval"].1["score"].as_str(), Some("p_yes"));
    assert_eq!(keys("report", "report_cl"), set(&["stages", "title"]));
    assert_eq!(keys("release", "release_cl"), set(&["from", "eval_from"]));
    // Different names for every stage that differs, so that one workdir holds both without clobbering.
    let sft_only: BTreeSet<&String> = sft.keys().filter(|k| !cl.contains_key(*k)).collect();
    assert_eq!(sft_only.len(), 4, "{sft_only:?}");
}

#[test]
fn run_check_shows_which_mbeir_files_each_shipped_pipeline_reads() {
    let out =
        crate::common::cli::umrank_ok(&["run", "pipelines/mbeir-gme-qwen25vl.toml", "--check"]);
    let ingest = &out
        [out.find("] ingest (kind ingest)").unwrap()..out.find("] embed (kind embed)").unwrap()];
    for glob in [
        "\"query/train/*.jsonl\"",
        "\"query/test/*.jsonl\"",
        "\"cand_pool/local/*.jsonl\"",
        "\"cand_pool/global/mbeir_union_train_cand_pool.jsonl\"",
        "\"qrels/train/*.txt\"",
        "\"instructions/query_instructions.tsv\"",
    ] {
        assert!(ingest.contains(glob), "{glob} not in:\n{ingest}");
    }
    assert!(
        !ingest.contains("union_train/"),
        "the upsampled union file is not read:\n{ingest}"
    );
    let out =
        crate::common::cli::umrank_ok(&["run", "pipelines/text-minilm-qwen3.toml", "--check"]);
    assert!(
        out.contains("\"query/train/mbeir_webqa_train.jsonl\""),
        "{out}"
    );
    let tasks = out.find("\"tasks\": [").expect("the task filter is shown");
    assert_eq!(
        out[tasks..]
            .split(']')
            .next()
            .unwrap()
            .split_whitespace()
            .last(),
        Some("1")
    );
}

#[test]
fn run_check_prints_the_plan_and_runs_nothing() {
    let work = tempfile::tempdir().unwrap();
    let workdir = work.path().join("probe");
    let (ok, out, err) = umrank(&[
        "run",
        "pipelines/probe.toml",
        "--check",
        "--workdir",
        workdir.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("pipeline probe (pipelines/probe.toml): 23 stages"),
        "{out}"
    );
    assert!(
        out.contains("[1/23] world (kind world)\n  reads: -\n"),
        "{out}"
    );
    assert!(
        out.contains("[9/23] train_wsft_dcl (kind train)\n  reads: shards, ingest, "),
        "{out}"
    );
    assert!(out.contains("[23/23] report (kind report)"), "{out}");
    // Resolved configs carry the defaults the file leaves out.
    assert!(out.contains("\"lora_r\": 16"), "{out}");
    assert!(out.contains("shardable: yes"), "{out}");
    assert!(
        out.trim_end().ends_with("ok: the pipeline is valid"),
        "{out}"
    );
    assert!(!workdir.exists(), "--check wrote {}", workdir.display());
    let first_line = |out: &str| out.lines().next().unwrap_or_default().to_string();
    assert!(
        first_line(&out).ends_with("seed 42, up to 2 at a time"),
        "{out}"
    );
    let (ok, out, err) = umrank(&["run", "pipelines/probe.toml", "--check", "--jobs", "1"]);
    assert!(ok, "{err}");
    assert!(first_line(&out).ends_with("up to 1 at a time"), "{out}");
    let (ok, _, err) = umrank(&["run", "pipelines/probe.toml", "--check", "--jobs", "0"]);
    assert!(!ok && err.contains("--jobs"), "{err}");

    let (ok, _, err) = umrank(&["run", "pipelines/demo.toml", "--check", "--shard", "0/2"]);
    assert!(!ok);
    assert!(
        err.contains("stage `world` writes a directory tree and cannot be sharded"),
        "{err}"
    );
    let (ok, out, err) = umrank(&[
        "run",
        "pipelines/demo.toml",
        "--check",
        "--shard",
        "0/2",
        "--from",
        "embed",
        "--until",
        "mine",
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("[1/12] world (kind world): not selected"),
        "{out}"
    );

    let (ok, help, _) = umrank(&["run", "--help"]);
    assert!(ok && help.contains("--check"), "{help}");
}

#[test]
fn run_check_refuses_unknown_keys_and_stages_that_read_what_has_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: &str| {
        let path = dir.path().join(name);
        let text = format!("[pipeline]\nname = \"t\"\nworkdir = \"w\"\n{body}");
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    };
    let typo = write("typo.toml", "[world]\nsize = \"small\"\nimage_sid = 56\n");
    let (ok, _, err) = umrank(&["run", &typo, "--check"]);
    assert!(!ok);
    assert!(err.contains("[world]: unknown field `image_sid`"), "{err}");

    let later = write(
        "later.toml",
        "[ingest]\nfrom = \"world\"\n[world]\nsize = \"small\"\n",
    );
    let (ok, _, err) = umrank(&["run", &later, "--check"]);
    assert!(!ok);
    assert!(
        err.contains("[ingest] reads stage `world`, which comes after it"),
        "{err}"
    );

    let missing = write(
        "missing.toml",
        "[world]\nsize = \"small\"\n[ingest]\nfrom = \"wrold\"\n",
    );
    let (ok, _, err) = umrank(&["run", &missing, "--check"]);
    assert!(!ok);
    assert!(
        err.contains(
            "[ingest] reads stage `wrold`, which is not in the pipeline (stages: world, ingest)"
        ),
        "{err}"
    );
}

/// A job array's shards start at different times; a shard starting must not delete the files another shard of
/// the same array is writing (they are temporary until that shard finishes), while what a dead run of its own
/// slice, or a run with another shard count, left must go.
#[test]
fn a_starting_shard_leaves_the_files_its_running_siblings_are_writing() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "[pipeline]\nname = \"t\"\nworkdir = \"{}\"\n[world]\nsize = \"small\"\n[ingest]\nfrom = \"world\"\n",
        dir.path().join("w").display()
    );
    let config = PipelineConfig::parse(Path::new("t.toml"), &text).unwrap();
    let run = |shard: Option<&str>, from: &str| {
        let options = RunOptions {
            from: Some(from.into()),
            until: Some(from.into()),
            shard: shard.map(|s| s.parse().unwrap()),
            ..RunOptions::default()
        };
        Runner::from_config(&config, &umrank::stages::registry(), options)
            .unwrap()
            .run()
            .unwrap();
    };
    run(None, "world");
    let stage = dir.path().join("w/ingest");
    let corpus = stage.join("corpus");
    std::fs::create_dir_all(&corpus).unwrap();
    let sibling = [
        stage.join(".rejects.part-00001-of-00002.parquet.tmp"),
        stage.join(".manifest.part-00001-of-00002.json.tmp"),
        corpus.join(".part-00001-of-00002.parquet.tmp"),
    ];
    let stale = [
        corpus.join(".part-00000-of-00002.parquet.tmp"),
        corpus.join(".part-00003-of-00004.parquet.tmp"),
        stage.join(".rejects.parquet.tmp"),
    ];
    for file in sibling.iter().chain(&stale) {
        std::fs::write(file, b"partial").unwrap();
    }
    run(Some("0/2"), "ingest");
    for file in &sibling {
        assert!(file.exists(), "{} was removed", file.display());
    }
    for file in &stale {
        assert!(!file.exists(), "{} was left", file.display());
    }
    assert!(corpus.join("part-00000-of-00002.parquet").is_file());
}
