//! The release stage's promotion gate and lineage (issue 22): on the small demo world with the tiny Qwen2.5-VL
//! fixture as base, a release from an (all but) untrained adapter is refused against a trained baseline (exit
//! status 3, gate.json and stderr say which test failed with both models' figures, no release written), a trained
//! model is promoted over the untrained release, and the promoted release's card and release.json carry the
//! lineage: the previous release's hash, the data snapshot and what changed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, Float32Builder, ListBuilder, RecordBatch, StringArray, StringBuilder, StructBuilder,
    UInt32Array, UInt32Builder,
};
use arrow::datatypes::{DataType, Field};
use umrank::dataset::DatasetWriter;
use umrank::digest::sha256_file;
use umrank::eval::{EvalConfig, EvalStage};
use umrank::pipeline::{PipelineError, Runner, Stage};
use umrank::release::gate::GATE_JSON;
use umrank::release::{
    GateConfig, GateRefused, GateVerdict, ReleaseConfig, ReleaseManifest, ReleaseStage,
    GATE_REFUSED_EXIT,
};
use umrank::shard::Shard;
use umrank::train::TrainStage;

use crate::common::cli::umrank_ok;
use crate::common::datasets::{column, list_column};
use crate::common::train_data::{read_queries, small_demo_data, upstream_dirs, DemoData};

fn base_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/vlm/qwen2_5_vl")
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A candidates dataset of the training groups: each group's negatives ranked above its positive, so the first
/// stage is poor and a reranker that learned the groups lifts the positive.
fn write_candidates(data: &DemoData, dir: &Path) {
    let groups = data.shards.join("cl");
    let (qids, positives, negatives) = (
        column(&groups, "qid"),
        column(&groups, "positive"),
        list_column(&groups, "negatives"),
    );
    let fields = vec![
        Field::new("did", DataType::Utf8, false),
        Field::new("score", DataType::Float32, false),
        Field::new("rank", DataType::UInt32, false),
    ];
    let entries = StructBuilder::new(
        fields.clone(),
        vec![
            Box::new(StringBuilder::new()),
            Box::new(Float32Builder::new()),
            Box::new(UInt32Builder::new()),
        ],
    );
    let item = Field::new("item", DataType::Struct(fields.into()), false);
    let mut ranked = ListBuilder::new(entries).with_field(Arc::new(item));
    for (positive, negatives) in positives.iter().zip(&negatives) {
        let list = negatives.iter().chain([positive.as_ref().unwrap()]);
        let entries = ranked.values();
        for (rank, did) in list.enumerate() {
            entries
                .field_builder::<StringBuilder>(0)
                .unwrap()
                .append_value(did);
            entries
                .field_builder::<Float32Builder>(1)
                .unwrap()
                .append_value(1.0 - rank as f32 * 0.1);
            entries
                .field_builder::<UInt32Builder>(2)
                .unwrap()
                .append_value(rank as u32 + 1);
            entries.append(true);
        }
        ranked.append(true);
    }
    let mut writer =
        DatasetWriter::create(&dir.join("candidates"), "candidates", Shard::ALL).unwrap();
    let columns: Vec<ArrayRef> = vec![
        Arc::new(qids.iter().map(|q| q.as_deref()).collect::<StringArray>()),
        Arc::new(ranked.finish()),
        Arc::new(
            qids.iter()
                .map(|_| Some("fixture-retriever"))
                .collect::<StringArray>(),
        ),
        Arc::new(UInt32Array::from(vec![10u32; qids.len()])),
    ];
    let batch = RecordBatch::try_new(writer.arrow_schema(), columns).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
}

/// train -> eval (of the train stage's adapter on the candidates) -> release under `work`.
fn pipeline(
    data: &DemoData,
    candidates: &Path,
    work: &Path,
    train: &str,
    gate: Option<GateConfig>,
) -> Result<(), PipelineError> {
    let mut table: toml::Table = toml::from_str(&format!(
        "model = '{}'\nmax_len = 512\ngroups_per_batch = 8\nlora_r = 4\nlora_alpha = 8\nlora_dropout = 0\n\
         checkpoint_every = 0\nnegatives = 2\ndata = 'cl'",
        s(&base_dir())
    ))
    .unwrap();
    table.extend(toml::from_str::<toml::Table>(train).unwrap());
    let mut eval = EvalConfig::new(base_dir());
    eval.ingest_dir = Some(data.ingest.clone());
    eval.candidates_dir = Some(candidates.to_path_buf());
    eval.adapter_from = Some("train".into());
    eval.splits = Some(vec!["train".into()]);
    eval.k = 3;
    eval.batch = 3;
    eval.permutations = 2000;
    let release = ReleaseConfig {
        eval_from: vec!["eval".into()],
        verify: false,
        gate,
        ..Default::default()
    };
    let stages: Vec<(String, Box<dyn Stage>)> = vec![
        (
            "train".into(),
            Box::new(TrainStage::new(toml::Value::Table(table).try_into().unwrap()).unwrap()),
        ),
        ("eval".into(), Box::new(EvalStage::new(eval).unwrap())),
        (
            "release".into(),
            Box::new(ReleaseStage::new(release).unwrap()),
        ),
    ];
    Runner::new(work.to_path_buf(), 7, stages, upstream_dirs(data))
        .run()
        .map(|_| ())
}

fn gate(baseline: &Path) -> GateConfig {
    GateConfig {
        baseline: baseline.to_path_buf(),
        eval: None,
        metric: "ndcg@10".into(),
        min_delta: 0.0,
        max_p: 0.05,
    }
}

fn verdict(stage: &Path) -> GateVerdict {
    serde_json::from_str(&fs::read_to_string(stage.join(GATE_JSON)).unwrap()).unwrap()
}

const TRAINED: &str = "max_steps = 120\nlr = 1e-2";
const UNTRAINED: &str = "max_steps = 1\nlr = 1e-9";

#[test]
fn the_gate_refuses_a_worse_model_promotes_a_better_one_and_the_card_carries_the_lineage() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 2);
    let candidates = tmp.path().join("candidates");
    write_candidates(&data, &candidates);
    let (trained, untrained) = (tmp.path().join("trained"), tmp.path().join("untrained"));

    pipeline(&data, &candidates, &trained, TRAINED, None).unwrap();
    let baseline = trained.join("release");
    assert!(baseline.join("model/release.json").is_file());

    // An untrained adapter against the trained release: refused, in the pipeline ...
    let err = pipeline(
        &data,
        &candidates,
        &untrained,
        UNTRAINED,
        Some(gate(&baseline)),
    )
    .unwrap_err();
    let PipelineError::Stage { stage, source } = &err else {
        panic!("not a stage error: {err}");
    };
    assert_eq!(stage, "release");
    let refused = source
        .downcast_ref::<GateRefused>()
        .unwrap_or_else(|| panic!("not a refusal: {source}"));
    let refusal = verdict(&untrained.join("release"));
    assert_eq!(*refused.verdict, refusal);
    assert!(!refusal.promoted && refusal.failed.contains(&"min_delta".to_string()));
    assert!(
        refusal.delta < 0.0 && refusal.new.value < refusal.baseline.value,
        "{refusal:?}"
    );
    assert_eq!(
        refusal.queries,
        read_queries(&data.ingest)
            .iter()
            .filter(|q| q.split == "train")
            .count()
    );
    assert_eq!(
        refusal.baseline.adapter.as_deref(),
        Some(baseline.join("model").as_path())
    );
    assert!(!untrained.join("release/model").exists());

    // ... and by `umrank release`, with its own exit status and the verdict on stderr.
    let cli_out = untrained.join("cli");
    let out = Command::new(env!("CARGO_BIN_EXE_umrank"))
        .args([
            "release",
            "--out",
            s(&cli_out),
            "--train",
            s(&untrained.join("train")),
            "--eval",
            s(&untrained.join("eval")),
            "--gate-baseline",
            s(&baseline),
            "--no-verify",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(GATE_REFUSED_EXIT)),
        "{stderr}"
    );
    assert!(stderr.contains("failed: min_delta"), "{stderr}");
    let cli_verdict = verdict(&cli_out);
    assert!(!cli_verdict.promoted);
    for figure in [cli_verdict.new.value, cli_verdict.baseline.value] {
        assert!(
            stderr.contains(&format!("{figure:.4}")),
            "{figure} not in {stderr}"
        );
    }
    assert!(!cli_out.join("model").exists());

    // The untrained model released without a gate; the trained one is promoted over it.
    let previous = untrained.join("plain");
    umrank_ok(&[
        "release",
        "--out",
        s(&previous),
        "--train",
        s(&untrained.join("train")),
        "--eval",
        s(&untrained.join("eval")),
        "--no-verify",
    ]);
    let promoted = trained.join("gated");
    let stdout = umrank_ok(&[
        "release",
        "--out",
        s(&promoted),
        "--train",
        s(&trained.join("train")),
        "--eval",
        s(&trained.join("eval")),
        "--gate-baseline",
        s(&previous),
        "--no-verify",
    ]);
    let promotion = verdict(&promoted);
    assert!(
        promotion.promoted && promotion.failed.is_empty(),
        "{promotion:?}\n{stdout}"
    );
    assert!(promotion.delta > 0.0 && promotion.p_value <= 0.05);

    let manifest = ReleaseManifest::read(&promoted.join("model")).unwrap();
    let lineage = manifest.lineage;
    let before = lineage.previous.expect("the previous release");
    let previous_json = previous.join("model/release.json");
    assert_eq!(before.sha256, sha256_file(&previous_json).unwrap());
    let data_now = lineage.data.expect("a data snapshot");
    assert_eq!(before.data.as_ref(), Some(&data_now));
    assert_eq!(data_now.queries, read_queries(&data.ingest).len());
    assert!(data_now.documents > 0 && data_now.judgements > 0);
    let changes = lineage.changes.expect("changes");
    assert!(changes.exact);
    for change in [changes.queries, changes.documents, changes.judgements] {
        assert_eq!((change.added, change.removed), (0, 0));
    }
    let card = fs::read_to_string(promoted.join("model/README.md")).unwrap();
    assert!(card.contains("## Lineage"), "{card}");
    assert!(card.contains(&before.sha256), "{card}");
    assert!(card.contains(&data_now.fingerprints[0]), "{card}");
}

#[test]
fn bad_gate_settings_fail_before_any_work() {
    let config = |gate: GateConfig, eval_from: &[&str]| {
        ReleaseStage::new(ReleaseConfig {
            eval_from: eval_from.iter().map(|s| s.to_string()).collect(),
            gate: Some(gate),
            ..Default::default()
        })
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    };
    let base = gate(Path::new("prev"));
    assert!(config(base.clone(), &[]).contains("eval_from"));
    let metric = GateConfig {
        metric: "ndcg@7".into(),
        ..base.clone()
    };
    assert!(config(metric, &["eval"]).contains("ndcg@7"));
    let p = GateConfig {
        max_p: 0.0,
        ..base.clone()
    };
    assert!(config(p, &["eval"]).contains("max_p"));
    let other = GateConfig {
        eval: Some("eval2".into()),
        ..base
    };
    assert!(config(other, &["eval"]).contains("eval2"));
}
