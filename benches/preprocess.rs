//! Qwen2-VL image preprocessing throughput on one thread: decode + smart_resize + resize + normalise + patchify of
//! 640x480 JPEGs (real photographs, tests/fixtures/preprocess/bench/), transformers' default min/max pixels and its
//! default image processor backend (torchvision).
//!
//!     cargo bench --bench preprocess
//!
//! docs/performance.md#cpu-bars sets the bar at 240 images/s per thread; benches/preprocess_vs_transformers.py runs
//! this and transformers' Qwen2VLImageProcessor side by side. The last line, `RESULT images_per_sec=...`, is what that
//! script reads.

use std::path::Path;
use std::time::{Duration, Instant};

use umrank::media::preprocess::{
    decode, into_rgb8, resize_rgb, ImageInput, ImagePreprocessor, Qwen2VlParams, Qwen2VlProcessor,
};

const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(4);

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/preprocess/bench");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "jpg"))
        .collect();
    paths.sort();
    let images: Vec<Vec<u8>> = paths
        .iter()
        .map(|p| std::fs::read(p).expect("bench image"))
        .collect();
    assert!(!images.is_empty(), "no JPEGs in {}", dir.display());

    let processor =
        Qwen2VlProcessor::new(Qwen2VlParams::default()).expect("default params are valid");
    let sample = processor
        .preprocess(ImageInput::Encoded(&images[0]))
        .expect("bench image preprocesses");
    println!(
        "{} images ({}), grid_thw {:?}, {} patches x {} values, {} vision tokens",
        images.len(),
        paths
            .iter()
            .filter_map(|p| p.file_name()?.to_str())
            .collect::<Vec<_>>()
            .join(", "),
        sample.grid_thw,
        sample.num_patches,
        sample.patch_dim,
        sample.num_vision_tokens()
    );

    stage_breakdown(&processor, &images);
    let per_sec = throughput(&images, |bytes| {
        let out = processor
            .preprocess(ImageInput::Encoded(bytes))
            .expect("preprocess");
        std::hint::black_box(out.patches.len());
    });
    println!("decode+smart_resize+resize+normalise+patchify, 1 thread: {per_sec:.1} images/s");
    println!("RESULT images_per_sec={per_sec:.2}");
}

/// Images per second of `work` run over `images` round-robin on this thread, after a warm-up.
fn throughput(images: &[Vec<u8>], mut work: impl FnMut(&[u8])) -> f64 {
    let start = Instant::now();
    let mut i = 0;
    while start.elapsed() < WARMUP {
        work(&images[i % images.len()]);
        i += 1;
    }
    let start = Instant::now();
    let mut done = 0usize;
    while start.elapsed() < MEASURE {
        work(&images[done % images.len()]);
        done += 1;
    }
    done as f64 / start.elapsed().as_secs_f64()
}

/// Where the time goes: each stage alone, in milliseconds per image.
fn stage_breakdown(processor: &Qwen2VlProcessor, images: &[Vec<u8>]) {
    let decode_only = throughput(images, |bytes| {
        std::hint::black_box(into_rgb8(decode(bytes).expect("decode"), true).expect("rgb"));
    });
    let decoded: Vec<_> = images
        .iter()
        .map(|b| into_rgb8(decode(b).expect("decode"), true).expect("rgb"))
        .collect();
    let (height, width) = processor
        .target_size(decoded[0].height(), decoded[0].width())
        .expect("target size");
    let (resample, backend) = (processor.params().resample, processor.params().backend);
    let mut next = 0;
    let resize_only = throughput(images, |_| {
        let image = &decoded[next % decoded.len()];
        next += 1;
        std::hint::black_box(resize_rgb(image, width, height, resample, backend).expect("resize"));
    });
    let resized: Vec<_> = decoded
        .iter()
        .map(|image| {
            resize_rgb(image, width, height, resample, backend)
                .expect("resize")
                .into_owned()
        })
        .collect();
    let mut next = 0;
    let patchify_only = throughput(images, |_| {
        let image = &resized[next % resized.len()];
        next += 1;
        let out = processor.preprocess_rgb(image).expect("patchify");
        std::hint::black_box(out.patches.len());
    });
    println!(
        "per image: decode {:.3} ms, resize {:.3} ms, normalise+patchify {:.3} ms",
        1e3 / decode_only,
        1e3 / resize_only,
        1e3 / patchify_only
    );
}
