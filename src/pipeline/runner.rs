//! Runs stages in order, skipping the ones that are up to date.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Instant, SystemTime};

use super::fingerprint::{
    canonical_json, completed_as_shards, fingerprint, hash_file_input, is_current,
};
use super::manifest::rfc3339;
use super::outputs::{check_files_exist, clear_shard, collect_outputs, describe_file, files_under};
use super::rejects::RejectSink;
use super::schedule;
use super::seeds;
use super::{
    manifest_path, rejects_path, Input, InputRecord, Manifest, Output, PipelineConfig,
    PipelineError, RejectPolicy, Stage, StageContext, StageRegistry,
};
use crate::device::DeviceSpec;
use crate::digest::sha256_hex;
use crate::plan::{format_bytes, PlanContext, StagePlans, Target};
use crate::shard::Shard;

/// How to run: which stages, which shard, which device, and the reject policy.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// First stage to run; earlier ones must already be complete.
    pub from: Option<String>,
    /// Last stage to run.
    pub until: Option<String>,
    /// Rerun the selected stages even when up to date.
    pub force: bool,
    pub shard: Option<Shard>,
    pub device: DeviceSpec,
    pub policy: RejectPolicy,
    /// Directories for stages, instead of `<workdir>/<name>` (standalone stage commands use this).
    pub dirs: BTreeMap<String, PathBuf>,
    /// How many stages may run at the same time; `None` takes the pipeline file's `jobs` (default 1).
    pub jobs: Option<usize>,
    /// How many seeds the per-seed stages run over; `None` takes the pipeline file's `seeds` (default 1).
    pub seeds: Option<u32>,
    /// The device's memory in bytes, when known: a stage whose memory plan exceeds it is refused.
    pub device_memory: Option<u64>,
}

/// What happened to a stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StageOutcome {
    Ran,
    UpToDate,
    /// Outside `--from`/`--until`.
    NotSelected,
}

/// One line of a run's summary.
#[derive(Debug, Clone)]
pub struct StageReport {
    pub name: String,
    pub kind: String,
    pub outcome: StageOutcome,
    pub dir: PathBuf,
    pub records: u64,
    pub rejects: u64,
    pub seconds: f64,
}

/// One stage of a checked pipeline, as `umrank run --check` shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct StagePlan {
    /// The stage's name in the pipeline (its table name and directory name).
    pub name: String,
    /// The stage kind.
    pub kind: String,
    /// The resolved configuration, defaults filled in: what the fingerprint hashes.
    pub config: serde_json::Value,
    /// The stages it reads, in the order it declares them.
    pub reads: Vec<String>,
    /// The files and directories from outside the pipeline it reads.
    pub files: Vec<PathBuf>,
    /// Where it writes.
    pub dir: PathBuf,
    /// Whether it can run under `--shard I/N` (it writes datasets and summary files, no directory trees).
    pub shardable: bool,
    /// Whether `--from`/`--until` select it.
    pub selected: bool,
}

/// A pipeline ready to run.
pub struct Runner {
    workdir: PathBuf,
    stages: Vec<Placed>,
    options: RunOptions,
    source: PathBuf,
    jobs: usize,
}

/// A built stage in its place in the run.
struct Placed {
    name: String,
    stage: Box<dyn Stage>,
    seed: u64,
    /// The stage runs it reads instead of the stages its inputs name (a replica reads its own seed's runs; see
    /// [`seeds`]).
    scope: BTreeMap<String, String>,
}

impl Placed {
    /// The stage run that input `stage` names for this stage.
    fn upstream<'a>(&'a self, stage: &'a str) -> &'a str {
        self.scope.get(stage).map_or(stage, String::as_str)
    }

    /// The stage runs this stage reads, in the order it declares them.
    fn upstream_runs(&self) -> Vec<String> {
        self.stage
            .inputs()
            .iter()
            .filter_map(|input| match input {
                Input::Stage(up) => Some(self.upstream(up).to_owned()),
                Input::Files(_) => None,
            })
            .collect()
    }
}

impl Runner {
    /// Builds every stage of a pipeline file, each per-seed stage once per seed (so that a config error anywhere
    /// is reported before anything runs).
    pub fn from_config(
        config: &PipelineConfig,
        registry: &StageRegistry,
        options: RunOptions,
    ) -> Result<Self, PipelineError> {
        let expansion = seeds::expand(config, options.seeds.unwrap_or(config.seeds))?;
        let stages = expansion
            .placements
            .into_iter()
            .map(|placement| {
                let mut stage = registry.build(&placement.spec, &config.path)?;
                if !expansion.runs.is_empty() && !placement.spec.per_seed {
                    stage = stage.over_seeds(&expansion.runs).unwrap_or(stage);
                }
                Ok(Placed {
                    name: placement.spec.name,
                    stage,
                    seed: placement.seed,
                    scope: placement.scope,
                })
            })
            .collect::<Result<Vec<_>, PipelineError>>()?;
        let jobs = options.jobs.unwrap_or(config.jobs);
        Ok(Self {
            workdir: config.workdir.clone(),
            stages,
            options,
            source: config.path.clone(),
            jobs,
        })
    }

    /// A runner over stages built in code (a standalone stage command, or a test).
    pub fn new(
        workdir: PathBuf,
        seed: u64,
        stages: Vec<(String, Box<dyn Stage>)>,
        options: RunOptions,
    ) -> Self {
        let jobs = options.jobs.unwrap_or(1);
        let stages = stages
            .into_iter()
            .map(|(name, stage)| Placed {
                name,
                stage,
                seed,
                scope: BTreeMap::new(),
            })
            .collect();
        Self {
            workdir,
            stages,
            options,
            source: PathBuf::from("<command line>"),
            jobs,
        }
    }

    /// How many stages may run at the same time.
    pub fn jobs(&self) -> usize {
        self.jobs
    }

    /// The directory stage `name` writes to.
    pub fn stage_dir(&self, name: &str) -> PathBuf {
        self.options
            .dirs
            .get(name)
            .cloned()
            .unwrap_or_else(|| self.workdir.join(name))
    }

    /// Runs the selected stages and reports on each, in file order. With `jobs` above 1, a stage starts as soon
    /// as the selected stages it reads have finished, beside other running stages; after a failure no new stage
    /// starts, the running ones finish, and the first failure is returned.
    pub fn run(&self) -> Result<Vec<StageReport>, PipelineError> {
        let (first, last) = self.selection()?;
        let selected = |i: usize| (first..=last).contains(&i);
        let waits_on: Vec<Vec<usize>> = (0..self.stages.len())
            .map(|i| {
                if selected(i) {
                    self.upstream_positions(i)
                        .filter(|&j| selected(j))
                        .collect()
                } else {
                    Vec::new()
                }
            })
            .collect();
        for (i, placed) in self.stages.iter().enumerate() {
            if selected(i) {
                check_files_exist(&placed.name, placed.stage.as_ref())?;
                self.check_memory(&placed.name, placed.stage.as_ref())?;
            }
        }
        schedule::run_ordered(self.jobs, &waits_on, |i| {
            let placed = &self.stages[i];
            if selected(i) {
                self.run_stage(placed)
            } else {
                Ok(StageReport {
                    name: placed.name.clone(),
                    kind: placed.stage.name().to_string(),
                    outcome: StageOutcome::NotSelected,
                    dir: self.stage_dir(&placed.name),
                    records: 0,
                    rejects: 0,
                    seconds: 0.0,
                })
            }
        })
    }

    /// The positions of the pipeline stages above stage `i` that it reads. A stage read from a directory given
    /// in [`RunOptions::dirs`], outside the pipeline, is not waited for.
    fn upstream_positions(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        self.stages[i]
            .upstream_runs()
            .into_iter()
            .filter_map(move |up| self.stages[..i].iter().position(|s| s.name == up))
    }

    /// The memory plan of every selected stage that runs a model, in file order (see [`crate::plan`]).
    pub fn memory_plans(&self) -> Result<StagePlans, PipelineError> {
        let (first, last) = self.selection()?;
        let stage_dir = |name: &str| self.stage_dir(name);
        let ctx = self.plan_context(&stage_dir);
        Ok(self.stages[first..=last]
            .iter()
            .filter_map(|placed| {
                placed
                    .stage
                    .memory_plan(&ctx)
                    .map(|plan| (placed.name.clone(), plan))
            })
            .collect())
    }

    fn plan_context<'a>(&self, stage_dir: &'a dyn Fn(&str) -> PathBuf) -> PlanContext<'a> {
        PlanContext {
            target: match self.options.device {
                DeviceSpec::Cpu => Target::Cpu,
                DeviceSpec::Cuda(_) => Target::Cuda,
            },
            device_bytes: self.options.device_memory,
            stage_dir,
        }
    }

    /// Refuses a selected stage whose memory plan does not fit the device, before any stage runs (a train stage
    /// should not fail after hours of the stages above it). A stage that cannot be planned (its model is not
    /// there to read yet) is let through: the plan is a guard, not a gate on what it cannot see.
    /// The stage's resolved config, or an error naming the stage when it cannot be serialised.
    fn stage_config(
        &self,
        name: &str,
        stage: &dyn Stage,
    ) -> Result<serde_json::Value, PipelineError> {
        stage.config().map_err(|e| {
            self.config_error(format!(
                "the configuration of stage `{name}` cannot be serialised: {e}"
            ))
        })
    }

    fn check_memory(&self, name: &str, stage: &dyn Stage) -> Result<(), PipelineError> {
        if self.options.device_memory.is_none() {
            return Ok(());
        }
        let stage_dir = |name: &str| self.stage_dir(name);
        let ctx = self.plan_context(&stage_dir);
        match stage.memory_plan(&ctx) {
            Some(Ok(verdict)) if verdict.fits() == Some(false) => Err(PipelineError::DoesNotFit {
                stage: name.to_string(),
                peak: format_bytes(verdict.plan.peak_bytes()),
                device: format_bytes(verdict.device_bytes.unwrap_or(0)),
                fix: verdict.fix.unwrap_or_default(),
            }),
            Some(Err(e)) => {
                tracing::warn!("{name}: no memory plan: {e}");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// Checks the pipeline without running or reading anything: the stages were built (so every table parsed, with
    /// unknown keys refused), `--from`/`--until` name stages in the right order, every stage a stage reads comes
    /// before it in the pipeline (or has a directory given in [`RunOptions::dirs`]), and no selected stage that
    /// writes a directory tree is asked to run under `--shard`. Returns the stages in run order.
    pub fn check(&self) -> Result<Vec<StagePlan>, PipelineError> {
        let (first, last) = self.selection()?;
        let shard = self.options.shard.unwrap_or(Shard::ALL);
        let mut plans = Vec::with_capacity(self.stages.len());
        for (i, placed) in self.stages.iter().enumerate() {
            let (name, stage) = (&placed.name, &placed.stage);
            let reads = placed.upstream_runs();
            for up in &reads {
                self.check_upstream(i, name, up)?;
            }
            let files: Vec<PathBuf> = stage
                .inputs()
                .into_iter()
                .flat_map(|input| match input {
                    Input::Files(paths) => paths,
                    Input::Stage(_) => Vec::new(),
                })
                .collect();
            let shardable = !stage
                .outputs()
                .iter()
                .any(|o| matches!(o, Output::Tree { .. }));
            let selected = (first..=last).contains(&i);
            if selected && !shard.is_all() && !shardable {
                return Err(self.config_error(format!(
                    "stage `{name}` writes a directory tree and cannot be sharded; run it without --shard"
                )));
            }
            plans.push(StagePlan {
                name: name.clone(),
                kind: stage.name().to_string(),
                config: self.stage_config(name, stage.as_ref())?,
                reads,
                files,
                dir: self.stage_dir(name),
                shardable,
                selected,
            });
        }
        Ok(plans)
    }

    /// An upstream stage must run before the stage at `position` reads it.
    fn check_upstream(&self, position: usize, name: &str, up: &str) -> Result<(), PipelineError> {
        if self.options.dirs.contains_key(up) {
            return Ok(());
        }
        match self.stages.iter().position(|s| s.name == up) {
            Some(at) if at < position => Ok(()),
            Some(at) if at == position => {
                Err(self.config_error(format!("[{name}] reads its own outputs (`{up}`)")))
            }
            Some(_) => Err(self.config_error(format!(
                "[{name}] reads stage `{up}`, which comes after it; move [{up}] above [{name}]"
            ))),
            None => {
                let names: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
                Err(self.config_error(format!(
                    "[{name}] reads stage `{up}`, which is not in the pipeline (stages: {})",
                    names.join(", ")
                )))
            }
        }
    }

    fn config_error(&self, message: String) -> PipelineError {
        PipelineError::Config {
            path: self.source.clone(),
            message,
        }
    }

    fn selection(&self) -> Result<(usize, usize), PipelineError> {
        let position = |name: &str| {
            self.stages
                .iter()
                .position(|s| s.name == name)
                .ok_or_else(|| {
                    let names: Vec<&str> = self.stages.iter().map(|s| s.name.as_str()).collect();
                    PipelineError::Config {
                        path: self.source.clone(),
                        message: format!("no stage named `{name}` (stages: {})", names.join(", ")),
                    }
                })
        };
        let first = self
            .options
            .from
            .as_deref()
            .map(position)
            .transpose()?
            .unwrap_or(0);
        let last = match self.options.until.as_deref() {
            // A per-seed stage's replicas follow it, and stopping after a stage means after every seed's run
            // of it: `--until eval_cl` over three seeds includes `eval_cl@s2` and `eval_cl@s3`.
            Some(name) => {
                let at = position(name)?;
                let replicas = self.stages[at + 1..]
                    .iter()
                    .take_while(|s| seeds::replica_of(&s.name).0 == name)
                    .count();
                at + replicas
            }
            None => self.stages.len().saturating_sub(1),
        };
        if first > last {
            return Err(PipelineError::Config {
                path: self.source.clone(),
                message: "--from names a stage after --until".into(),
            });
        }
        Ok((first, last))
    }

    fn run_stage(&self, placed: &Placed) -> Result<StageReport, PipelineError> {
        let (name, stage, seed) = (placed.name.as_str(), placed.stage.as_ref(), placed.seed);
        let shard = self.options.shard.unwrap_or(Shard::ALL);
        let dir = self.stage_dir(name);
        let outputs = stage.outputs();
        if !shard.is_all() && outputs.iter().any(|o| matches!(o, Output::Tree { .. })) {
            return Err(PipelineError::Config {
                path: self.source.clone(),
                message: format!("stage `{name}` writes a directory tree and cannot be sharded; run it without --shard"),
            });
        }
        let config = self.stage_config(name, stage)?;
        let config_hash = sha256_hex(
            canonical_json(&serde_json::json!({"kind": stage.name(), "config": config})).as_bytes(),
        );
        let manifest_file = manifest_path(&dir, shard);
        let previous = Manifest::read(&manifest_file)?;
        let inputs = self.hash_inputs(placed, previous.as_ref())?;
        let fingerprint = fingerprint(stage.name(), &config_hash, seed, shard, &inputs);

        let mut report = StageReport {
            name: name.to_string(),
            kind: stage.name().to_string(),
            outcome: StageOutcome::UpToDate,
            dir: dir.clone(),
            records: 0,
            rejects: 0,
            seconds: 0.0,
        };
        if let Some(prev) = &previous {
            if !self.options.force && is_current(prev, &fingerprint, &dir)? {
                tracing::info!("{name}: up to date ({})", dir.display());
                report.records = prev.records;
                report.rejects = prev.rejects;
                return Ok(report);
            }
        }
        if previous.is_none() && shard.is_all() && !self.options.force {
            let kind = stage.name();
            if let Some(parts) = completed_as_shards(&dir, |part| {
                self::fingerprint(kind, &config_hash, seed, part, &inputs)
            })? {
                tracing::info!(
                    "{name}: up to date, completed as {} shards ({})",
                    parts.len(),
                    dir.display()
                );
                stage
                    .merge_parts(&dir, parts.len() as u32)
                    .map_err(|source| PipelineError::Stage {
                        stage: name.to_string(),
                        source,
                    })?;
                report.records = parts.iter().map(|m| m.records).sum();
                report.rejects = parts.iter().map(|m| m.rejects).sum();
                return Ok(report);
            }
        }

        clear_shard(&dir, &outputs, shard)?;
        let upstream = stage
            .inputs()
            .iter()
            .filter_map(|i| match i {
                Input::Stage(up) => Some((up.clone(), self.stage_dir(placed.upstream(up)))),
                Input::Files(_) => None,
            })
            .collect();
        let rejects_file = rejects_path(&dir, shard);
        let mut ctx = StageContext {
            name: name.to_string(),
            dir: dir.clone(),
            config: config.clone(),
            fingerprint: fingerprint.clone(),
            seed,
            shard,
            device: self.options.device,
            upstream,
            rejects: RejectSink::create(name, rejects_file.clone())?,
            rejects_file: rejects_file.clone(),
            policy: self.options.policy,
            records: 0,
            observed: Vec::new(),
        };
        tracing::info!("{name}: running ({})", dir.display());
        let started_at = SystemTime::now();
        let clock = Instant::now();
        let result = stage.run(&mut ctx);
        let StageContext {
            rejects,
            records,
            observed,
            ..
        } = ctx;
        let rejected = rejects.count();
        let first_reject = rejects.first().cloned();
        rejects.finish()?;
        result.map_err(|source| PipelineError::Stage {
            stage: name.to_string(),
            source,
        })?;
        self.options
            .policy
            .enforce(
                name,
                rejected,
                records,
                first_reject.as_ref(),
                &rejects_file,
            )
            .map_err(|failure| PipelineError::Rejects(Box::new(failure)))?;

        let mut output_records = collect_outputs(name, &dir, &outputs, shard)?;
        output_records.push(describe_file("rejects", &dir, &rejects_file, true)?);
        let seconds = clock.elapsed().as_secs_f64();
        let manifest = Manifest {
            umrank_version: env!("CARGO_PKG_VERSION").to_string(),
            stage: name.to_string(),
            kind: stage.name().to_string(),
            shard,
            seed,
            device: self.options.device.to_string(),
            config,
            config_hash,
            fingerprint,
            inputs,
            observed,
            outputs: output_records,
            records,
            rejects: rejected,
            started_at: rfc3339(started_at),
            finished_at: rfc3339(SystemTime::now()),
            elapsed_seconds: seconds,
        };
        manifest.write(&manifest_file)?;
        tracing::info!("{name}: done in {seconds:.1}s: {records} records, {rejected} rejected");
        report.outcome = StageOutcome::Ran;
        report.records = records;
        report.rejects = rejected;
        report.seconds = seconds;
        Ok(report)
    }

    fn hash_inputs(
        &self,
        placed: &Placed,
        previous: Option<&Manifest>,
    ) -> Result<Vec<InputRecord>, PipelineError> {
        let mut records = Vec::new();
        for input in placed.stage.inputs() {
            match input {
                Input::Stage(up) => {
                    let up = placed.upstream(&up).to_owned();
                    let dir = self.stage_dir(&up);
                    let manifests = Manifest::read_complete(&dir).map_err(|reason| {
                        PipelineError::MissingUpstream {
                            stage: placed.name.clone(),
                            upstream: up.clone(),
                            reason,
                        }
                    })?;
                    records.push(InputRecord::Stage {
                        name: up,
                        dir,
                        hash: Manifest::combined_hash(&manifests),
                    });
                }
                Input::Files(paths) => {
                    for path in paths {
                        for file in files_under(&path)? {
                            records.push(hash_file_input(&file, previous)?);
                        }
                    }
                }
            }
        }
        Ok(records)
    }
}
