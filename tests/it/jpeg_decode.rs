//! JPEG pixels equal Pillow's (libjpeg-turbo's) on real photographs in every layout the fixture holds: 4:2:0,
//! 4:2:2 and 4:4:4 chroma, progressive, restart markers, greyscale, CMYK, an EXIF orientation tag and an image
//! smaller than one MCU (tests/fixtures/jpeg, written by gen_fixture.py beside it). Each decoded image, converted
//! to RGB as transformers' `convert_rgb` would, must hash to the SHA-256 of Pillow's bytes.

use std::path::PathBuf;

use image::DynamicImage;
use serde_json::Value;
use sha2::{Digest, Sha256};
use umrank::media::preprocess::{decode, rgb8};

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jpeg")
}

/// Pillow's mode name for what the decoder returned.
fn mode(image: &DynamicImage) -> &'static str {
    match image {
        DynamicImage::ImageLuma8(_) => "L",
        DynamicImage::ImageRgb8(_) => "RGB",
        _ => "other",
    }
}

#[test]
fn jpeg_pixels_equal_pillows_on_real_photographs() {
    let dir = fixture_dir();
    let expected: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("expected.json")).unwrap()).unwrap();
    let files: Vec<(&String, &Value)> = expected
        .as_object()
        .unwrap()
        .iter()
        .filter(|(name, _)| !name.starts_with('_'))
        .collect();
    assert_eq!(files.len(), 10, "fixture files");
    let mut mismatched = Vec::new();
    for (name, want) in files {
        let bytes = std::fs::read(dir.join(name)).unwrap();
        let image = decode(&bytes).unwrap_or_else(|err| panic!("{name}: {err}"));
        assert_eq!(
            (image.width() as u64, image.height() as u64),
            (
                want["width"].as_u64().unwrap(),
                want["height"].as_u64().unwrap()
            ),
            "{name}: size"
        );
        let want_mode = match want["mode"].as_str().unwrap() {
            "CMYK" => "RGB",
            other => other,
        };
        assert_eq!(mode(&image), want_mode, "{name}: mode");
        let rgb = rgb8(&image, true).unwrap();
        let digest = hex::encode(Sha256::digest(rgb.as_raw()));
        if digest != want["rgb_sha256"].as_str().unwrap() {
            mismatched.push(name.clone());
        }
    }
    assert!(
        mismatched.is_empty(),
        "pixels differ from Pillow's: {mismatched:?}"
    );
}

/// The `image` crate's own JPEG decoder, which umrank used before, does not give Pillow's pixels on these files:
/// the fixture can tell the two apart.
#[test]
fn the_fixture_separates_decoders() {
    let dir = fixture_dir();
    let bytes = std::fs::read(dir.join("rocket_420.jpg")).unwrap();
    let ours = decode(&bytes).unwrap().to_rgb8();
    let other = image::load_from_memory(&bytes).unwrap().to_rgb8();
    let differing = ours
        .as_raw()
        .iter()
        .zip(other.as_raw())
        .filter(|(a, b)| a != b)
        .count();
    assert!(differing > 0, "both decoders agree on every sample");
}

/// A JPEG cut short is reported with libjpeg's reason, and a corrupt header is an error, not a panic.
#[test]
fn broken_jpegs_are_errors() {
    let bytes = std::fs::read(fixture_dir().join("grace_hopper.jpg")).unwrap();
    let err = decode(&bytes[..600]).map(|_| ()).unwrap_err().to_string();
    assert!(err.contains("JPEG"), "{err}");
}
