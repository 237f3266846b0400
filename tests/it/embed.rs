//! The embed stage on the small demo world (through ingest) with the tiny CLIP, BERT and Qwen2-VL (GME) fixtures:
//! vectors equal to the model layer's, a crash that resumes from the store and ends byte-identical, a new snapshot
//! that embeds only its new and changed content, reruns, shards, rejects, configuration errors and the CLI.

use parquet::file::reader::{FileReader, SerializedFileReader};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{
    Array, ArrayRef, AsArray, LargeBinaryArray, RecordBatch, StringArray, UInt32Array, UInt64Array,
};
use arrow::datatypes::Float32Type;
use candle_core::{DType, Device, Tensor};
use umrank::dataset::{Dataset, DatasetWriter};
use umrank::digest::sha256_file;
use umrank::embed::{
    embed_into, load_model, EmbedConfig, EmbedError, EmbedModel, EmbedReport, EmbedSources,
    EmbedStage, ModelOptions, Prepared, PreparedImage,
};
use umrank::ingest::{Format, IngestConfig};
use umrank::media::preprocess::{
    ImagePreprocessor, PreprocessError, Qwen2VlParams, Qwen2VlProcessor,
};
use umrank::modality::Modality;
use umrank::models::embedders::{self, EmbedderOptions};
use umrank::models::qwen2_vl::{
    gme_embed, GmeInput, GmePromptBuilder, ImageGrid, ImagePatches, Qwen2VlModel, ScoreInput,
};
use umrank::models::text::prompt::IM_END;
use umrank::models::text::tokenizer::Tokenizer;
use umrank::pipeline::{
    Input, Output, RejectPolicy, RunOptions, Runner, Stage, StageContext, StageError,
};
use umrank::schema::outputs::embed::{DOC_EMBEDDINGS, QUERY_EMBEDDINGS};
use umrank::shard::Shard;

use crate::common::cli::{umrank, umrank_ok};
use crate::common::datasets::{column, embed_contents, ingest_alone, small_world};

fn fixture(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models")
        .join(path)
}

fn clip_dir() -> PathBuf {
    fixture("embedders/clip")
}

/// The small demo world, ingested once per test binary into a directory every test reads (never writes).
fn ingested() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let (root, _) = small_world(&dir, 3);
        let out = dir.join("ingest");
        let config = IngestConfig::new(Format::Mbeir, root);
        ingest_alone(config, &out, 1, RunOptions::default()).unwrap();
        out
    })
}

/// An embed stage run through the pipeline runner, with the model injected: the stage under test is the library
/// function [`embed_into`], the same one `EmbedStage` calls.
struct Injected {
    stage: EmbedStage,
    config: EmbedConfig,
    model: Arc<dyn EmbedModel>,
    report: Arc<Mutex<Option<EmbedReport>>>,
}

impl Stage for Injected {
    fn name(&self) -> &'static str {
        "embed"
    }

    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        self.stage.config()
    }

    fn inputs(&self) -> Vec<Input> {
        vec![Input::Stage("ingest".into())]
    }

    fn outputs(&self) -> Vec<Output> {
        self.stage.outputs()
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let upstream = ctx.upstream_dir("ingest")?.to_path_buf();
        let sources = match (&self.config.corpus, &self.config.queries) {
            (Some(corpus), Some(queries)) => EmbedSources {
                corpus: corpus.clone(),
                queries: queries.clone(),
                images: self.config.images.clone(),
            },
            _ => EmbedSources {
                corpus: upstream.join("corpus"),
                queries: upstream.join("queries"),
                images: Some(upstream.join("images")),
            },
        };
        let report = embed_into(ctx, &self.config, &sources, self.model.as_ref())?;
        *self.report.lock().unwrap() = Some(report);
        Ok(())
    }
}

/// A model that fails at its `fail_at`-th batch (counting from 1), as a crashed forward pass would.
struct FailingModel {
    inner: Arc<dyn EmbedModel>,
    fail_at: usize,
    calls: AtomicUsize,
}

impl EmbedModel for FailingModel {
    fn fingerprint(&self) -> &str {
        self.inner.fingerprint()
    }
    fn dim(&self) -> usize {
        self.inner.dim()
    }
    fn supports(&self, modality: Modality) -> bool {
        self.inner.supports(modality)
    }
    fn takes_instructions(&self) -> bool {
        self.inner.takes_instructions()
    }
    fn length(&self, text: Option<&str>, image_size: Option<(u32, u32)>) -> usize {
        self.inner.length(text, image_size)
    }
    fn prepare_image(&self, bytes: &[u8]) -> Result<PreparedImage, PreprocessError> {
        self.inner.prepare_image(bytes)
    }
    fn embed(&self, batch: &[Prepared<'_>]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if self.calls.fetch_add(1, Ordering::SeqCst) + 1 == self.fail_at {
            return Err(EmbedError::Batch(
                "simulated crash in the forward pass".into(),
            ));
        }
        self.inner.embed(batch)
    }
}

fn cpu_model(dir: &Path, batch_size: usize) -> Arc<dyn EmbedModel> {
    cpu_model_within(dir, batch_size, (None, None))
}

/// [`cpu_model`] with the GME image processor's pixel bounds overridden.
fn cpu_model_within(
    dir: &Path,
    batch_size: usize,
    pixels: (Option<u64>, Option<u64>),
) -> Arc<dyn EmbedModel> {
    let options = ModelOptions {
        device: Device::Cpu,
        dtype: DType::F32,
        batch_size,
        pixels,
    };
    Arc::from(load_model(dir, &options).unwrap())
}

fn config(batch_size: usize, cache_rows: usize) -> EmbedConfig {
    let mut config = EmbedConfig::new("ingest", clip_dir());
    config.batch_size = batch_size;
    config.cache_rows = cache_rows;
    config
}

fn run_injected(
    out: &Path,
    config: &EmbedConfig,
    model: Arc<dyn EmbedModel>,
    shard: Option<Shard>,
    force: bool,
) -> Result<EmbedReport, String> {
    let report = Arc::new(Mutex::new(None));
    let stage = Injected {
        stage: EmbedStage::new(config.clone()).unwrap(),
        config: config.clone(),
        model,
        report: report.clone(),
    };
    let options = RunOptions {
        force,
        shard,
        dirs: [
            ("embed".to_string(), out.to_path_buf()),
            ("ingest".to_string(), ingested().to_path_buf()),
        ]
        .into(),
        ..Default::default()
    };
    Runner::new(
        out.to_path_buf(),
        1,
        vec![("embed".into(), Box::new(stage))],
        options,
    )
    .run()
    .map_err(|e| e.to_string())?;
    let report = report.lock().unwrap().clone();
    report.ok_or_else(|| "the stage did not run".to_string())
}

/// The rows of an embeddings dataset: id -> (kind, vector, model), and the ids in order.
struct Embeddings {
    ids: Vec<String>,
    rows: BTreeMap<String, (String, Vec<f32>, String)>,
}

fn read_embeddings(dir: &Path) -> Embeddings {
    let mut ids = Vec::new();
    let mut rows = BTreeMap::new();
    for batch in Dataset::open(dir).unwrap().batches().unwrap() {
        let batch = batch.unwrap();
        let id = batch.column(0).as_string::<i32>();
        let kind = batch.column(1).as_string::<i32>();
        let vector = batch.column(2).as_fixed_size_list();
        let model = batch.column(3).as_string::<i32>();
        for row in 0..batch.num_rows() {
            let values = vector.value(row);
            let values = values.as_primitive::<Float32Type>().values().to_vec();
            ids.push(id.value(row).to_string());
            rows.insert(
                id.value(row).to_string(),
                (
                    kind.value(row).to_string(),
                    values,
                    model.value(row).to_string(),
                ),
            );
        }
    }
    Embeddings { ids, rows }
}

fn part_hashes(out: &Path) -> Vec<String> {
    [DOC_EMBEDDINGS, QUERY_EMBEDDINGS]
        .iter()
        .map(|name| sha256_file(&out.join(name).join("part-00000-of-00001.parquet")).unwrap())
        .collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()))
}

fn normalised_sum(a: &[f32], b: &[f32]) -> Vec<f32> {
    let sum: Vec<f32> = a.iter().zip(b).map(|(x, y)| x + y).collect();
    let norm = sum.iter().map(|v| v * v).sum::<f32>().sqrt();
    sum.iter().map(|v| v / norm).collect()
}

#[test]
fn clip_vectors_are_the_embedders_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("embed");
    let report =
        run_injected(&out, &config(8, 64), cpu_model(&clip_dir(), 8), None, false).unwrap();
    assert_eq!(report.records, 375, "300 documents and 75 queries");
    assert_eq!(report.rejected, 0);
    assert_eq!((report.cached, report.embedded), (0, report.inputs));

    let ingest = ingested();
    let docs = read_embeddings(&out.join(DOC_EMBEDDINGS));
    let queries = read_embeddings(&out.join(QUERY_EMBEDDINGS));
    let dids: Vec<String> = column(&ingest.join("corpus"), "did")
        .into_iter()
        .flatten()
        .collect();
    let qids: Vec<String> = column(&ingest.join("queries"), "qid")
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(docs.ids, dids, "documents in corpus order");
    assert_eq!(queries.ids, qids, "queries in queries order");
    assert!(docs.rows.values().all(|(kind, _, _)| kind == "doc"));
    assert!(queries.rows.values().all(|(kind, _, _)| kind == "query"));

    // Every vector against the embedder run on its own (the reference embedder preprocesses images with its own
    // code, so a few 1e-6 of rounding apart at most).
    let embedder = embedders::load(&clip_dir(), &EmbedderOptions::default()).unwrap();
    let model = cpu_model(&clip_dir(), 8);
    let images = image_bytes(&ingest.join("images"));
    let mut seen = [0usize; 3];
    for (dataset, id_column, got) in [("corpus", "did", &docs), ("queries", "qid", &queries)] {
        let source = ingest.join(dataset);
        let (ids, modality, text, image) = (
            column(&source, id_column),
            column(&source, "modality"),
            column(&source, "text"),
            column(&source, "image_id"),
        );
        for (i, id) in ids.iter().flatten().enumerate() {
            let (_, got, fingerprint) = &got.rows[id];
            assert_eq!(fingerprint, model.fingerprint());
            let norm: f32 = got.iter().map(|v| v * v).sum::<f32>().sqrt();
            assert!((norm - 1.0).abs() < 1e-5, "{id}: norm {norm}");
            let text_vector = || {
                embedder
                    .embed_texts(&[text[i].as_deref().unwrap()])
                    .unwrap()
                    .remove(0)
            };
            let image_vector = || {
                let bytes = &images[image[i].as_ref().unwrap()];
                let rgb = image::load_from_memory(bytes).unwrap().to_rgb8();
                embedder.embed_images(&[rgb]).unwrap().remove(0)
            };
            let expected = match modality[i].as_deref().unwrap() {
                "text" => {
                    seen[0] += 1;
                    text_vector()
                }
                "image" => {
                    seen[1] += 1;
                    image_vector()
                }
                _ => {
                    seen[2] += 1;
                    normalised_sum(&text_vector(), &image_vector())
                }
            };
            let diff = max_abs_diff(got, &expected);
            assert!(diff < 1e-5, "{id} ({:?}): off by {diff}", modality[i]);
        }
    }
    assert!(
        seen.iter().all(|&n| n > 0),
        "all three modalities covered: {seen:?}"
    );
}

/// image_id -> encoded bytes.
fn image_bytes(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    for batch in Dataset::open(dir).unwrap().batches().unwrap() {
        let batch = batch.unwrap();
        let ids = batch.column(0).as_string::<i32>();
        let bytes = batch
            .column(1)
            .as_any()
            .downcast_ref::<LargeBinaryArray>()
            .unwrap();
        for row in 0..batch.num_rows() {
            out.insert(ids.value(row).to_string(), bytes.value(row).to_vec());
        }
    }
    out
}

#[test]
fn a_crash_resumes_from_the_cache_and_ends_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(4, 4);
    let model = cpu_model(&clip_dir(), 4);

    let undisturbed = dir.path().join("undisturbed");
    let full = run_injected(&undisturbed, &config, model.clone(), None, false).unwrap();
    assert_eq!(full.cached, 0);
    let expected = part_hashes(&undisturbed);

    // The fifth batch fails: four batches of four inputs were embedded and, one chunk each, cached.
    let crashed = dir.path().join("crashed");
    let failing = Arc::new(FailingModel {
        inner: model.clone(),
        fail_at: 5,
        calls: AtomicUsize::new(0),
    });
    let err = run_injected(&crashed, &config, failing, None, false).unwrap_err();
    assert!(err.contains("simulated crash"), "{err}");
    assert!(
        !crashed.join("manifest.json").exists(),
        "a failed stage is not finished"
    );
    assert!(!crashed
        .join(DOC_EMBEDDINGS)
        .join("part-00000-of-00001.parquet")
        .exists());
    let cache_dir = full.cache_dir.clone();
    assert!(
        cache_dir.starts_with(&undisturbed),
        "the default store is the stage's own"
    );
    let crashed_store = crashed.join("store").join(cache_dir.file_name().unwrap());
    let chunks = fs::read_dir(&crashed_store).unwrap().count();
    assert_eq!(chunks, 4);

    // The same command again: only what is missing goes through the model, and the outputs are the same bytes.
    let resumed = run_injected(&crashed, &config, model.clone(), None, false).unwrap();
    assert_eq!(resumed.cached, 16);
    assert_eq!(resumed.embedded, full.inputs - 16);
    assert_eq!(resumed.cache_dir, crashed_store);
    assert_eq!(part_hashes(&crashed), expected);

    // A forced rerun embeds nothing and is byte-identical too.
    let rerun = run_injected(&crashed, &config, model.clone(), None, true).unwrap();
    assert_eq!((rerun.cached, rerun.embedded), (full.inputs, 0));
    assert_eq!(part_hashes(&crashed), expected);

    // Another batch size reuses every stored vector: the store is keyed by content, not by the batch plan.
    let mut other = config.clone();
    other.batch_size = 8;
    let replanned = run_injected(&crashed, &other, cpu_model(&clip_dir(), 8), None, false).unwrap();
    assert_eq!((replanned.cached, replanned.embedded), (full.inputs, 0));
    assert_eq!(replanned.cache_dir, crashed_store);
    assert_eq!(part_hashes(&crashed), expected);
}

/// Copies the ingest dataset `name` (corpus or queries) to `out` with the rows `keep` admits, appending
/// " (revised)" to the text of the kept rows `change` picks: one snapshot of an evolving collection. Returns the
/// rows written and how many of them were revised.
fn snapshot(
    name: &str,
    out: &Path,
    keep: impl Fn(usize) -> bool,
    change: impl Fn(usize) -> bool,
) -> (usize, usize) {
    let mut writer = DatasetWriter::create(out, name, Shard::ALL).unwrap();
    let (mut row, mut written, mut revised) = (0, 0, 0);
    for batch in Dataset::open(&ingested().join(name))
        .unwrap()
        .batches()
        .unwrap()
    {
        let batch = batch.unwrap();
        let text = batch.column_by_name("text").unwrap().as_string::<i32>();
        let mut mask = Vec::new();
        let mut texts = Vec::new();
        for i in 0..batch.num_rows() {
            let kept = keep(row + i);
            mask.push(kept);
            let value = (!text.is_null(i)).then(|| text.value(i).to_string());
            texts.push(match value {
                Some(t) if kept && change(row + i) => {
                    revised += 1;
                    Some(format!("{t} (revised)"))
                }
                other => other,
            });
        }
        row += batch.num_rows();
        let index = batch.schema().index_of("text").unwrap();
        let mut columns = batch.columns().to_vec();
        columns[index] = Arc::new(StringArray::from(texts));
        let batch = RecordBatch::try_new(batch.schema(), columns).unwrap();
        let batch = arrow::compute::filter_record_batch(&batch, &mask.into()).unwrap();
        written += batch.num_rows();
        writer.write(&batch).unwrap();
    }
    writer.finish().unwrap();
    (written, revised)
}

/// Embeds the snapshot in `snapshot` (corpus and queries; the ingest's images) into `out`, with `store`.
fn embed_snapshot(
    out: &Path,
    snapshot: &Path,
    store: Option<&Path>,
    batch_size: usize,
    shard: Option<Shard>,
) -> EmbedReport {
    let config = EmbedConfig {
        from: None,
        corpus: Some(snapshot.join("corpus")),
        queries: Some(snapshot.join("queries")),
        images: Some(ingested().join("images")),
        store: store.map(Path::to_path_buf),
        ..config(batch_size, 16)
    };
    run_injected(
        out,
        &config,
        cpu_model(&clip_dir(), batch_size),
        shard,
        false,
    )
    .unwrap()
}

/// The store across snapshots at the library level: the stage embeds only the new and changed content and
/// reuses every stored vector whatever the batch size or shard count, and a torn chunk costs only its vectors.
/// tests/it/snapshots.rs runs two snapshots through the whole pipeline and compares its outputs with a run from
/// nothing.
#[test]
fn a_new_snapshot_reuses_stored_vectors_across_batch_sizes_shard_counts_and_torn_chunks() {
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("s1"), dir.path().join("s2"));
    // The first snapshot lacks every tenth row (new in the second); the second drops another tenth (removed) and
    // revises the text of a third tenth (changed).
    for name in ["corpus", "queries"] {
        snapshot(name, &first.join(name), |i| i % 10 != 1, |_| false);
        let (_, revised) = snapshot(name, &second.join(name), |i| i % 10 != 2, |i| i % 10 == 3);
        assert!(revised > 0);
    }
    let expected = embed_contents(&second)
        .difference(&embed_contents(&first))
        .count();
    assert!(expected > 0);
    let store = dir.path().join("store");
    let old = embed_snapshot(&dir.path().join("run1"), &first, Some(&store), 4, None);
    assert_eq!((old.cached, old.embedded), (0, old.inputs));

    // The second run embeds exactly the new and changed content.
    let run2 = dir.path().join("run2");
    let new = embed_snapshot(&run2, &second, Some(&store), 4, None);
    assert_eq!(new.embedded, expected, "{old:?} {new:?}");
    assert_eq!(new.cached, new.inputs - expected);

    // Another batch size and another shard count reuse every stored vector.
    let rebatched = dir.path().join("rebatched");
    let report = embed_snapshot(&rebatched, &second, Some(&store), 3, None);
    assert_eq!(report.embedded, 0);
    assert_eq!(part_hashes(&rebatched), part_hashes(&run2));
    let sharded = dir.path().join("sharded");
    for index in 0..2 {
        let shard = Shard::new(index, 2).unwrap();
        let report = embed_snapshot(&sharded, &second, Some(&store), 4, Some(shard));
        assert_eq!(report.embedded, 0);
    }
    for name in [DOC_EMBEDDINGS, QUERY_EMBEDDINGS] {
        let (a, b) = (
            read_embeddings(&sharded.join(name)),
            read_embeddings(&run2.join(name)),
        );
        assert_eq!(a.rows, b.rows);
    }

    // A torn chunk (a kill during a write, under its final name) and a writer's leftover temporary file are
    // never read: their vectors are embedded again, and the rest is reused.
    let model_dir = new.cache_dir.clone();
    let mut chunks: Vec<PathBuf> = fs::read_dir(&model_dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    chunks.sort();
    let bytes = fs::read(&chunks[0]).unwrap();
    // A chunk is written once a batch brings the pending rows to the chunk size, so it may hold a little more.
    let reader = SerializedFileReader::new(fs::File::open(&chunks[0]).unwrap()).unwrap();
    let torn_rows = reader.metadata().file_metadata().num_rows() as usize;
    fs::write(&chunks[0], &bytes[..bytes.len() - 9]).unwrap();
    fs::write(model_dir.join(".chunk-partial.parquet.tmp"), &bytes[..7]).unwrap();
    let recovered = dir.path().join("recovered");
    let report = embed_snapshot(&recovered, &second, Some(&store), 4, None);
    assert!(
        report.embedded > 0 && report.embedded <= torn_rows,
        "{report:?}, {torn_rows} rows torn"
    );
    assert_eq!(report.cached + report.embedded, report.inputs);
}

#[test]
fn shards_partition_the_records() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("embed");
    let config = config(8, 64);
    let model = cpu_model(&clip_dir(), 8);
    let whole = dir.path().join("whole");
    run_injected(&whole, &config, model.clone(), None, false).unwrap();
    let mut records = 0;
    for index in 0..2 {
        let shard = Shard::new(index, 2).unwrap();
        records += run_injected(&out, &config, model.clone(), Some(shard), false)
            .unwrap()
            .records;
    }
    assert_eq!(records, 375);
    for name in [DOC_EMBEDDINGS, QUERY_EMBEDDINGS] {
        let parts = Dataset::open(&out.join(name)).unwrap();
        assert_eq!(parts.parts().len(), 2);
        let (sharded, unsharded) = (
            read_embeddings(&out.join(name)),
            read_embeddings(&whole.join(name)),
        );
        assert_eq!(sharded.rows.len(), unsharded.rows.len());
        for (id, (_, v, _)) in &unsharded.rows {
            assert!(max_abs_diff(v, &sharded.rows[id].1) < 1e-5, "{id}");
        }
    }
}

#[test]
fn a_model_that_cannot_embed_a_modality_fails_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("embed");
    let mut config = config(8, 64);
    config.model = Some(fixture("embedders/bert"));
    let err = run_injected(
        &out,
        &config,
        cpu_model(&fixture("embedders/bert"), 8),
        None,
        false,
    )
    .unwrap_err();
    assert!(err.contains("the model cannot embed"), "{err}");
    assert!(err.contains("image docs"), "{err}");
    assert!(!out.join("store").exists(), "nothing was embedded");
}

/// A hand-written corpus: two text documents, an image document whose bytes are not an image, and one whose
/// image is missing from the images dataset.
fn broken_inputs(dir: &Path) -> EmbedConfig {
    let schema = |kind: &str| umrank::schema::get(kind).unwrap().arrow();
    let strings = |v: Vec<Option<&str>>| Arc::new(StringArray::from(v)) as ArrayRef;
    let corpus = dir.join("corpus");
    let mut writer = DatasetWriter::create(&corpus, "corpus", Shard::ALL).unwrap();
    let batch = RecordBatch::try_new(
        schema("corpus"),
        vec![
            strings(vec![Some("d1"), Some("d2"), Some("d3"), Some("d4")]),
            strings(vec![
                Some("text"),
                Some("image"),
                Some("image"),
                Some("text"),
            ]),
            strings(vec![
                Some("a red square"),
                None,
                None,
                Some("a blue circle"),
            ]),
            strings(vec![None, Some("bad"), Some("absent"), None]),
            strings(vec![Some("t"); 4]),
            strings(vec![Some("t"); 4]),
            strings(vec![Some("pool.jsonl"); 4]),
            Arc::new(UInt64Array::from(vec![1, 2, 3, 4])),
        ],
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    let queries = dir.join("queries");
    let mut writer = DatasetWriter::create(&queries, "queries", Shard::ALL).unwrap();
    let batch = RecordBatch::try_new(
        schema("queries"),
        vec![
            strings(vec![Some("q1")]),
            strings(vec![Some("text")]),
            strings(vec![Some("red")]),
            strings(vec![None]),
            strings(vec![Some("Find the shape.")]),
            Arc::new(arrow::array::Int32Array::from(vec![Some(0)])),
            strings(vec![Some("text->image")]),
            strings(vec![Some("t")]),
            strings(vec![Some("t")]),
            strings(vec![Some("test")]),
            strings(vec![Some("q.jsonl")]),
            Arc::new(UInt64Array::from(vec![1])),
        ],
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    let images = dir.join("images");
    let mut writer = DatasetWriter::create(&images, "images", Shard::ALL).unwrap();
    let batch = RecordBatch::try_new(
        schema("images"),
        vec![
            strings(vec![Some("bad")]),
            Arc::new(LargeBinaryArray::from(vec![&b"not an image"[..]])),
            Arc::new(UInt32Array::from(vec![8])),
            Arc::new(UInt32Array::from(vec![8])),
            strings(vec![Some("png")]),
        ],
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    EmbedConfig {
        from: None,
        corpus: Some(corpus),
        queries: Some(queries),
        images: Some(images),
        ..config(8, 64)
    }
}

#[test]
fn records_without_a_usable_image_are_rejects_with_their_source() {
    let dir = tempfile::tempdir().unwrap();
    let config = broken_inputs(dir.path());
    let out = dir.path().join("embed");
    let options = RunOptions {
        policy: RejectPolicy {
            max_fraction: 0.5,
            strict: false,
        },
        dirs: [("embed".to_string(), out.clone())].into(),
        ..Default::default()
    };
    let stage = EmbedStage::new(config).unwrap();
    let reports = Runner::new(
        out.clone(),
        0,
        vec![("embed".into(), Box::new(stage))],
        options,
    )
    .run()
    .unwrap();
    assert_eq!((reports[0].records, reports[0].rejects), (5, 2));
    let rejects = out.join("rejects.parquet");
    let reasons: Vec<Option<String>> = column(&rejects, "reason");
    let ids: Vec<Option<String>> = column(&rejects, "record_id");
    assert_eq!(
        reasons,
        [
            Some("image_unusable".to_string()),
            Some("image_not_found".to_string())
        ]
    );
    assert_eq!(ids, [Some("d2".to_string()), Some("d3".to_string())]);
    let docs = read_embeddings(&out.join(DOC_EMBEDDINGS));
    assert_eq!(docs.ids, ["d1", "d4"]);
    assert_eq!(read_embeddings(&out.join(QUERY_EMBEDDINGS)).ids, ["q1"]);
}

/// GME on the tiny Qwen2-VL: a query's vector is the model layer's embedding of GME's prompt with the query's
/// instruction; documents take the default instruction.
#[test]
fn gme_embeds_queries_with_their_instruction() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("embed");
    let gme_dir = fixture("vlm/qwen2_vl");
    let mut config = config(8, 64);
    config.model = Some(gme_dir.clone());
    let model = cpu_model(&gme_dir, 8);
    assert!(model.takes_instructions());
    let report = run_injected(&out, &config, model, None, false).unwrap();
    assert_eq!((report.records, report.rejected), (375, 0));

    let ingest = ingested();
    let queries = ingest.join("queries");
    let (qids, modality, text, image, instruction) = (
        column(&queries, "qid"),
        column(&queries, "modality"),
        column(&queries, "text"),
        column(&queries, "image_id"),
        column(&queries, "instruction"),
    );
    let got = read_embeddings(&out.join(QUERY_EMBEDDINGS));
    let images = image_bytes(&ingest.join("images"));
    let vl = Qwen2VlModel::from_model_dir(&gme_dir, DType::F32, &Device::Cpu).unwrap();
    let tokenizer = Tokenizer::from_dir(&gme_dir).unwrap();
    let builder = GmePromptBuilder::new(&tokenizer).unwrap();
    let processor = Qwen2VlProcessor::new(Qwen2VlParams::default()).unwrap();
    let pad = tokenizer.special_token_id(IM_END).unwrap();
    // One query of each modality.
    for wanted in ["text", "image", "image,text"] {
        let i = modality
            .iter()
            .position(|m| m.as_deref() == Some(wanted))
            .unwrap();
        let patches = image[i].as_ref().map(|id| {
            let pixels = processor.preprocess_bytes(&images[id]).unwrap();
            let [t, h, w] = pixels.grid_thw;
            ImagePatches {
                pixels: Tensor::from_vec(
                    pixels.patches,
                    (pixels.num_patches, pixels.patch_dim),
                    &Device::Cpu,
                )
                .unwrap(),
                grid: ImageGrid::new(t, h, w),
            }
        });
        let embed = |instruction: Option<&str>| -> Vec<f32> {
            let ids = builder
                .build(&GmeInput {
                    instruction,
                    text: text[i].as_deref(),
                    image_tokens: patches.as_ref().map(|p| p.grid.merged_tokens(2)),
                })
                .unwrap();
            let images: Vec<ImagePatches> = patches.iter().cloned().collect();
            let input = [ScoreInput {
                ids: &ids,
                images: &images,
            }];
            gme_embed(&vl, &input, pad)
                .unwrap()
                .to_vec2::<f32>()
                .unwrap()
                .remove(0)
        };
        let qid = qids[i].as_ref().unwrap();
        let vector = &got.rows[qid].1;
        let with = embed(instruction[i].as_deref());
        assert!(max_abs_diff(vector, &with) < 1e-5, "{qid} ({wanted})");
        assert!(
            max_abs_diff(vector, &embed(None)) > 1e-3,
            "{qid}: the instruction matters"
        );
    }
}

/// `max_pixels` in the embed table bounds GME's images: a 448 x 448 image is 256 tokens within the model's
/// bounds and 4 within 4 x 28 x 28 pixels, and patched so, and the fingerprint (the cache key) changes.
#[test]
fn gme_images_are_bounded_by_the_configured_pixels() {
    let gme_dir = fixture("vlm/qwen2_vl");
    let model = cpu_model(&gme_dir, 8);
    let bounded = cpu_model_within(&gme_dir, 8, (None, Some(4 * 28 * 28)));
    assert_eq!(
        model.length(None, Some((448, 448))) - model.length(None, None),
        256
    );
    assert_eq!(
        bounded.length(None, Some((448, 448))) - bounded.length(None, None),
        4
    );
    assert_ne!(model.fingerprint(), bounded.fingerprint());
    let mut png = Vec::new();
    image::RgbImage::from_pixel(448, 448, image::Rgb([200, 40, 90]))
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .unwrap();
    let patches = |m: &Arc<dyn EmbedModel>| match m.prepare_image(&png).unwrap() {
        PreparedImage::Qwen(pixels) => pixels.num_patches,
        PreparedImage::Chw(_) => panic!("GME prepares patches"),
    };
    assert_eq!((patches(&model), patches(&bounded)), (256 * 4, 4 * 4));
}

#[test]
fn the_cli_embeds_an_ingest_dir_and_a_rerun_is_up_to_date() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("embed");
    let (out_s, from, model) = (
        out.to_str().unwrap(),
        ingested().to_str().unwrap(),
        clip_dir(),
    );
    let args = [
        "embed",
        "--out",
        out_s,
        "--from",
        from,
        "--model",
        model.to_str().unwrap(),
        "--batch-size",
        "16",
    ];
    let (ok, stdout, stderr) = umrank(&args);
    assert!(ok, "{stderr}");
    assert!(stdout.contains("ran"), "{stdout}");
    assert!(stderr.contains(", 0 from the store"), "{stderr}");
    let first = part_hashes(&out);
    let (ok, stdout, _) = umrank(&args);
    assert!(ok && stdout.contains("up to date"), "{stdout}");
    let mut forced = args.to_vec();
    forced.push("--force");
    let (ok, _, stderr) = umrank(&forced);
    assert!(ok && stderr.contains(", 0 embedded"), "{stderr}");
    assert_eq!(part_hashes(&out), first);

    let (ok, _, stderr) = umrank(&["embed", "--out", out_s, "--model", "x"]);
    assert!(!ok && stderr.contains("--from"), "{stderr}");
}

/// A stage that writes a model directory, as a stage that trains an embedder does: here, a copy of the tiny CLIP.
struct CopyModel;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct NoConfig {}

impl Stage for CopyModel {
    fn name(&self) -> &'static str {
        "copy_model"
    }
    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        Ok(serde_json::json!({}))
    }
    fn inputs(&self) -> Vec<Input> {
        vec![Input::Files(vec![clip_dir()])]
    }
    fn outputs(&self) -> Vec<Output> {
        vec![Output::tree("model")]
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let to = ctx.output_path("model");
        fs::create_dir_all(&to)?;
        for entry in fs::read_dir(clip_dir())? {
            let entry = entry?;
            fs::copy(entry.path(), to.join(entry.file_name()))?;
        }
        Ok(())
    }
}

#[test]
fn a_pipeline_embeds_with_the_model_an_upstream_stage_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"
        [pipeline]
        name = "t"
        workdir = "{}"
        [ingest]
        root = "not read: the ingest below is already done"
        [trained]
        kind = "copy_model"
        [embed]
        from = "ingest"
        model_from = "trained"
        model = "model"
        batch_size = 8
        "#,
        dir.path().display()
    );
    let config = umrank::pipeline::PipelineConfig::parse(Path::new("t.toml"), &text).unwrap();
    let mut registry = umrank::stages::registry();
    registry.register("copy_model", |_: NoConfig| Ok(CopyModel));
    let options = RunOptions {
        from: Some("trained".into()),
        dirs: [("ingest".to_string(), ingested().to_path_buf())].into(),
        ..Default::default()
    };
    let runner = Runner::from_config(&config, &registry, options).unwrap();
    let reports = runner.run().unwrap();
    assert_eq!(reports[2].records, 375);
    let docs = read_embeddings(&dir.path().join("embed").join(DOC_EMBEDDINGS));
    let fingerprint = cpu_model(&clip_dir(), 8).fingerprint().to_string();
    assert!(docs
        .rows
        .values()
        .all(|(_, _, model)| *model == fingerprint));
    let manifest = fs::read_to_string(dir.path().join("embed/manifest.json")).unwrap();
    assert!(
        manifest.contains("\"trained\""),
        "the model stage is an input"
    );

    // A second run finds the stage up to date.
    let runner = Runner::from_config(
        &config,
        &registry,
        RunOptions {
            from: Some("trained".into()),
            dirs: [("ingest".to_string(), ingested().to_path_buf())].into(),
            ..Default::default()
        },
    )
    .unwrap();
    let again = runner.run().unwrap();
    assert_eq!(again[2].outcome, umrank::pipeline::StageOutcome::UpToDate);
}

/// Every file under `dir` whose name `pick` accepts, sorted.
fn files_under(dir: &Path, pick: impl Fn(&str) -> bool) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if pick(&path.file_name().unwrap().to_string_lossy()) {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

fn is_chunk(name: &str) -> bool {
    name.starts_with("chunk-") && name.ends_with(".parquet")
}

fn is_temporary(name: &str) -> bool {
    name.starts_with(".chunk-") && name.ends_with(".tmp")
}

/// `umrank embed` of the demo world into `out` with `store`, 8 vectors per chunk.
fn embed_args<'a>(out: &'a str, store: &'a str, model: &'a str) -> Vec<&'a str> {
    let from = ingested().to_str().unwrap();
    vec![
        "embed",
        "--out",
        out,
        "--from",
        from,
        "--model",
        model,
        "--batch-size",
        "4",
        "--cache-rows",
        "8",
        "--store",
        store,
    ]
}

/// A real `kill -9` in the middle of a store write: the binary is stopped for good inside its third chunk write
/// (after the rows went into the temporary file, before the rename; `UMRANK_STORE_STALL_WRITE`) and killed there.
/// The rerun reads the two complete chunks, never the temporary file, embeds the rest, and writes the bytes of a
/// clean run. `umrank store gc` then removes the killed writer's temporary file and keeps every chunk the run uses.
#[test]
fn a_kill_during_a_store_write_is_never_read_and_the_rerun_matches_a_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = clip_dir();
    let model = model.to_str().unwrap();
    let (out, store) = (dir.path().join("embed"), dir.path().join("store"));
    let (out_s, store_s) = (out.to_str().unwrap(), store.to_str().unwrap());

    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_umrank"))
        .args(embed_args(out_s, store_s, model))
        .env(umrank::embed::STALL_WRITE_ENV, "3")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Two complete chunks first, then a temporary file: that is the third write's, which stalls for good, so
    // the wait has no race. The deadline only stops a broken build from hanging the suite.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while files_under(&store, is_chunk).len() < 2 || files_under(&store, is_temporary).is_empty() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "the run ended before it stalled"
        );
        assert!(std::time::Instant::now() < deadline, "no store write began");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    let temporary = files_under(&store, is_temporary);
    assert_eq!(temporary.len(), 1, "the killed write's temporary file");
    assert_eq!(
        files_under(&store, is_chunk).len(),
        2,
        "two complete chunks"
    );
    assert!(!out.join("manifest.json").exists());

    // The same command again, without the stall.
    let (ok, _, stderr) = umrank(&embed_args(out_s, store_s, model));
    assert!(ok, "{stderr}");
    let stats: serde_json::Value =
        serde_json::from_slice(&fs::read(umrank::embed::stats_path(&out, Shard::ALL)).unwrap())
            .unwrap();
    assert_eq!(stats["reused"], 16, "the two complete chunks: {stats}");
    assert_eq!(
        stats["embedded"].as_u64().unwrap() + 16,
        stats["inputs"].as_u64().unwrap()
    );
    let (clean, clean_store) = (dir.path().join("clean"), dir.path().join("clean_store"));
    umrank_ok(&embed_args(
        clean.to_str().unwrap(),
        clean_store.to_str().unwrap(),
        model,
    ));
    assert_eq!(part_hashes(&out), part_hashes(&clean));
    // The rerun's first chunk holds the rows the killed write held, the same bits, so the same name: it
    // replaced the temporary file.
    assert!(!temporary[0].exists());

    // Pruning: a kept run without references is refused; young files are kept; with no minimum age a killed
    // writer's temporary file and an unreferenced chunk go, and every chunk the run used stays.
    let model_dir = temporary[0].parent().unwrap();
    let stale = model_dir.join(format!(".chunk-{}.parquet.tmp", "f".repeat(64)));
    fs::write(&stale, b"PAR1 torn").unwrap();
    let stranger = model_dir.join(format!("chunk-{}.parquet", "0".repeat(64)));
    fs::write(&stranger, b"not a chunk anyone uses").unwrap();
    let gc = |extra: &[&str]| {
        let mut args = vec!["store", "gc", store_s, "--keep-runs", out_s];
        args.extend_from_slice(extra);
        umrank(&args)
    };
    let (ok, _, stderr) = umrank(&["store", "gc", store_s, "--keep-runs", store_s]);
    assert!(!ok && stderr.contains("store_refs"), "{stderr}");
    let (ok, stdout, _) = gc(&[]);
    assert!(
        ok && stdout.is_empty(),
        "everything is younger than 6h: {stdout}"
    );
    let (ok, stdout, _) = gc(&["--min-age", "0", "--dry-run"]);
    assert!(ok && stdout.lines().count() == 2, "{stdout}");
    assert!(stranger.exists() && stale.exists());
    let used = files_under(&store, is_chunk).len() - 1;
    let (ok, stdout, stderr) = gc(&["--min-age", "0"]);
    assert!(ok, "{stderr}");
    let removed: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        removed,
        [stale.to_str().unwrap(), stranger.to_str().unwrap()]
    );
    assert!(files_under(&store, is_temporary).is_empty());
    assert_eq!(files_under(&store, is_chunk).len(), used);
    // The pruned store still serves the whole run.
    let mut forced = embed_args(out_s, store_s, model);
    forced.push("--force");
    let (ok, _, stderr) = umrank(&forced);
    assert!(ok && stderr.contains(", 0 embedded"), "{stderr}");
    assert_eq!(part_hashes(&out), part_hashes(&clean));
}

/// On the CPU, GME embeds each item alone, so an item's vector is the same bits in whatever batch it comes
/// (docs/mining.md#batch-invariance).
#[test]
fn gme_gives_an_item_the_same_bits_in_any_batch() {
    let model = cpu_model(&fixture("vlm/qwen2_vl"), 8);
    let texts = [
        "a red circle",
        "two blue squares next to a green triangle under a yellow star",
        "x",
    ];
    let items: Vec<Prepared> = texts
        .iter()
        .map(|t| Prepared {
            instruction: Some("Find the matching caption."),
            text: Some(t),
            image: None,
        })
        .collect();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let together = model.embed(&items).unwrap();
    for (item, vector) in items.iter().zip(&together) {
        let alone = model.embed(std::slice::from_ref(item)).unwrap();
        assert_eq!(bits(&alone[0]), bits(vector));
    }
}
