//! The release stage, `umrank release` and `umrank verify` on the tiny Qwen2.5-VL fixture with a LoRA adapter
//! written by our PEFT writer: a release verifies and loads back giving the same scores as base + adapter (both
//! the adapter and the merged variant, scored through `umrank score`), verify names every missing, unlisted and
//! changed file, refuses a different base, and the model card carries the front matter, metrics and provenance
//! of the stage manifests.

use std::collections::BTreeMap;
use std::fs;
use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use umrank::dataset::DatasetWriter;
use umrank::digest::sha256_file;
use umrank::models::adapters::lora::{LoraAdapter, LoraConfig, DECODER_TARGETS};
use umrank::models::adapters::peft;
use umrank::models::decoder::Decoder;
use umrank::models::qwen2_vl::PairScore;
use umrank::pipeline::{InputRecord, Manifest, OutputRecord, PipelineConfig};
use umrank::release::{verify, ReleaseError, ReleaseKind, ReleaseManifest};
use umrank::schema;
use umrank::schema::outputs::release::MERGED as MERGED_DIR;
use umrank::shard::Shard;

use crate::common::cli::{umrank_fails, umrank_ok};

fn fixture(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(path)
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// A copy of the tiny Qwen2.5-VL checkpoint (config, weights, tokenizer; no preprocessor config), optionally with a
/// model card declaring a license.
fn base_model(dir: &Path, license: Option<&str>) -> PathBuf {
    base_model_from("vlm/qwen2_5_vl", dir, license)
}

fn base_model_from(name: &str, dir: &Path, license: Option<&str>) -> PathBuf {
    let base = dir.join("base");
    fs::create_dir_all(&base).unwrap();
    for entry in fs::read_dir(fixture(name)).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), base.join(entry.file_name())).unwrap();
    }
    if let Some(license) = license {
        fs::write(
            base.join("README.md"),
            format!("---\nlicense: {license}\n---\n# tiny\n"),
        )
        .unwrap();
        fs::write(base.join("LICENSE"), "license text\n").unwrap();
    }
    base
}

/// A LoRA adapter on every decoder projection of `base` with random A and B (B nonzero, so it changes the
/// scores), saved by our PEFT writer.
fn write_adapter(base: &Path, dir: &Path) {
    let mut decoder = Decoder::from_model_dir(base, DType::F32, &Device::Cpu).unwrap();
    let config = LoraConfig {
        r: 4,
        alpha: 8.0,
        dropout: 0.0,
        target_modules: DECODER_TARGETS.iter().map(|t| t.to_string()).collect(),
        use_rslora: false,
    };
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut random = |rows: usize, cols: usize| {
        let values: Vec<f32> = (0..rows * cols)
            .map(|_| rng.random_range(-0.5f32..0.5))
            .collect();
        Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
    };
    for (index, linear) in decoder.linears_mut().into_iter().enumerate() {
        let a = random(config.r, linear.in_dim());
        let b = random(linear.out_dim(), config.r);
        let adapter =
            LoraAdapter::from_weights(a, b, &config, (0, index as u64), DType::F32).unwrap();
        linear.set_lora(Some(adapter)).unwrap();
    }
    peft::save(dir, &config, &decoder.linears(), Some("tiny")).unwrap();
}

/// A finished stage directory: its manifest (the runner's format) over the files already in it.
fn write_stage(dir: &Path, kind: &str, seed: u64, config: serde_json::Value, upstream: &[&Path]) {
    fs::create_dir_all(dir).unwrap();
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(here) = pending.pop() {
        for entry in fs::read_dir(&here).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files.sort();
    let outputs = files
        .iter()
        .map(|path| OutputRecord {
            output: "out".into(),
            path: path.strip_prefix(dir).unwrap().to_path_buf(),
            rows: None,
            bytes: fs::metadata(path).unwrap().len(),
            sha256: sha256_file(path).unwrap(),
            mtime_ns: 0,
        })
        .collect();
    let inputs = upstream
        .iter()
        .map(|up| InputRecord::Stage {
            name: up.file_name().unwrap().to_string_lossy().into_owned(),
            dir: up.to_path_buf(),
            hash: format!("hash-of-{}", up.display()),
        })
        .collect();
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let manifest = Manifest {
        umrank_version: "0.1.0".into(),
        stage: name.clone(),
        kind: kind.into(),
        shard: Shard::ALL,
        seed,
        device: "cpu".into(),
        config,
        config_hash: format!("config-of-{name}"),
        fingerprint: format!("fingerprint-of-{name}"),
        inputs,
        observed: Vec::new(),
        outputs,
        records: 1,
        rejects: 0,
        started_at: "2026-01-01T00:00:00Z".into(),
        finished_at: "2026-01-01T00:00:01Z".into(),
        elapsed_seconds: 1.0,
    };
    manifest.write(&dir.join("manifest.json")).unwrap();
}

/// An ingest stage whose queries come from two datasets.
fn write_ingest(dir: &Path) {
    let lines = [
        r#"{"qid": "9:1", "modality": "text", "text": "a cat", "instruction": "Find it.", "task_id": 0, "task": "text->image", "dataset": "VisualNews", "pool": "visualnews_task0", "split": "train", "source_file": "q.jsonl", "source_line": 1}"#,
        r#"{"qid": "1:1", "modality": "text", "text": "a dog", "instruction": "Find it.", "task_id": 0, "task": "text->image", "dataset": "CIRR", "pool": "cirr_task0", "split": "train", "source_file": "q.jsonl", "source_line": 2}"#,
        r#"{"qid": "1:2", "modality": "text", "text": "a cow", "instruction": "Find it.", "task_id": 0, "task": "text->image", "dataset": "CIRR", "pool": "cirr_task0", "split": "test", "source_file": "q.jsonl", "source_line": 3}"#,
    ];
    let arrow = schema::get("queries").unwrap().arrow();
    let mut reader = arrow::json::ReaderBuilder::new(Arc::clone(&arrow))
        .build(Cursor::new(lines.join("\n")))
        .unwrap();
    let batch = reader.next().unwrap().unwrap();
    let mut writer = DatasetWriter::create(&dir.join("queries"), "queries", Shard::ALL).unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    write_stage(
        dir,
        "ingest",
        3,
        serde_json::json!({"format": "mbeir"}),
        &[],
    );
}

/// What the train stage of [`write_pipeline`] leaves.
#[derive(Clone, Copy, PartialEq)]
enum Tuned {
    /// LoRA on `base`: `adapter/`, with `model = base` in its config.
    Adapter,
    /// Full fine-tuning from a random initialisation: `model/`, a complete model directory (here a copy of the
    /// base fixture, which has the layout the train stage writes).
    Full,
}

/// ingest -> embed -> mine -> shards -> train, and an eval stage of the train stage's output whose metrics.json
/// has the eval stage's layout; returns (train, eval) directories.
fn write_pipeline(work: &Path, base: &Path, tuned: Tuned) -> (PathBuf, PathBuf) {
    let (ingest, embed, mine, shards, train, eval) = (
        work.join("ingest"),
        work.join("embed"),
        work.join("mine"),
        work.join("shards"),
        work.join("train"),
        work.join("eval"),
    );
    write_ingest(&ingest);
    write_stage(
        &embed,
        "embed",
        3,
        serde_json::json!({"from": "ingest", "model": "gme-qwen2-vl-2b", "batch_size": 8}),
        &[&ingest],
    );
    write_stage(
        &mine,
        "mine",
        3,
        serde_json::json!({"from": "ingest", "embeddings_from": "embed", "negatives_per_group": 16,
                           "filter": {"relative_margin": 0.05}}),
        &[&embed, &ingest],
    );
    write_stage(
        &shards,
        "shards",
        3,
        serde_json::json!({"ingest": "ingest", "mine": "mine"}),
        &[&mine, &ingest],
    );
    let (config, model, adapter) = match tuned {
        Tuned::Adapter => {
            write_adapter(base, &train.join("adapter"));
            let config = serde_json::json!({"model": s(base), "objective": "sft", "tune": "lora", "lr": 1e-4});
            (config, base.to_path_buf(), Some(train.join("adapter")))
        }
        Tuned::Full => {
            let model = train.join("model");
            fs::create_dir_all(&model).unwrap();
            for name in [
                "config.json",
                "model.safetensors",
                "tokenizer.json",
                "tokenizer_config.json",
            ] {
                fs::copy(base.join(name), model.join(name)).unwrap();
            }
            let config = serde_json::json!({"init": "tiny", "tokenizer": s(base), "objective": "cl", "tune": "full"});
            (config, model, None)
        }
    };
    write_stage(&train, "train", 3, config, &[&shards]);
    fs::create_dir_all(&eval).unwrap();
    let averages = |ndcg: f64, mrr: f64| {
        serde_json::json!({
            "mean": {"ndcg@10": ndcg, "mrr@10": mrr},
            "macro_average": {"ndcg@10": ndcg - 0.01, "mrr@10": mrr - 0.01},
            "per_task": {"text->image": {"ndcg@10": ndcg, "mrr@10": mrr}},
            "per_query": {"1:2": {"ndcg@10": ndcg, "mrr@10": mrr}}
        })
    };
    let test = |d: f64, p: f64| serde_json::json!({"mean_difference": d, "p_value": p, "permutations": 1000});
    let metrics = serde_json::json!({
        "model": model, "adapter": adapter, "score": "p_yes", "k": 10, "splits": ["test"],
        "retrievers": ["gme"], "scored_pairs": 10, "rejected_pairs": 0,
        "metrics": ["ndcg@10", "mrr@10"], "queries": 1, "task_queries": {"text->image": 1},
        "baseline": "first_stage", "candidate": "reranked",
        "runs": {"first_stage": averages(0.4102, 0.38), "reranked": averages(0.5234, 0.4911)},
        "significance": {"all": {"ndcg@10": test(0.1132, 0.01), "mrr@10": test(0.1111, 0.02)}}
    });
    fs::write(eval.join("metrics.json"), metrics.to_string()).unwrap();
    write_stage(
        &eval,
        "eval",
        3,
        serde_json::json!({"score": "p_yes"}),
        &[&train],
    );
    (train, eval)
}

/// Pairs for `umrank score`, one with the fixture's 84 x 56 image as the document.
fn write_pairs(dir: &Path) -> PathBuf {
    fs::copy(fixture("vlm/image_1.png"), dir.join("image_1.png")).unwrap();
    let path = dir.join("pairs.jsonl");
    fs::write(
        &path,
        [
            r#"{"instruction": "Find a matching photo.", "query_text": "a red square", "doc_text": "a photo", "doc_image": "image_1.png"}"#,
            r#"{"instruction": "Match.", "query_text": "what is this?", "doc_text": "a red square on grey"}"#,
        ]
        .join("\n"),
    )
    .unwrap();
    path
}

fn scores(stdout: &str) -> Vec<PairScore> {
    stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

fn assert_close(got: &[PairScore], want: &[PairScore], tolerance: f32) {
    assert_eq!(got.len(), want.len());
    for (g, w) in got.iter().zip(want) {
        for (a, b) in [(g.p_yes, w.p_yes), (g.z_yes, w.z_yes), (g.z_no, w.z_no)] {
            assert!(
                (a - b).abs() <= tolerance * b.abs().max(1.0),
                "{g:?} != {w:?}"
            );
        }
    }
}

struct Released {
    _tmp: tempfile::TempDir,
    base: PathBuf,
    train: PathBuf,
    out: PathBuf,
    release: PathBuf,
}

fn release(merged: bool, eval: bool, license: Option<&str>) -> Released {
    release_of("vlm/qwen2_5_vl", merged, eval, license)
}

fn release_of(fixture: &str, merged: bool, eval: bool, license: Option<&str>) -> Released {
    release_tuned(fixture, Tuned::Adapter, merged, eval, license)
}

fn release_tuned(
    fixture: &str,
    tuned: Tuned,
    merged: bool,
    eval: bool,
    license: Option<&str>,
) -> Released {
    let tmp = tempfile::tempdir().unwrap();
    let base = base_model_from(fixture, tmp.path(), license);
    let (train, eval_dir) = write_pipeline(&tmp.path().join("work"), &base, tuned);
    let out = tmp.path().join("work/release");
    let mut args = vec!["release", "--out", s(&out), "--train", s(&train)];
    if eval {
        args.extend(["--eval", s(&eval_dir)]);
    }
    if merged {
        args.push("--merged");
    }
    let stdout = umrank_ok(&args);
    assert!(stdout.contains("release"), "{stdout}");
    Released {
        base,
        train,
        release: out.join("model"),
        out,
        _tmp: tmp,
    }
}

#[test]
fn release_verifies_and_scores_like_base_plus_adapter() {
    let r = release(true, true, Some("apache-2.0"));
    let report = verify(&r.release, None, &Device::Cpu).unwrap();
    let variants: Vec<&str> = report.scores.iter().map(|(v, _)| v.as_str()).collect();
    assert_eq!(variants, ["adapter", "merged"]);
    assert!(report.files >= 10, "{report:?}");

    let pairs = write_pairs(r._tmp.path());
    let score = |extra: &[&str]| {
        let mut args = vec!["score", "--pairs", s(&pairs), "--batch", "2"];
        args.extend_from_slice(extra);
        scores(&umrank_ok(&args))
    };
    let adapter_dir = r.train.join("adapter");
    let direct = score(&["--model", s(&r.base), "--adapter", s(&adapter_dir)]);
    let base_only = score(&["--model", s(&r.base)]);
    let released_adapter = score(&["--model", s(&r.base), "--adapter", s(&r.release)]);
    let merged_dir = r.release.join(MERGED_DIR);
    let merged = score(&["--model", s(&merged_dir)]);

    assert!(
        (direct[0].z_yes - base_only[0].z_yes).abs() > 1e-3,
        "the adapter must change the scores for this test to mean anything: {direct:?} vs {base_only:?}"
    );
    assert_close(&released_adapter, &direct, 1e-6);
    assert_close(&merged, &direct, 1e-4);

    let out = umrank_ok(&["verify", s(&r.out)]);
    assert!(out.contains("release verified"), "{out}");
}

/// transformers >= 4.52 keeps a Qwen2-VL decoder under `model.language_model.`, and peft matches adapter keys to
/// module paths literally: an adapter trained on a checkpoint in the flat layout is released in the nested one,
/// tensors unchanged, and still verifies.
#[test]
fn a_flat_layout_vl_adapter_is_released_in_the_nested_layout() {
    let r = release_of("vlm/qwen2_vl", false, false, None);
    let keys = |path: &Path| {
        let bytes = fs::read(path).unwrap();
        safetensors::SafeTensors::deserialize(&bytes)
            .unwrap()
            .tensors()
            .into_iter()
            .map(|(name, view)| (name, view.data().to_vec()))
            .collect::<BTreeMap<_, _>>()
    };
    let trained = keys(&r.train.join("adapter/adapter_model.safetensors"));
    let released = keys(&r.release.join("adapter_model.safetensors"));
    assert_eq!(trained.len(), released.len());
    for (name, data) in &trained {
        let rest = name.strip_prefix("base_model.model.model.layers.").unwrap();
        let nested = format!("base_model.model.model.language_model.layers.{rest}");
        assert_eq!(released.get(&nested), Some(data), "{nested}");
    }
    verify(&r.release, None, &Device::Cpu).unwrap();
}

#[test]
fn merged_weights_keep_names_and_untouched_tensors() {
    let r = release(true, false, None);
    let read = |path: &Path| {
        let bytes = fs::read(path).unwrap();
        let tensors = safetensors::SafeTensors::deserialize(&bytes)
            .unwrap()
            .tensors()
            .into_iter()
            .map(|(name, view)| {
                (
                    name,
                    (view.dtype(), view.shape().to_vec(), view.data().to_vec()),
                )
            })
            .collect::<BTreeMap<_, _>>();
        tensors
    };
    let base = read(&r.base.join("model.safetensors"));
    let merged = read(&r.release.join(MERGED_DIR).join("model.safetensors"));
    assert_eq!(
        base.keys().collect::<Vec<_>>(),
        merged.keys().collect::<Vec<_>>()
    );
    let mut changed = 0;
    for (name, (dtype, shape, data)) in &base {
        let (m_dtype, m_shape, m_data) = &merged[name];
        assert_eq!((dtype, shape), (m_dtype, m_shape), "{name}");
        let adapted = name.starts_with("model.language_model.layers.")
            && DECODER_TARGETS
                .iter()
                .any(|t| name.ends_with(&format!("{t}.weight")));
        if adapted {
            assert_ne!(data, m_data, "{name} should hold the merged adapter");
            changed += 1;
        } else {
            assert_eq!(data, m_data, "{name} should be copied unchanged");
        }
    }
    assert_eq!(changed, 2 * DECODER_TARGETS.len());
}

#[test]
fn verify_names_missing_unlisted_and_changed_files() {
    let r = release(true, false, None);
    let rel = &r.release;
    let mut config = fs::read(rel.join("tokenizer_config.json")).unwrap();
    config.extend_from_slice(b" ");
    fs::write(rel.join("tokenizer_config.json"), config).unwrap();
    fs::remove_file(rel.join("merged/config.json")).unwrap();
    fs::write(rel.join("notes.txt"), "hello").unwrap();
    let stderr = umrank_fails(&["verify", s(rel)]);
    for expected in [
        "missing: merged/config.json",
        "not listed: notes.txt",
        "changed: tokenizer_config.json",
    ] {
        assert!(stderr.contains(expected), "`{expected}` not in: {stderr}");
    }
    assert!(!stderr.contains("adapter_model.safetensors"), "{stderr}");

    match verify(rel, None, &Device::Cpu) {
        Err(ReleaseError::Tampered { problems, .. }) => assert_eq!(problems.len(), 3),
        other => panic!("expected a tampered release, got {other:?}"),
    }
}

#[test]
fn verify_refuses_a_different_base() {
    let r = release(false, false, None);
    let other = r._tmp.path().join("other");
    fs::create_dir_all(&other).unwrap();
    for entry in fs::read_dir(&r.base).unwrap() {
        let entry = entry.unwrap();
        fs::copy(entry.path(), other.join(entry.file_name())).unwrap();
    }
    let weights = other.join("model.safetensors");
    let mut bytes = fs::read(&weights).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    fs::write(&weights, bytes).unwrap();
    let stderr = umrank_fails(&["verify", s(&r.release), "--base", s(&other)]);
    assert!(
        stderr.contains(&weights.display().to_string()) && stderr.contains("not the one"),
        "{stderr}"
    );
}

/// The YAML front matter as key -> lines.
fn front_matter(card: &str) -> BTreeMap<String, Vec<String>> {
    let body = card.strip_prefix("---\n").unwrap();
    let yaml = &body[..body.find("\n---\n").unwrap()];
    let mut keys: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = String::new();
    for line in yaml.lines() {
        if let Some(item) = line.strip_prefix("- ") {
            keys.get_mut(&current).unwrap().push(item.to_string());
        } else {
            let (key, value) = line.split_once(':').unwrap();
            current = key.to_string();
            let value = value.trim();
            keys.insert(
                current.clone(),
                if value.is_empty() {
                    vec![]
                } else {
                    vec![value.to_string()]
                },
            );
        }
    }
    keys
}

#[test]
fn model_card_carries_front_matter_metrics_and_provenance() {
    let r = release(false, true, Some("apache-2.0"));
    let card = fs::read_to_string(r.release.join("README.md")).unwrap();
    let yaml = front_matter(&card);
    assert_eq!(yaml["base_model"], [format!("\"{}\"", r.base.display())]);
    assert_eq!(yaml["license"], ["\"apache-2.0\""]);
    assert_eq!(
        yaml["tags"],
        ["\"reranker\"", "\"multimodal\"", "\"umrank\"", "\"sft\""]
    );
    assert_eq!(yaml["datasets"], ["\"CIRR\"", "\"VisualNews\""]);
    for row in [
        "| eval | first_stage | mean | 0.4102 | 0.3800 |",
        "| eval | first_stage | macro | 0.4002 | 0.3700 |",
        "| eval | reranked | mean | 0.5234 | 0.4911 |",
        "| eval | reranked | macro | 0.5134 | 0.4811 |",
        "- eval stage `eval`, reranked against first_stage over 1 queries: ndcg@10 +0.1132 (p = 0.0100), \
         mrr@10 +0.1111 (p = 0.0200)",
        "- Seed: 3",
        "- LoRA: rank 4, alpha 8, on ",
        "- Mining model: `\"gme-qwen2-vl-2b\"`",
        "\"relative_margin\":0.05",
        "- Shards config: `{\"ingest\":\"ingest\",\"mine\":\"mine\"}`",
    ] {
        assert!(card.contains(row), "`{row}` not in:\n{card}");
    }
    assert!(!card.contains("not the weights of this release"), "{card}");
    assert!(card.contains("| train | train | 3 | `config-of-train` | `fingerprint-of-train` |"));
    assert!(card.contains("| ingest | ingest |"), "{card}");
    assert!(card.contains("from its model card"), "{card}");
    assert!(r.release.join("LICENSE").is_file());

    let manifest = ReleaseManifest::read(&r.release).unwrap();
    let kinds: Vec<&str> = manifest
        .provenance
        .upstream
        .iter()
        .map(|s| s.kind.as_str())
        .collect();
    assert_eq!(kinds, ["shards", "ingest", "mine", "embed"]);
    assert_eq!(manifest.provenance.evals.len(), 1);
    let adapter_config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(r.release.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(adapter_config["base_model_name_or_path"], s(&r.base));
    let listed: Vec<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
    for file in [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "config.json",
        "preprocessor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        assert!(listed.contains(&file), "{file} not in {listed:?}");
    }
}

#[test]
fn a_release_without_eval_or_license_says_so() {
    let r = release(false, false, None);
    let card = fs::read_to_string(r.release.join("README.md")).unwrap();
    assert_eq!(front_matter(&card)["license"], ["\"other\""]);
    assert!(card.contains("neither the release config nor the base model's card names a license"));
    assert!(card.contains("No evaluation metrics"), "{card}");
}

/// A train stage that fine-tuned every weight (from a random initialisation) leaves `model/`: the release holds
/// that model whole, scores like it, verifies without a base, and says in its card where it came from.
#[test]
fn a_fully_fine_tuned_model_is_released_whole() {
    let r = release_tuned("vlm/qwen2_5_vl", Tuned::Full, false, true, None);
    let report = verify(&r.release, None, &Device::Cpu).unwrap();
    assert_eq!(report.kind, ReleaseKind::Full);
    assert!(report.base.is_none());
    assert_eq!(report.scores.len(), 1);
    assert_eq!(report.scores[0].0, "full");

    let trained = r.train.join("model");
    assert_eq!(
        sha256_file(&r.release.join("model.safetensors")).unwrap(),
        sha256_file(&trained.join("model.safetensors")).unwrap()
    );
    assert!(!r.release.join("adapter_config.json").exists());
    let pairs = write_pairs(r._tmp.path());
    let score = |model: &Path| {
        scores(&umrank_ok(&[
            "score",
            "--pairs",
            s(&pairs),
            "--batch",
            "2",
            "--model",
            s(model),
        ]))
    };
    assert_close(&score(&r.release), &score(&trained), 1e-6);

    let card = fs::read_to_string(r.release.join("README.md")).unwrap();
    let yaml = front_matter(&card);
    assert!(!yaml.contains_key("base_model"), "{card}");
    assert_eq!(yaml["library_name"], ["transformers"]);
    assert_eq!(
        yaml["tags"],
        ["\"reranker\"", "\"multimodal\"", "\"umrank\"", "\"cl\""]
    );
    for text in [
        "trained from scratch",
        "random initialisation (`\"tiny\"`)",
        "- Tuning: every weight (full fine-tuning)",
        "| eval | reranked | mean | 0.5234 | 0.4911 |",
    ] {
        assert!(card.contains(text), "`{text}` not in:\n{card}");
    }
    assert!(!card.contains("not the weights of this release"), "{card}");

    let stderr = umrank_fails(&["verify", s(&r.release), "--base", s(&r.base)]);
    assert!(stderr.contains("loads without a base"), "{stderr}");
    let stderr = umrank_fails(&[
        "release",
        "--out",
        s(&r.out),
        "--train",
        s(&r.train),
        "--merged",
        "--force",
    ]);
    assert!(stderr.contains("adapter releases only"), "{stderr}");
}

/// An eval stage that scored other weights than the released ones is named in the card, not hidden.
#[test]
fn metrics_of_other_weights_are_flagged() {
    let r = release(false, true, None);
    let metrics_path = r.train.parent().unwrap().join("eval/metrics.json");
    let mut metrics: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&metrics_path).unwrap()).unwrap();
    metrics["adapter"] = serde_json::Value::Null;
    fs::write(&metrics_path, metrics.to_string()).unwrap();
    let eval = metrics_path.parent().unwrap();
    write_stage(
        eval,
        "eval",
        3,
        serde_json::json!({"score": "p_yes"}),
        &[&r.train],
    );
    umrank_ok(&[
        "release",
        "--out",
        s(&r.out),
        "--train",
        s(&r.train),
        "--eval",
        s(eval),
    ]);
    let card = fs::read_to_string(r.release.join("README.md")).unwrap();
    assert!(
        card.contains("eval stage `eval` scored with model")
            && card.contains("without an adapter, not the weights of this release"),
        "{card}"
    );
}

#[test]
fn the_same_inputs_give_the_same_release_and_a_rerun_is_skipped() {
    let r = release(false, false, None);
    let first = fs::read(r.release.join("release.json")).unwrap();
    let again = umrank_ok(&["release", "--out", s(&r.out), "--train", s(&r.train)]);
    assert!(again.contains("up to date"), "{again}");
    let forced = umrank_ok(&[
        "release",
        "--out",
        s(&r.out),
        "--train",
        s(&r.train),
        "--force",
    ]);
    assert!(forced.contains(" ran "), "{forced}");
    assert_eq!(fs::read(r.release.join("release.json")).unwrap(), first);
}

#[test]
fn missing_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let base = base_model(tmp.path(), None);
    let train = tmp.path().join("train");
    write_adapter(&base, &train.join("adapter"));
    let out = tmp.path().join("release");
    // Records the train stage with `config` over its files as they now are, then releases it (with `--model` when
    // given), which must fail: its stderr.
    let release_fails = |config: serde_json::Value, model: Option<&Path>| -> String {
        write_stage(&train, "train", 0, config, &[]);
        let mut args = vec!["release", "--out", s(&out), "--train", s(&train)];
        if let Some(model) = model {
            args.extend(["--model", s(model)]);
        }
        umrank_fails(&args)
    };
    let cl = || serde_json::json!({"objective": "cl"});

    let stderr = release_fails(cl(), None);
    assert!(stderr.contains("model = DIR"), "{stderr}");

    let stderr = release_fails(
        serde_json::json!({"objective": "cl", "init": "tiny", "tune": "lora"}),
        None,
    );
    assert!(stderr.contains("randomly initialised"), "{stderr}");

    let extra = train.join("adapter/extra_weights.safetensors");
    fs::write(&extra, b"").unwrap();
    let stderr = release_fails(cl(), Some(&base));
    assert!(
        stderr.contains("extra_weights.safetensors") && stderr.contains("train_lm_head"),
        "{stderr}"
    );
    fs::remove_file(&extra).unwrap();

    fs::remove_file(train.join("adapter/adapter_model.safetensors")).unwrap();
    let stderr = release_fails(cl(), Some(&base));
    assert!(stderr.contains("adapter_model.safetensors"), "{stderr}");
    assert!(!out.join("model").exists());
}

#[test]
fn the_release_stage_is_registered_and_refuses_unknown_keys() {
    let registry = umrank::stages::registry();
    let ok = PipelineConfig::parse(
        Path::new("p.toml"),
        "[pipeline]\nname = 'p'\nworkdir = 'w'\n[release]\nfrom = 'train_cl'\neval_from = ['eval']\nmerged = true\n",
    )
    .unwrap();
    assert!(registry.build(&ok.stages[0], &ok.path).is_ok());
    let bad = PipelineConfig::parse(
        Path::new("p.toml"),
        "[pipeline]\nname = 'p'\nworkdir = 'w'\n[release]\nmerge = true\n",
    )
    .unwrap();
    let err = registry
        .build(&bad.stages[0], &bad.path)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("unknown field `merge`"), "{err}");
}

#[test]
fn help_documents_every_option() {
    for (command, flags) in [
        (
            "release",
            &[
                "--out",
                "--train",
                "--eval",
                "--model",
                "--base-model",
                "--license",
                "--merged",
                "--no-verify",
                "--force",
                "--device",
                "--gate-baseline",
                "--gate-metric",
                "--gate-min-delta",
                "--gate-max-p",
            ][..],
        ),
        ("verify", &["--base", "--device"][..]),
    ] {
        let help = umrank_ok(&[command, "--help"]);
        let lines: Vec<&str> = help.lines().map(str::trim).collect();
        for flag in flags {
            let at = lines
                .iter()
                .position(|line| line.starts_with(&format!("{flag} ")) || line == flag)
                .unwrap_or_else(|| panic!("{command} --help lacks {flag}:\n{help}"));
            // clap puts the help after the option (and its value name) or, for long help, on the next line.
            let rest = lines[at][flag.len()..].trim_start();
            let rest = match rest.strip_prefix('<') {
                Some(value) => value.split_once('>').map_or("", |(_, r)| r).trim(),
                None => rest,
            };
            let description = if rest.is_empty() {
                lines.get(at + 1).copied().unwrap_or("")
            } else {
                rest
            };
            assert!(
                !description.is_empty() && !description.starts_with('-'),
                "{command} {flag} has no help text:\n{help}"
            );
        }
    }
}

/// Not a check: writes a release of fixture `$UMRANK_RELEASE_BASE` (default `vlm/qwen2_5_vl`) under
/// `$UMRANK_RELEASE_OUT`, for running scripts/load_with_peft.py against `umrank verify` by hand: an adapter
/// release with merged weights, or with `UMRANK_RELEASE_FULL=1` a full release.
///
/// ```text
/// UMRANK_RELEASE_OUT=/tmp/rel cargo test --release --test it -- --ignored release::write_release_for_peft_script
/// python scripts/load_with_peft.py /tmp/rel/work/release/model --check
/// ```
#[test]
#[ignore]
fn write_release_for_peft_script() {
    let root = PathBuf::from(std::env::var("UMRANK_RELEASE_OUT").expect("set UMRANK_RELEASE_OUT"));
    let name = std::env::var("UMRANK_RELEASE_BASE").unwrap_or("vlm/qwen2_5_vl".into());
    let tuned = match std::env::var_os("UMRANK_RELEASE_FULL") {
        Some(_) => Tuned::Full,
        None => Tuned::Adapter,
    };
    let base = base_model_from(&name, &root, Some("apache-2.0"));
    let (train, eval) = write_pipeline(&root.join("work"), &base, tuned);
    let out = root.join("work/release");
    let mut args = vec![
        "release",
        "--out",
        s(&out),
        "--train",
        s(&train),
        "--eval",
        s(&eval),
    ];
    if tuned == Tuned::Adapter {
        args.push("--merged");
    }
    umrank_ok(&args);
    println!("{}", umrank_ok(&["verify", s(&out)]));
}
