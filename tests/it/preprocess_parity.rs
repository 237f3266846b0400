//! Parity of src/media/preprocess with transformers' image processors: Qwen2-VL on both backends (torchvision, the
//! default, and PIL), CLIP and SigLIP on PIL.
//!
//! Fixtures: tests/fixtures/preprocess/, made by gen_preprocess.py there (transformers 5.25, torch 2.15,
//! torchvision 0.29, Pillow 13) from crops of scikit-image's sample photographs and the photographs of
//! tests/fixtures/jpeg.
//!
//! Tolerances, and why.
//!
//! - Exact (asserted bit for bit): target sizes and grids (smart_resize, shortest-edge sizes), crop geometry, patch
//!   order, normalisation (a per-channel table computed in the backend's precision and order), decoding (JPEG as
//!   libjpeg-turbo, PNG, alpha compositing over white), and the whole torchvision pipeline: torch's uint8 resize is
//!   integer arithmetic once its i16 weights are fixed, so the resized pixels equal torchvision's on every
//!   photograph and size of torchvision_resize.json, and the processor's pixel values equal transformers'.
//! - The PIL resample: PIL and fast_image_resize run the same bicubic convolution in the same pass order, but PIL
//!   quantises weights to 22 fractional bits and fast_image_resize to about 14, so where the exact filtered value
//!   lies within a hair of a rounding boundary the two land on neighbouring grey levels: every value within one
//!   grey level (1/255/std after normalisation), at most 2% of values off at all (the fixtures show 0.1-1.1%), mean
//!   difference at most 0.02 levels.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use image::RgbImage;
use safetensors::SafeTensors;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use umrank::media::preprocess::{
    decode, into_rgb8, resize_rgb, smart_resize, ClipProcessor, ImageBackend, ImageInput,
    ImagePreprocessor, PreprocessError, PreprocessorConfig, ProcessorKind, Qwen2VlProcessor,
    Resample,
};

/// The PIL backend (only the resample's weight precision differs).
const PIL_RESIZE_TOLERANCE: Tolerance = Tolerance {
    max_levels: 1.0,
    max_differing_fraction: 0.02,
    max_mean_levels: 0.02,
};

/// The torchvision backend: bit for bit.
const EXACT: Tolerance = Tolerance {
    max_levels: 0.0,
    max_differing_fraction: 0.0,
    max_mean_levels: 0.0,
};

#[derive(Deserialize)]
struct Reference {
    smart_resize: Vec<SmartResizeCase>,
    decoded: Vec<DecodedImage>,
    cases: Vec<ProcessorCase>,
}

#[derive(Deserialize)]
struct SmartResizeCase {
    height: u64,
    width: u64,
    factor: u64,
    min_pixels: u64,
    max_pixels: u64,
    expected: Option<(u64, u64)>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct DecodedImage {
    image: String,
    height: u32,
    width: u32,
    rgb_sha256: String,
    decoded_png: Option<String>,
}

#[derive(Deserialize)]
struct ProcessorCase {
    name: String,
    image: String,
    config: serde_json::Value,
    tensor: String,
    shape: Vec<usize>,
    resized: (u32, u32),
    grid_thw: Option<[usize; 3]>,
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess")
}

fn reference() -> Reference {
    let json = std::fs::read_to_string(fixtures().join("reference.json")).unwrap();
    serde_json::from_str(&json).unwrap()
}

fn image_bytes(name: &str) -> Vec<u8> {
    std::fs::read(fixtures().join("images").join(name)).unwrap()
}

fn our_rgb(name: &str) -> RgbImage {
    into_rgb8(decode(&image_bytes(name)).unwrap(), true).unwrap()
}

/// The reference tensors, as f32, by name.
fn reference_tensors() -> HashMap<String, (Vec<usize>, Vec<f32>)> {
    let bytes = std::fs::read(fixtures().join("reference.safetensors")).unwrap();
    let tensors = SafeTensors::deserialize(&bytes).unwrap();
    tensors
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name}");
            let values = view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect();
            (name, (view.shape().to_vec(), values))
        })
        .collect()
}

#[test]
fn smart_resize_matches_the_python_formula() {
    let cases = reference().smart_resize;
    assert!(cases.len() > 300);
    for c in &cases {
        let ours = smart_resize(c.height, c.width, c.factor, c.min_pixels, c.max_pixels);
        let what = format!(
            "smart_resize({}, {}, {}, {}, {})",
            c.height, c.width, c.factor, c.min_pixels, c.max_pixels
        );
        match (&c.expected, &c.error, ours) {
            // Python returns a zero side only for min_pixels 0; resizing to it would fail there too.
            (Some((0, _)) | Some((_, 0)), _, Err(PreprocessError::ZeroSize { .. })) => {}
            (Some(expected), None, Ok(got)) => assert_eq!(&got, expected, "{what}"),
            (None, Some(kind), Err(PreprocessError::AspectRatio { .. })) => {
                assert_eq!(kind, "ValueError", "{what}")
            }
            (None, Some(kind), Err(PreprocessError::ZeroSize { .. })) => {
                assert_eq!(kind, "ZeroDivisionError", "{what}")
            }
            (expected, error, got) => {
                panic!("{what}: python {expected:?} / {error:?}, ours {got:?}")
            }
        }
    }
}

/// PIL's decoded RGB of a fixture image, as stored beside the fixture where there is one (JPEG and alpha
/// images), else ours (which `decoding_matches_pil` proves bit-identical).
fn pil_rgb(reference: &Reference, name: &str) -> RgbImage {
    let entry = reference.decoded.iter().find(|d| d.image == name).unwrap();
    match &entry.decoded_png {
        Some(png) => image::open(fixtures().join(png)).unwrap().into_rgb8(),
        None => our_rgb(name),
    }
}

#[test]
fn decoding_matches_pil() {
    let reference = reference();
    assert!(reference
        .decoded
        .iter()
        .any(|d| d.image == "alpha_table.png"));
    for entry in &reference.decoded {
        let rgb = our_rgb(&entry.image);
        assert_eq!(
            (rgb.height(), rgb.width()),
            (entry.height, entry.width),
            "{}",
            entry.image
        );
        let digest = hex::encode(Sha256::digest(rgb.as_raw()));
        assert_eq!(
            digest, entry.rgb_sha256,
            "{} must decode bit-identically",
            entry.image
        );
        if let Some(png) = &entry.decoded_png {
            let pil = image::open(fixtures().join(png)).unwrap().into_rgb8();
            assert_eq!(rgb.as_raw(), pil.as_raw(), "{} against {png}", entry.image);
        }
    }
}

#[test]
fn processors_match_transformers_from_identical_pixels() {
    let reference = reference();
    let tensors = reference_tensors();
    for case in &reference.cases {
        let rgb = image::DynamicImage::ImageRgb8(pil_rgb(&reference, &case.image));
        let stats = run_case(case, &tensors, ImageInput::Decoded(&rgb));
        eprintln!("{} (PIL pixels): {stats:?}", case.name);
        tolerance(case).check(&stats, &case.name);
    }
}

#[test]
fn processors_match_transformers_from_encoded_bytes() {
    let reference = reference();
    let tensors = reference_tensors();
    for case in &reference.cases {
        let bytes = image_bytes(&case.image);
        let stats = run_case(case, &tensors, ImageInput::Encoded(&bytes));
        eprintln!("{} (bytes): {stats:?}", case.name);
        tolerance(case).check(&stats, &case.name);
    }
}

/// How closely a case must match: exactly for Qwen2-VL on the torchvision backend, within
/// [`PIL_RESIZE_TOLERANCE`] for the PIL backend (Qwen2-VL's PIL class, and CLIP / SigLIP, which run on PIL).
fn tolerance(case: &ProcessorCase) -> Tolerance {
    let config: PreprocessorConfig = serde_json::from_value(case.config.clone()).unwrap();
    match (config.kind().unwrap(), config.backend()) {
        (ProcessorKind::Qwen2Vl, ImageBackend::Torchvision) => EXACT,
        _ => PIL_RESIZE_TOLERANCE,
    }
}

#[test]
fn both_backends_are_covered() {
    let cases = reference().cases;
    for backend in [ImageBackend::Torchvision, ImageBackend::Pil] {
        let qwen = cases.iter().filter(|c| {
            let config: PreprocessorConfig = serde_json::from_value(c.config.clone()).unwrap();
            config.kind().unwrap() == ProcessorKind::Qwen2Vl && config.backend() == backend
        });
        assert!(qwen.count() >= 10, "{backend}");
    }
}

#[derive(Deserialize)]
struct ResizeReference {
    cases: Vec<ResizeCase>,
}

#[derive(Deserialize)]
struct ResizeCase {
    image: String,
    filter: String,
    height: u32,
    width: u32,
    sha256: String,
}

/// torchvision's uint8 antialiased resize, reproduced bit for bit on real photographs: down- and up-scaling, one
/// axis or both, odd sizes, Qwen2-VL's own targets, bicubic (Qwen2-VL's filter) and bilinear / Lanczos.
#[test]
fn torchvision_resize_is_bit_exact_on_photographs() {
    let json = std::fs::read_to_string(fixtures().join("torchvision_resize.json")).unwrap();
    let reference: ResizeReference = serde_json::from_str(&json).unwrap();
    assert!(reference.cases.len() >= 90);
    let mut photos: HashMap<String, RgbImage> = HashMap::new();
    let mut mismatches = Vec::new();
    for case in &reference.cases {
        let rgb = photos.entry(case.image.clone()).or_insert_with(|| {
            let bytes = std::fs::read(fixtures().join(&case.image)).unwrap();
            into_rgb8(decode(&bytes).unwrap(), true).unwrap()
        });
        let resample = match case.filter.as_str() {
            "bicubic" => Resample::Bicubic,
            "bilinear" => Resample::Bilinear,
            "lanczos" => Resample::Lanczos,
            other => panic!("unknown filter {other}"),
        };
        let out = resize_rgb(
            rgb,
            case.width,
            case.height,
            resample,
            ImageBackend::Torchvision,
        )
        .unwrap();
        let digest = hex::encode(Sha256::digest(out.as_raw()));
        if digest != case.sha256 {
            mismatches.push(format!(
                "{} {} {}x{}",
                case.image, case.filter, case.width, case.height
            ));
        }
    }
    assert!(
        mismatches.is_empty(),
        "differ from torchvision: {mismatches:#?}"
    );
}

/// The PIL backend is still PIL's resize, not torchvision's: where the width grows and the height shrinks, Pillow 13
/// runs the vertical pass first and torch the horizontal one, and the results part on a real photograph.
#[test]
fn backends_resize_differently() {
    let rgb = our_rgb("chelsea.jpg");
    let pil = resize_rgb(&rgb, 301, 61, Resample::Bicubic, ImageBackend::Pil).unwrap();
    let tv = resize_rgb(&rgb, 301, 61, Resample::Bicubic, ImageBackend::Torchvision).unwrap();
    let differing = pil
        .as_raw()
        .iter()
        .zip(tv.as_raw())
        .filter(|(a, b)| a != b)
        .count();
    assert!(differing > 0, "the backends agree on every value");
}

fn run_case(
    case: &ProcessorCase,
    tensors: &HashMap<String, (Vec<usize>, Vec<f32>)>,
    input: ImageInput,
) -> DiffStats {
    let config: PreprocessorConfig = serde_json::from_value(case.config.clone()).unwrap();
    let (shape, expected) = &tensors[&case.tensor];
    assert_eq!(shape, &case.shape, "{}", case.name);
    let rgb = our_rgb(&case.image);
    let (height, width) = (rgb.height(), rgb.width());
    match config.kind().unwrap() {
        ProcessorKind::Qwen2Vl => check_qwen(case, &config, input, (height, width), expected),
        ProcessorKind::Clip | ProcessorKind::Siglip => {
            check_clip(case, &config, input, (height, width), expected)
        }
    }
}

fn check_qwen(
    case: &ProcessorCase,
    config: &PreprocessorConfig,
    input: ImageInput,
    (height, width): (u32, u32),
    expected: &[f32],
) -> DiffStats {
    let processor = Qwen2VlProcessor::from_config(config).unwrap();
    let params = processor.params();
    assert_eq!(
        processor.target_size(height, width).unwrap(),
        case.resized,
        "{}",
        case.name
    );
    let out = processor.preprocess(input).unwrap();
    let grid = case.grid_thw.unwrap();
    assert_eq!(out.grid_thw, grid, "{}", case.name);
    assert_eq!(
        processor.grid_thw(height, width).unwrap(),
        grid,
        "{}",
        case.name
    );
    let (p, t) = (
        params.patch_size as usize,
        params.temporal_patch_size as usize,
    );
    assert_eq!(out.num_patches, grid[1] * grid[2], "{}", case.name);
    assert_eq!(out.num_patches, case.shape[0], "{}", case.name);
    assert_eq!(out.patch_dim, 3 * t * p * p, "{}", case.name);
    assert_eq!(
        out.patches.len(),
        out.num_patches * out.patch_dim,
        "{}",
        case.name
    );
    let tokens = out.num_patches / (params.merge_size as usize).pow(2);
    assert_eq!(out.num_vision_tokens(), tokens, "{}", case.name);
    assert_eq!(
        processor.num_vision_tokens(height, width).unwrap(),
        tokens,
        "{}",
        case.name
    );

    // The fixture keeps frame 0 of each (patch, channel); every frame of ours must match it.
    let plane = p * p;
    let mut stats = DiffStats::default();
    for (patch, ours) in out.patches.chunks_exact(out.patch_dim).enumerate() {
        for c in 0..3 {
            let want = &expected[(patch * 3 + c) * plane..][..plane];
            for frame in 0..t {
                let got = &ours[(c * t + frame) * plane..][..plane];
                stats.add(got, want, params.normalization.std[c]);
            }
        }
    }
    stats
}

fn check_clip(
    case: &ProcessorCase,
    config: &PreprocessorConfig,
    input: ImageInput,
    (height, width): (u32, u32),
    expected: &[f32],
) -> DiffStats {
    let processor = ClipProcessor::from_config(config).unwrap();
    let params = processor.params();
    assert_eq!(
        params.size.output_size(height, width),
        case.resized,
        "{}",
        case.name
    );
    let out = processor.preprocess(input).unwrap();
    assert_eq!(vec![out.c, out.h, out.w], case.shape, "{}", case.name);
    let plane = out.h * out.w;
    let mut stats = DiffStats::default();
    for c in 0..3 {
        let range = c * plane..(c + 1) * plane;
        stats.add(
            &out.data[range.clone()],
            &expected[range],
            params.normalization.std[c],
        );
    }
    stats
}

/// Differences measured in 8-bit grey levels (a normalised difference times std * 255).
#[derive(Debug, Default)]
struct DiffStats {
    values: usize,
    differing: usize,
    max_levels: f64,
    sum_levels: f64,
}

impl DiffStats {
    fn add(&mut self, ours: &[f32], reference: &[f32], std: f32) {
        assert_eq!(ours.len(), reference.len());
        for (&a, &b) in ours.iter().zip(reference) {
            // Exactly equal values must count as no difference at all, whatever the float noise of the conversion.
            let levels = if a == b {
                0.0
            } else {
                f64::from((a - b).abs()) * f64::from(std) * 255.0
            };
            self.add_levels(levels);
        }
    }

    fn add_levels(&mut self, levels: f64) {
        self.values += 1;
        if levels > 0.0 {
            self.differing += 1;
        }
        self.max_levels = self.max_levels.max(levels);
        self.sum_levels += levels;
    }
}

#[derive(Clone, Copy)]
struct Tolerance {
    max_levels: f64,
    max_differing_fraction: f64,
    max_mean_levels: f64,
}

impl Tolerance {
    fn check(&self, stats: &DiffStats, name: &str) {
        assert!(stats.values > 0, "{name}: nothing compared");
        let fraction = stats.differing as f64 / stats.values as f64;
        let mean = stats.sum_levels / stats.values as f64;
        // A difference of n levels comes back as n +- the float rounding of the normalised values.
        assert!(
            stats.max_levels <= self.max_levels + 1e-3,
            "{name}: {stats:?}"
        );
        assert!(
            fraction <= self.max_differing_fraction,
            "{name}: {fraction} of values differ: {stats:?}"
        );
        assert!(
            mean <= self.max_mean_levels,
            "{name}: mean difference {mean} levels: {stats:?}"
        );
    }
}

#[test]
fn batch_keeps_input_order_and_isolates_failures() {
    let processor = Qwen2VlProcessor::from_config(
        &PreprocessorConfig::from_json_str(r#"{"max_pixels": 12544}"#).unwrap(),
    )
    .unwrap();
    let names = [
        "chelsea.jpg",
        "camera_gray.png",
        "astronaut_alpha.png",
        "coffee_wide.png",
    ];
    let files: Vec<Vec<u8>> = names.iter().map(|n| image_bytes(n)).collect();
    let decoded = image::DynamicImage::ImageRgb8(our_rgb("hubble_tiny.png"));
    let garbage = b"not an image".to_vec();
    let mut inputs: Vec<ImageInput> = files.iter().map(|f| ImageInput::Encoded(f)).collect();
    inputs.insert(2, ImageInput::Encoded(&garbage));
    inputs.push(ImageInput::Decoded(&decoded));

    let results = processor.preprocess_batch(&inputs);
    assert_eq!(results.len(), inputs.len());
    for (input, result) in inputs.iter().zip(&results) {
        match (processor.preprocess(*input), result) {
            (Ok(alone), Ok(batched)) => assert_eq!(&alone, batched),
            (Err(PreprocessError::Decode(_)), Err(PreprocessError::Decode(_))) => {}
            (alone, batched) => panic!("batch and single runs disagree: {alone:?} vs {batched:?}"),
        }
    }
    assert!(matches!(results[2], Err(PreprocessError::Decode(_))));
    assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 5);
}

#[test]
fn bad_images_are_errors_not_panics() {
    let qwen = Qwen2VlProcessor::from_config(&PreprocessorConfig::default()).unwrap();
    let strip = image::DynamicImage::ImageRgb8(RgbImage::new(201, 1));
    assert!(matches!(
        qwen.preprocess(ImageInput::Decoded(&strip)),
        Err(PreprocessError::AspectRatio { .. })
    ));
    let empty = image::DynamicImage::new_rgb8(0, 5);
    assert!(matches!(
        qwen.preprocess(ImageInput::Decoded(&empty)),
        Err(PreprocessError::ZeroSize { .. })
    ));
    let truncated = &image_bytes("chelsea.jpg")[..200];
    assert!(matches!(
        qwen.preprocess(ImageInput::Encoded(truncated)),
        Err(PreprocessError::JpegTruncated | PreprocessError::Jpeg(_))
    ));

    let no_convert = PreprocessorConfig::from_json_str(r#"{"do_convert_rgb": false}"#).unwrap();
    let strict = Qwen2VlProcessor::from_config(&no_convert).unwrap();
    let rgba = image_bytes("astronaut_alpha.png");
    assert!(matches!(
        strict.preprocess(ImageInput::Encoded(&rgba)),
        Err(PreprocessError::NotRgb { .. })
    ));

    let no_resize = PreprocessorConfig::from_json_str(r#"{"do_resize": false}"#).unwrap();
    let fixed = Qwen2VlProcessor::from_config(&no_resize).unwrap();
    let unaligned = image::DynamicImage::ImageRgb8(RgbImage::new(57, 56));
    assert!(matches!(
        fixed.preprocess(ImageInput::Decoded(&unaligned)),
        Err(PreprocessError::NotPatchAligned { .. })
    ));
    let aligned = image::DynamicImage::ImageRgb8(RgbImage::new(84, 56));
    assert_eq!(
        fixed
            .preprocess(ImageInput::Decoded(&aligned))
            .unwrap()
            .grid_thw,
        [1, 4, 6]
    );
}
