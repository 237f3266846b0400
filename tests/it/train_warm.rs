//! Warm start (issue 22): a LoRA run with `init_adapter` naming a release begins at that adapter's loss on the
//! same data, the release's base hashes are checked against the run's model, the adapter's shape must match the
//! run's `lora_*` keys, and a changed adapter reruns the stage.

use crate::common::cli::umrank_ok;
use crate::common::datasets::column;
use crate::common::train_data::{small_demo_data, upstream_dirs, DemoData};

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::Device;
use umrank::dataset::Dataset;
use umrank::pipeline::{Runner, StageOutcome};
use umrank::release::ReleaseManifest;
use umrank::schema::outputs::train::TRAIN_LOG;
use umrank::train::config::DataFormat;
use umrank::train::log::read_log;
use umrank::train::{train, RunSettings, TrainConfig, TrainInputs, TrainStage};

/// The training groups of `small_demo_data(_, &[], 2)`: one batch holds them all.
const GROUPS: usize = 40;

/// A copy of the tiny Qwen2.5-VL fixture, so the test can change it.
fn base_model(dir: &Path) -> PathBuf {
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/vlm/qwen2_5_vl");
    let base = dir.join("base");
    fs::create_dir_all(&base).unwrap();
    for entry in fs::read_dir(fixture).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), base.join(entry.file_name())).unwrap();
    }
    base
}

/// Every step sees every group (one batch), at a constant learning rate and without dropout, so that a run's
/// first steps are the same whatever `max_steps` is, and a step's loss is the loss of the weights it starts from.
fn config(base: &Path, extra: &str) -> TrainConfig {
    let mut table: toml::Table = toml::from_str(&format!(
        "model = '{}'\nmax_len = 512\ngroups_per_batch = {GROUPS}\nlr = 1e-2\ndecay = 'constant'\nlora_r = 4\n\
         lora_alpha = 8\nlora_dropout = 0\ncheckpoint_every = 0\nnegatives = 2",
        base.display()
    ))
    .unwrap();
    table.extend(toml::from_str::<toml::Table>(extra).unwrap());
    toml::Value::Table(table).try_into().unwrap()
}

fn inputs(data: &DemoData) -> TrainInputs {
    TrainInputs {
        groups: Dataset::open(&data.shards.join(DataFormat::Sft.dir_name())).unwrap(),
        corpus: None,
        images: Some(Dataset::open(&data.ingest.join("images")).unwrap()),
    }
}

fn settings(out: &Path) -> RunSettings {
    RunSettings {
        seed: 3,
        device: Device::Cpu,
        out_dir: out.to_path_buf(),
        run_key: "warm".into(),
        stop_after: None,
    }
}

/// Runs `config` as the stage `train` of a pipeline in `workdir` (seed 7) reading `data`.
fn run_in(workdir: &Path, data: &DemoData, config: TrainConfig) -> StageOutcome {
    Runner::new(
        workdir.to_path_buf(),
        7,
        vec![(
            "train".to_string(),
            Box::new(TrainStage::new(config).unwrap()) as Box<dyn umrank::pipeline::Stage>,
        )],
        upstream_dirs(data),
    )
    .run()
    .unwrap()
    .remove(0)
    .outcome
}

fn run_stage(data: &DemoData, config: TrainConfig) -> StageOutcome {
    run_in(&data.workdir, data, config)
}

#[test]
fn a_warm_start_from_a_release_begins_at_its_adapters_loss_and_checks_the_base() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 2);
    assert_eq!(column(&data.shards.join("cl"), "qid").len(), GROUPS);
    let base = base_model(tmp.path());

    // The previous run: three steps, then released.
    assert_eq!(
        run_stage(&data, config(&base, "max_steps = 3")),
        StageOutcome::Ran
    );
    let release = data.workdir.join("release");
    let train_dir = data.workdir.join("train");
    umrank_ok(&[
        "release",
        "--out",
        release.to_str().unwrap(),
        "--train",
        train_dir.to_str().unwrap(),
    ]);

    // The loss of the released adapter on the data: step 4 of the same run (same seed, same stage) taken one
    // step further.
    let longer = tmp.path().join("longer");
    assert_eq!(
        run_in(&longer, &data, config(&base, "max_steps = 4")),
        StageOutcome::Ran
    );
    let log = read_log(&longer.join("train").join(TRAIN_LOG)).unwrap();
    let (fresh_loss, adapter_loss) = (log[0].loss, log[3].loss);
    assert!(adapter_loss < fresh_loss, "{log:?}");

    let init = |path: &Path| format!("max_steps = 1\ninit_adapter = '{}'", path.display());
    let warm = train(
        &config(&base, &init(&release)),
        &inputs(&data),
        &settings(&tmp.path().join("warm")),
    )
    .unwrap();
    let warm_loss = warm.log[0].loss;
    assert!(
        (warm_loss - adapter_loss).abs() <= 1e-4 * adapter_loss.abs().max(1.0),
        "warm start begins at {warm_loss}, the released adapter's loss is {adapter_loss} (fresh: {fresh_loss})"
    );
    // The train stage's adapter directory is the same adapter.
    let from_dir = train(
        &config(&base, &init(&train_dir)),
        &inputs(&data),
        &settings(&tmp.path().join("from_dir")),
    )
    .unwrap();
    assert!((from_dir.log[0].loss - warm_loss).abs() <= 1e-5);

    // Other LoRA keys than the adapter's are refused, naming both.
    let err = train(
        &config(&base, &format!("{}\nlora_r = 8", init(&release))),
        &inputs(&data),
        &settings(&tmp.path().join("rank")),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("r 4") && err.contains("r 8"), "{err}");

    // A base that differs from the one the release records is refused, naming the file, both hashes and the path.
    let manifest = ReleaseManifest::read(&release.join("model")).unwrap();
    let recorded = manifest.base_model.unwrap().files[0].clone();
    assert_eq!(recorded.path, "config.json");
    let other = tmp.path().join("other");
    fs::create_dir_all(&other).unwrap();
    let other_base = base_model(&other);
    let changed = other_base.join("config.json");
    let mut text = fs::read_to_string(&changed).unwrap();
    text.push('\n');
    fs::write(&changed, text).unwrap();
    let found = umrank::digest::sha256_file(&changed).unwrap();
    let err = train(
        &config(&other_base, &init(&release)),
        &inputs(&data),
        &settings(&tmp.path().join("mismatch")),
    )
    .unwrap_err()
    .to_string();
    for part in [
        recorded.sha256.as_str(),
        found.as_str(),
        changed.to_str().unwrap(),
        release.to_str().unwrap(),
    ] {
        assert!(err.contains(part), "`{part}` not in: {err}");
    }
}

#[test]
fn a_changed_adapter_reruns_the_warm_stage() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 2);
    let base = base_model(tmp.path());
    let first = settings(&tmp.path().join("first"));
    train(&config(&base, "max_steps = 1"), &inputs(&data), &first).unwrap();
    let adapter = tmp.path().join("first/adapter");
    let warm = || {
        config(
            &base,
            &format!("max_steps = 1\ninit_adapter = '{}'", adapter.display()),
        )
    };
    assert_eq!(run_stage(&data, warm()), StageOutcome::Ran);
    assert_eq!(run_stage(&data, warm()), StageOutcome::UpToDate);
    // Another adapter of the same shape in the same place.
    train(
        &config(&base, "max_steps = 2"),
        &inputs(&data),
        &settings(&tmp.path().join("second")),
    )
    .unwrap();
    let weights = "adapter_model.safetensors";
    fs::copy(
        tmp.path().join("second/adapter").join(weights),
        adapter.join(weights),
    )
    .unwrap();
    assert_eq!(run_stage(&data, warm()), StageOutcome::Ran);

    let err = TrainStage::new(config(
        &base,
        &format!("tune = 'full'\ninit_adapter = '{}'", adapter.display()),
    ))
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("`init_adapter`"), "{err}");
}
