//! `umrank release` (the release stage on its own) and `umrank verify`.

use std::path::{Path, PathBuf};

use umrank::device::DeviceSpec;
use umrank::pipeline::{RunOptions, Runner};
use umrank::release::{verify, GateConfig, ReleaseConfig, ReleaseStage};

use super::run::print_summary;
use super::Global;
use umrank::schema::outputs;

/// Write a release of a trained reranker: a Hugging Face model directory (OUT/model) with the base model's
/// config, tokenizer, chat template and image processor config, the adapter in PEFT format, optionally merged
/// weights (or, for a fully fine-tuned model, its weights), a model card (README.md) and release.json with the
/// sha256 of every file. The release is loaded back and checked before the command succeeds.
#[derive(Debug, clap::Args)]
pub struct ReleaseArgs {
    /// The stage directory: the release goes to OUT/model, the stage's manifest to OUT/manifest.json.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,

    /// The train stage directory: its manifest.json and adapter/ (PEFT format), or model/ for a fully fine-tuned
    /// model.
    #[arg(long, value_name = "DIR")]
    pub train: PathBuf,

    /// An eval stage directory whose metrics.json goes into the model card's table; repeat for several.
    #[arg(long, value_name = "DIR")]
    pub eval: Vec<PathBuf>,

    /// The base model directory of the adapter [default: the `model` the train stage's config records].
    #[arg(long, value_name = "DIR")]
    pub model: Option<PathBuf>,

    /// The base model's name in the model card and adapter_config.json, e.g. its Hub id [default: its path].
    #[arg(long, value_name = "NAME")]
    pub base_model: Option<String>,

    /// License id for the model card [default: the base model card's license, else "other"].
    #[arg(long, value_name = "ID")]
    pub license: Option<String>,

    /// Also write the base weights with the adapter merged in, under OUT/model/merged, loadable without peft
    /// (adapter releases only).
    #[arg(long)]
    pub merged: bool,

    /// Skip loading the written release back to score the check pair.
    #[arg(long)]
    pub no_verify: bool,

    /// Rewrite the release even if it is up to date.
    #[arg(long)]
    pub force: bool,

    /// Promotion gate: the previous release (its directory or its release stage's), scored on the first --eval
    /// stage's candidates; the release is written only if the new model beats it. A refusal exits with status 3
    /// and writes the verdict to OUT/gate.json and stderr.
    #[arg(long, value_name = "DIR", requires = "eval")]
    pub gate_baseline: Option<PathBuf>,

    /// The metric the gate compares (ndcg@10, recall@10, recall@100, mrr@10, ...).
    #[arg(
        long,
        value_name = "METRIC",
        default_value = "ndcg@10",
        requires = "gate_baseline"
    )]
    pub gate_metric: String,

    /// How much higher the new model's mean must be (it must be higher in any case).
    #[arg(
        long,
        value_name = "DELTA",
        default_value_t = 0.0,
        requires = "gate_baseline"
    )]
    pub gate_min_delta: f64,

    /// The largest p-value of the paired randomisation test that promotes.
    #[arg(
        long,
        value_name = "P",
        default_value_t = 0.05,
        requires = "gate_baseline"
    )]
    pub gate_max_p: f64,

    /// Where the check pair is scored: cpu, cuda or cuda:K.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceSpec,
}

/// Check a release: every file listed in release.json is present with its size and sha256 and nothing else is;
/// the base model has the recorded hashes; base + adapter, and the merged weights if any, load and score the
/// built-in check pair as recorded. Exits non-zero naming each problem.
#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// The release directory (or a release stage directory holding it under model/).
    pub release: PathBuf,

    /// The base model directory of an adapter release [default: the path recorded in release.json].
    #[arg(long, value_name = "DIR")]
    pub base: Option<PathBuf>,

    /// Where the models run: cpu, cuda or cuda:K.
    #[arg(long, default_value = "cpu", value_name = "DEVICE")]
    pub device: DeviceSpec,
}

/// Stage names the standalone command gives its inputs.
const TRAIN: &str = "train";

pub fn release(args: &ReleaseArgs, global: &Global) -> anyhow::Result<()> {
    let eval_names: Vec<String> = (0..args.eval.len()).map(|i| format!("eval-{i}")).collect();
    let config = ReleaseConfig {
        from: TRAIN.into(),
        eval_from: eval_names.clone(),
        model: args.model.clone(),
        base_model: args.base_model.clone(),
        license: args.license.clone(),
        merged: args.merged,
        verify: !args.no_verify,
        gate: args.gate_baseline.as_ref().map(|baseline| GateConfig {
            baseline: baseline.clone(),
            eval: None,
            metric: args.gate_metric.clone(),
            min_delta: args.gate_min_delta,
            max_p: args.gate_max_p,
        }),
    };
    let name = "release";
    let mut dirs = vec![
        (name.to_string(), args.out.clone()),
        (TRAIN.to_string(), args.train.clone()),
    ];
    dirs.extend(eval_names.into_iter().zip(args.eval.iter().cloned()));
    let options = RunOptions {
        force: args.force,
        device: args.device,
        policy: global.policy(),
        dirs: dirs.into_iter().collect(),
        ..Default::default()
    };
    let workdir = args.out.parent().map(PathBuf::from).unwrap_or_default();
    let stage = Box::new(ReleaseStage::new(config)?);
    let reports = Runner::new(workdir, 0, vec![(name.to_string(), stage)], options).run()?;
    print_summary(name, &reports);
    println!(
        "release: {}",
        args.out.join(outputs::release::MODEL).display()
    );
    Ok(())
}

pub fn verify_release(args: &VerifyArgs) -> anyhow::Result<()> {
    let dir = release_dir(&args.release);
    let device = args.device.candle()?;
    let report = verify(&dir, args.base.as_deref(), &device)?;
    println!(
        "{}: {} files ({} bytes) match {}",
        dir.display(),
        report.files,
        report.bytes,
        outputs::release::MANIFEST
    );
    if let Some(base) = &report.base {
        println!("base model {}: hashes match", base.display());
    }
    let e = report.expected;
    println!(
        "check pair as released: p_yes {:.6} z_yes {:.6} z_no {:.6}",
        e.p_yes, e.z_yes, e.z_no
    );
    for (variant, s) in &report.scores {
        println!(
            "  {variant:<8} p_yes {:.6} z_yes {:.6} z_no {:.6}",
            s.p_yes, s.z_yes, s.z_no
        );
    }
    println!("release verified");
    Ok(())
}

/// The release directory itself, or the one a release stage directory holds.
fn release_dir(path: &Path) -> PathBuf {
    let nested = path.join(outputs::release::MODEL);
    if !path.join(outputs::release::MANIFEST).is_file()
        && nested.join(outputs::release::MANIFEST).is_file()
    {
        nested
    } else {
        path.to_path_buf()
    }
}
