//! The pipeline runner's contract (docs/design.md#manifests, docs/scale-out.md#shards-of-a-stage,
//! docs/faults.md#crashes-and-reruns): skip what is up to date, rerun what changed and everything below it, never
//! accept a half-written stage, shard deterministically, refuse off-schema batches, and apply the reject policy.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arrow::array::{Array, Int32Array, RecordBatch, StringArray};
use serde::{Deserialize, Serialize};
use umrank::dataset::Dataset;
use umrank::pipeline::{
    Input, Output, PipelineConfig, PipelineError, Reject, RejectPolicy, RunOptions, Runner, Stage,
    StageContext, StageError, StageOutcome, StageRegistry,
};
use umrank::schema;
use umrank::shard::Shard;

use crate::common::datasets::qrels;

/// Emits `count` judgement rows (qid q<n>), reading an offset from an input file; rejects every
/// `reject_every`-th record; writes two datasets so that a crash between them can be simulated.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NumbersConfig {
    count: u64,
    source: PathBuf,
    #[serde(default)]
    reject_every: Option<u64>,
    #[serde(default)]
    wrong_type: bool,
    /// Check the reject policy before writing anything, as a stage with a long part after its input checks does.
    #[serde(default)]
    check_early: bool,
}

struct Numbers {
    config: NumbersConfig,
    crash_once: Arc<AtomicBool>,
}

impl Numbers {
    fn batch(&self, rows: &[(String, String, i32)]) -> RecordBatch {
        let qids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
        let dids: Vec<&str> = rows.iter().map(|r| r.1.as_str()).collect();
        let rels: Vec<i32> = rows.iter().map(|r| r.2).collect();
        let relevance: Arc<dyn Array> = if self.config.wrong_type {
            Arc::new(StringArray::from(
                rels.iter().map(|r| r.to_string()).collect::<Vec<_>>(),
            ))
        } else {
            Arc::new(Int32Array::from(rels))
        };
        let mut fields: Vec<arrow::datatypes::Field> = schema::get("qrels")
            .unwrap()
            .arrow()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[2] = arrow::datatypes::Field::new("relevance", relevance.data_type().clone(), false);
        RecordBatch::try_new(
            Arc::new(arrow::datatypes::Schema::new(fields)),
            vec![
                Arc::new(StringArray::from(qids)),
                Arc::new(StringArray::from(dids)),
                relevance,
            ],
        )
        .unwrap()
    }
}

impl Stage for Numbers {
    fn name(&self) -> &'static str {
        "numbers"
    }

    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(&self.config)
    }

    fn inputs(&self) -> Vec<Input> {
        vec![Input::Files(vec![self.config.source.clone()])]
    }

    fn outputs(&self) -> Vec<Output> {
        vec![
            Output::dataset("pairs", "qrels"),
            Output::dataset("extra", "qrels"),
        ]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let offset = fs::read_to_string(&self.config.source)?
            .trim()
            .parse::<i32>()?;
        let mut rows = Vec::new();
        for n in 0..self.config.count {
            let qid = format!("q{n}");
            if !ctx.shard().owns(&qid) {
                continue;
            }
            ctx.add_records(1);
            if self.config.reject_every.is_some_and(|k| n % k == 0) {
                ctx.reject(
                    Reject::new("numbers.txt", "divisible", format!("{n} is divisible"))
                        .at_line(n + 1)
                        .with_id(&qid),
                )?;
                continue;
            }
            rows.push((qid, format!("d{}", n * 7 % 13), offset + (n % 3) as i32));
        }
        if self.config.check_early {
            ctx.check_rejects()?;
        }
        let mut pairs = ctx.create_dataset("pairs", "qrels")?;
        for chunk in rows.chunks(64) {
            pairs.write(&self.batch(chunk))?;
        }
        pairs.finish()?;
        let mut extra = ctx.create_dataset("extra", "qrels")?;
        extra.write(&self.batch(&rows[..rows.len().min(5)]))?;
        if self.crash_once.swap(false, Ordering::SeqCst) {
            return Err("simulated crash half way through `extra`".into());
        }
        extra.finish()?;
        Ok(())
    }
}

/// Reads `pairs` from the numbers stage and doubles the relevance, times `factor`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct DoublerConfig {
    #[serde(default = "one")]
    factor: i32,
}

fn one() -> i32 {
    1
}

struct Doubler(DoublerConfig);

impl Stage for Doubler {
    fn name(&self) -> &'static str {
        "doubler"
    }

    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(&self.0)
    }

    fn inputs(&self) -> Vec<Input> {
        vec![Input::Stage("numbers".into())]
    }

    fn outputs(&self) -> Vec<Output> {
        vec![Output::dataset("doubled", "qrels")]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let input = ctx.open_upstream("numbers", "pairs")?;
        let mut out = ctx.create_dataset("doubled", "qrels")?;
        for batch in input.batches()? {
            let batch = batch?;
            ctx.add_records(batch.num_rows() as u64);
            let rel = batch
                .column(2)
                .as_any()
                .downcast_ref::<Int32Array>()
                .unwrap();
            let doubled: Int32Array = rel
                .iter()
                .map(|v| v.map(|v| v * 2 * self.0.factor))
                .collect();
            let columns = vec![
                batch.column(0).clone(),
                batch.column(1).clone(),
                Arc::new(doubled) as _,
            ];
            out.write(&RecordBatch::try_new(batch.schema(), columns)?)?;
        }
        out.finish()?;
        Ok(())
    }
}

struct World {
    dir: tempfile::TempDir,
    crash_once: Arc<AtomicBool>,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("offset.txt"), "10\n").unwrap();
        Self {
            dir,
            crash_once: Arc::new(AtomicBool::new(false)),
        }
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    fn registry(&self) -> StageRegistry {
        let mut registry = StageRegistry::new();
        let crash = self.crash_once.clone();
        registry.register("numbers", move |config: NumbersConfig| {
            Ok(Numbers {
                config,
                crash_once: crash.clone(),
            })
        });
        registry.register("doubler", |config: DoublerConfig| Ok(Doubler(config)));
        registry
    }

    /// Writes the pipeline file with the given stage tables and returns it parsed.
    fn pipeline(&self, workdir: &str, numbers: &str, doubler: &str) -> PipelineConfig {
        let text = format!(
            "[pipeline]\nname = \"t\"\nworkdir = \"{}\"\nseed = 3\n\n[numbers]\nsource = \"{}\"\n{numbers}\n\n[doubler]\n{doubler}\n",
            self.path(workdir).display(),
            self.path("offset.txt").display(),
        );
        let file = self.path("pipeline.toml");
        fs::write(&file, text).unwrap();
        PipelineConfig::load(&file).unwrap()
    }

    fn run(
        &self,
        config: &PipelineConfig,
        options: RunOptions,
    ) -> Result<Vec<StageOutcome>, PipelineError> {
        let runner = Runner::from_config(config, &self.registry(), options)?;
        Ok(runner.run()?.into_iter().map(|r| r.outcome).collect())
    }
}

/// The judgement rows of a dataset, each once (a row written twice fails the test).
fn rows(dir: &Path) -> BTreeSet<(String, String, i32)> {
    let rows = qrels(dir);
    let set: BTreeSet<_> = rows.iter().cloned().collect();
    assert_eq!(set.len(), rows.len(), "a row is written twice in {dir:?}");
    set
}

/// Every file under a directory with its bytes, manifests aside (they carry timestamps).
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(d) = pending.pop() {
        for entry in fs::read_dir(&d).unwrap().flatten() {
            if entry.file_type().unwrap().is_dir() {
                pending.push(entry.path());
            } else if !entry.file_name().to_string_lossy().starts_with("manifest") {
                files.push((
                    entry.path().strip_prefix(dir).unwrap().to_path_buf(),
                    fs::read(entry.path()).unwrap(),
                ));
            }
        }
    }
    files.sort();
    files
}

use StageOutcome::{NotSelected, Ran, UpToDate};

#[test]
fn a_stage_runs_then_a_second_run_skips_it() {
    let w = World::new();
    let p = w.pipeline("work", "count = 100", "");
    assert_eq!(w.run(&p, RunOptions::default()).unwrap(), [Ran, Ran]);
    assert_eq!(
        w.run(&p, RunOptions::default()).unwrap(),
        [UpToDate, UpToDate]
    );
    assert_eq!(rows(&w.path("work/numbers/pairs")).len(), 100);
    let forced = RunOptions {
        force: true,
        from: Some("doubler".into()),
        ..Default::default()
    };
    assert_eq!(w.run(&p, forced).unwrap(), [NotSelected, Ran]);
}

/// `jobs = n`, nothing else.
fn jobs(n: usize) -> RunOptions {
    RunOptions {
        jobs: Some(n),
        ..Default::default()
    }
}

/// The pipeline of [`World::pipeline`] with a second doubler (`tripler`) that, like `doubler`, reads only
/// `numbers`: the two can run side by side.
fn forked(w: &World, workdir: &str) -> PipelineConfig {
    w.pipeline(
        workdir,
        "count = 100",
        "factor = 2\n\n[tripler]\nkind = \"doubler\"\nfactor = 3",
    )
}

#[test]
fn stages_that_do_not_read_each_other_run_side_by_side_with_the_same_outputs() {
    let w = World::new();
    assert_eq!(w.run(&forked(&w, "one"), jobs(1)).unwrap(), [Ran, Ran, Ran]);
    let side_by_side = forked(&w, "two");
    assert_eq!(w.run(&side_by_side, jobs(2)).unwrap(), [Ran, Ran, Ran]);
    for stage in ["numbers", "doubler", "tripler"] {
        assert_eq!(
            snapshot(&w.path(&format!("one/{stage}"))),
            snapshot(&w.path(&format!("two/{stage}"))),
            "{stage}"
        );
    }
    assert_eq!(
        w.run(&side_by_side, jobs(2)).unwrap(),
        [UpToDate, UpToDate, UpToDate]
    );
}

#[test]
fn per_seed_stages_run_once_per_seed_after_the_stages_they_read_ran_once() {
    let w = World::new();
    let p = w.pipeline("work", "count = 30", "per_seed = true");
    let three = RunOptions {
        seeds: Some(3),
        ..Default::default()
    };
    let reports = Runner::from_config(&p, &w.registry(), three.clone())
        .unwrap()
        .run()
        .unwrap();
    let runs: Vec<(&str, StageOutcome)> = reports
        .iter()
        .map(|r| (r.name.as_str(), r.outcome))
        .collect();
    assert_eq!(
        runs,
        [
            ("numbers", Ran),
            ("doubler", Ran),
            ("doubler@s2", Ran),
            ("doubler@s3", Ran)
        ]
    );
    for (stage, seed) in [("doubler", 3), ("doubler@s2", 4), ("doubler@s3", 5)] {
        let manifest: serde_json::Value = serde_json::from_slice(
            &fs::read(w.path(&format!("work/{stage}/manifest.json"))).unwrap(),
        )
        .unwrap();
        assert_eq!(manifest["seed"], seed, "{stage}");
        assert_eq!(
            manifest["inputs"][0]["name"], "numbers",
            "{stage} reads the one numbers stage"
        );
    }
    assert_eq!(
        rows(&w.path("work/doubler@s3/doubled")),
        rows(&w.path("work/doubler/doubled"))
    );

    // `--until` a per-seed stage stops after every seed's run of it; a replica named on its own is one run.
    let select = |from: &str, until: &str| RunOptions {
        from: Some(from.into()),
        until: Some(until.into()),
        force: true,
        ..three.clone()
    };
    assert_eq!(
        w.run(&p, select("doubler", "doubler")).unwrap(),
        [NotSelected, Ran, Ran, Ran]
    );
    assert_eq!(
        w.run(&p, select("doubler@s2", "doubler@s2")).unwrap(),
        [NotSelected, NotSelected, Ran, NotSelected]
    );

    // Seed 1 is the single-seed run: one seed finds it up to date.
    assert_eq!(
        w.run(&p, RunOptions::default()).unwrap(),
        [UpToDate, UpToDate]
    );
    let plain = w.pipeline("work", "count = 30", "");
    let err = w.run(&plain, three).unwrap_err().to_string();
    assert!(
        err.contains("no stage is marked `per_seed = true`"),
        "{err}"
    );
}

#[test]
fn with_several_jobs_a_failed_stage_still_stops_the_stages_that_read_it() {
    let w = World::new();
    w.crash_once.store(true, Ordering::SeqCst);
    let p = forked(&w, "work");
    let err = w.run(&p, jobs(2)).unwrap_err().to_string();
    assert!(err.contains("simulated crash"), "{err}");
    assert!(!w.path("work/doubler").exists() && !w.path("work/tripler").exists());
    assert_eq!(w.run(&p, jobs(2)).unwrap(), [Ran, Ran, Ran]);
}

#[test]
fn a_missing_input_file_stops_the_run_before_any_stage_naming_stage_and_path() {
    let w = World::new();
    let p = w.pipeline("work", "count = 10", "");
    fs::remove_file(w.path("offset.txt")).unwrap();
    let err = w.run(&p, RunOptions::default()).unwrap_err().to_string();
    assert!(
        err.starts_with("stage `numbers` reads ")
            && err.contains("offset.txt, which does not exist"),
        "{err}"
    );
    assert!(!w.path("work").exists());
}

#[test]
fn changed_config_reruns_the_stage_and_everything_downstream() {
    let w = World::new();
    w.run(
        &w.pipeline("work", "count = 100", ""),
        RunOptions::default(),
    )
    .unwrap();
    let more = w.pipeline("work", "count = 120", "");
    assert_eq!(w.run(&more, RunOptions::default()).unwrap(), [Ran, Ran]);
    assert_eq!(rows(&w.path("work/doubler/doubled")).len(), 120);
    let downstream_only = w.pipeline("work", "count = 120", "factor = 3");
    assert_eq!(
        w.run(&downstream_only, RunOptions::default()).unwrap(),
        [UpToDate, Ran]
    );
}

#[test]
fn changed_input_reruns_the_stage_and_downstream_but_a_touch_does_not() {
    let w = World::new();
    let p = w.pipeline("work", "count = 50", "");
    w.run(&p, RunOptions::default()).unwrap();
    fs::write(w.path("offset.txt"), "10\n").unwrap();
    assert_eq!(
        w.run(&p, RunOptions::default()).unwrap(),
        [UpToDate, UpToDate],
        "same content, new mtime"
    );
    fs::write(w.path("offset.txt"), "20\n").unwrap();
    assert_eq!(w.run(&p, RunOptions::default()).unwrap(), [Ran, Ran]);
    assert!(rows(&w.path("work/doubler/doubled"))
        .iter()
        .all(|r| r.2 >= 40));
}

#[test]
fn a_damaged_output_reruns_its_stage() {
    let w = World::new();
    let p = w.pipeline("work", "count = 50", "");
    w.run(&p, RunOptions::default()).unwrap();
    fs::remove_file(w.path("work/doubler/doubled/part-00000-of-00001.parquet")).unwrap();
    assert_eq!(w.run(&p, RunOptions::default()).unwrap(), [UpToDate, Ran]);
}

#[test]
fn a_stage_that_dies_half_way_is_not_accepted_and_its_rerun_is_identical() {
    let w = World::new();
    let p = w.pipeline("crashed", "count = 300", "");
    w.crash_once.store(true, Ordering::SeqCst);
    let err = w.run(&p, RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("simulated crash"), "{err}");
    let stage = w.path("crashed/numbers");
    assert!(
        !stage.join("manifest.json").exists(),
        "a failed stage must leave no manifest"
    );
    assert!(
        stage.join("pairs/part-00000-of-00001.parquet").exists(),
        "the first dataset was written"
    );
    assert!(
        Dataset::open(&stage.join("extra")).is_err(),
        "the half-written dataset is not readable as finished"
    );
    assert!(stage
        .join("extra/.part-00000-of-00001.parquet.tmp")
        .exists());

    let downstream = RunOptions {
        from: Some("doubler".into()),
        ..Default::default()
    };
    let err = w.run(&p, downstream).unwrap_err().to_string();
    assert!(err.contains("needs the output of stage `numbers`"), "{err}");

    assert_eq!(w.run(&p, RunOptions::default()).unwrap(), [Ran, Ran]);
    assert!(
        !stage
            .join("extra/.part-00000-of-00001.parquet.tmp")
            .exists(),
        "leftovers are cleaned"
    );

    let undisturbed = w.pipeline("clean", "count = 300", "");
    w.run(&undisturbed, RunOptions::default()).unwrap();
    assert_eq!(snapshot(&w.path("crashed")), snapshot(&w.path("clean")));
}

#[test]
fn shards_partition_deterministically_and_their_union_is_the_unsharded_output() {
    let w = World::new();
    let whole = w.pipeline("whole", "count = 500", "");
    w.run(&whole, RunOptions::default()).unwrap();

    let sharded = w.pipeline("sharded", "count = 500", "");
    let shard = |i| RunOptions {
        shard: Some(Shard::new(i, 3).unwrap()),
        until: Some("numbers".into()),
        ..Default::default()
    };
    w.run(&sharded, shard(0)).unwrap();
    w.run(&sharded, shard(2)).unwrap();
    let early = RunOptions {
        from: Some("doubler".into()),
        ..Default::default()
    };
    let err = w.run(&sharded, early.clone()).unwrap_err().to_string();
    assert!(err.contains("shard(s) 1/3 have not finished"), "{err}");
    w.run(&sharded, shard(1)).unwrap();

    let parts: Vec<_> = (0..3)
        .map(|i| {
            rows(&w.path(&format!(
                "sharded/numbers/pairs/part-0000{i}-of-00003.parquet"
            )))
        })
        .collect();
    for (i, a) in parts.iter().enumerate() {
        assert!(!a.is_empty());
        for b in &parts[i + 1..] {
            assert!(a.is_disjoint(b));
        }
    }
    assert_eq!(
        rows(&w.path("sharded/numbers/pairs")),
        rows(&w.path("whole/numbers/pairs"))
    );

    let before = fs::read(w.path("sharded/numbers/pairs/part-00001-of-00003.parquet")).unwrap();
    w.run(
        &sharded,
        RunOptions {
            force: true,
            ..shard(1)
        },
    )
    .unwrap();
    assert_eq!(
        before,
        fs::read(w.path("sharded/numbers/pairs/part-00001-of-00003.parquet")).unwrap()
    );

    assert_eq!(w.run(&sharded, early).unwrap(), [NotSelected, Ran]);
    assert_eq!(
        rows(&w.path("sharded/doubler/doubled")),
        rows(&w.path("whole/doubler/doubled"))
    );
}

#[test]
fn a_plain_run_after_all_shards_finished_keeps_them_and_a_changed_config_reruns_whole() {
    let w = World::new();
    let sharded = w.pipeline("sharded", "count = 500", "");
    for i in 0..2 {
        let options = RunOptions {
            shard: Some(Shard::new(i, 2).unwrap()),
            until: Some("numbers".into()),
            ..Default::default()
        };
        w.run(&sharded, options).unwrap();
    }
    let parts = snapshot(&w.path("sharded/numbers"));

    assert_eq!(
        w.run(&sharded, RunOptions::default()).unwrap(),
        [UpToDate, Ran]
    );
    assert_eq!(snapshot(&w.path("sharded/numbers")), parts);
    assert!(!w.path("sharded/numbers/manifest.json").exists());

    let changed = w.pipeline("sharded", "count = 400", "");
    assert_eq!(w.run(&changed, RunOptions::default()).unwrap(), [Ran, Ran]);
    assert!(w.path("sharded/numbers/manifest.json").exists());
    assert!(!w
        .path("sharded/numbers/pairs/part-00000-of-00002.parquet")
        .exists());
}

#[test]
fn a_batch_off_its_schema_is_refused_naming_the_field() {
    let w = World::new();
    let p = w.pipeline("work", "count = 10\nwrong_type = true", "");
    let err = format!(
        "{:#}",
        anyhow::Error::from(w.run(&p, RunOptions::default()).unwrap_err())
    );
    assert!(
        err.contains("field `relevance`: expected type Int32, found Utf8"),
        "{err}"
    );
    assert!(!w.path("work/numbers/manifest.json").exists());
}

#[test]
fn rejects_under_the_limit_pass_and_are_recorded() {
    let w = World::new();
    let p = w.pipeline("work", "count = 200\nreject_every = 100", "");
    assert_eq!(w.run(&p, RunOptions::default()).unwrap(), [Ran, Ran]);
    let rejects = Dataset::open(&w.path("work/numbers/rejects.parquet")).unwrap();
    assert_eq!(rejects.num_rows().unwrap(), 2);
    let batch = rejects.batches().unwrap().next().unwrap().unwrap();
    let reason = batch
        .column_by_name("reason")
        .unwrap()
        .as_any()
        .downcast_ref::<StringArray>()
        .unwrap();
    let line = batch
        .column_by_name("line")
        .unwrap()
        .as_any()
        .downcast_ref::<arrow::array::UInt64Array>()
        .unwrap();
    assert_eq!(reason.value(0), "divisible");
    assert_eq!((line.value(0), line.value(1)), (1, 101));
    assert_eq!(rows(&w.path("work/numbers/pairs")).len(), 198);
}

#[test]
fn rejects_over_the_limit_or_under_strict_fail_naming_file_and_line() {
    let w = World::new();
    let p = fails_over_the_limit(&w, "work", "count = 200\nreject_every = 50");
    assert_eq!(w.run(&p, loose()).unwrap(), [Ran, Ran]);

    let p = w.pipeline("strict", "count = 200\nreject_every = 150", "");
    let strict = RunOptions {
        policy: RejectPolicy {
            max_fraction: 0.01,
            strict: true,
        },
        ..Default::default()
    };
    let err = w.run(&p, strict).unwrap_err().to_string();
    assert!(
        err.contains("numbers.txt:1: divisible") && err.contains("--strict"),
        "{err}"
    );
}

#[test]
fn a_stage_checking_rejects_early_stops_before_its_outputs_with_the_same_message() {
    let w = World::new();
    let p = fails_over_the_limit(
        &w,
        "early",
        "count = 200\nreject_every = 50\ncheck_early = true",
    );
    assert!(!w.path("early/numbers/pairs").exists());
    assert_eq!(w.run(&p, loose()).unwrap(), [Ran, Ran]);
}

/// Runs a pipeline whose numbers stage rejects 4 of 200 records and checks the failure: the message names the
/// share, the limit and the first reject, nothing counts as finished, and the 4 rejects are written.
fn fails_over_the_limit(w: &World, workdir: &str, numbers: &str) -> PipelineConfig {
    let p = w.pipeline(workdir, numbers, "");
    let err = w.run(&p, RunOptions::default()).unwrap_err().to_string();
    assert!(
        err.contains("4 of 200 records rejected (2.00%), over the limit of 1.00%")
            && err.contains("first: numbers.txt:1: divisible (q0)"),
        "{err}"
    );
    assert!(!w.path(&format!("{workdir}/numbers/manifest.json")).exists());
    assert_eq!(
        Dataset::open(&w.path(&format!("{workdir}/numbers/rejects.parquet")))
            .unwrap()
            .num_rows()
            .unwrap(),
        4
    );
    p
}

/// A policy that lets 5% of records be rejected.
fn loose() -> RunOptions {
    RunOptions {
        policy: RejectPolicy {
            max_fraction: 0.05,
            strict: false,
        },
        ..Default::default()
    }
}

#[test]
fn config_errors_are_reported_before_anything_runs() {
    let w = World::new();
    let p = w.pipeline("work", "count = 10\ncuont = 3", "");
    let err = w.run(&p, RunOptions::default()).unwrap_err().to_string();
    assert!(err.contains("[numbers]: unknown field `cuont`"), "{err}");
    assert!(!w.path("work").exists());
    let p = w.pipeline("work", "count = 10", "");
    let bad = RunOptions {
        from: Some("nope".into()),
        ..Default::default()
    };
    let err = w.run(&p, bad).unwrap_err().to_string();
    assert!(
        err.contains("no stage named `nope` (stages: numbers, doubler)"),
        "{err}"
    );
}
