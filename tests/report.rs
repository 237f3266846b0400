//! Charts and reports render into files a person can open.

use std::path::Path;

use image::{Rgb, RgbImage};
use umrank::report::plot::{bar_chart, line_chart, Bars, PlotError, Series, CHART_SIZE};

fn decode(path: &Path) -> RgbImage {
    image::open(path)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", path.display()))
        .to_rgb8()
}

fn count_colour(image: &RgbImage, colour: [u8; 3]) -> usize {
    image.pixels().filter(|p| **p == Rgb(colour)).count()
}

fn non_white(image: &RgbImage) -> usize {
    image
        .pixels()
        .filter(|p| **p != Rgb([255, 255, 255]))
        .count()
}

#[test]
fn line_chart_writes_a_png_with_each_series_in_its_colour() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("loss.png");
    let loss = Series::new(
        "loss",
        (0..50)
            .map(|s| (s as f64, 1.0 / (1.0 + s as f64)))
            .collect(),
    );
    let lr = Series::new("lr", (0..50).map(|s| (s as f64, 0.01 * s as f64)).collect());
    line_chart(&path, "Training loss", "step", "loss", &[loss, lr]).unwrap();
    let image = decode(&path);
    assert_eq!(image.dimensions(), CHART_SIZE);
    // The first two series colours (Okabe-Ito blue and vermilion) are drawn, and so is text and axes.
    assert!(count_colour(&image, [0, 114, 178]) > 100);
    assert!(count_colour(&image, [213, 94, 0]) > 100);
    assert!(count_colour(&image, [0, 0, 0]) > 500);
    assert!(non_white(&image) > 2000);
}

#[test]
fn line_chart_is_byte_identical_when_drawn_twice_and_skips_non_finite_points() {
    let dir = tempfile::tempdir().unwrap();
    let series = [Series::new(
        "w+",
        vec![
            (0.0, 0.5),
            (1.0, f64::NAN),
            (2.0, 0.25),
            (f64::INFINITY, 1.0),
        ],
    )];
    let (a, b) = (dir.path().join("a.png"), dir.path().join("b.png"));
    line_chart(&a, "W+", "step", "weight", &series).unwrap();
    line_chart(&b, "W+", "step", "weight", &series).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    assert!(count_colour(&decode(&a), [0, 114, 178]) > 50);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");
}

#[test]
fn a_chart_without_finite_points_is_an_error_not_an_empty_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("empty.png");
    let nothing = [Series::new("loss", vec![(0.0, f64::NAN)])];
    let error = line_chart(&path, "t", "x", "y", &nothing).unwrap_err();
    assert!(matches!(error, PlotError::Empty { .. }), "{error}");
    let error = line_chart(&path, "t", "x", "y", &[]).unwrap_err();
    assert!(matches!(error, PlotError::Empty { .. }), "{error}");
    assert!(!path.exists());
}

#[test]
fn bar_chart_draws_one_bar_per_category_and_series() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ndcg.png");
    let tasks = vec!["text->image".to_owned(), "image->text".to_owned()];
    let bars = [
        Bars::new("first stage", vec![0.4, 0.5]),
        Bars::new("reranked", vec![0.6, 0.7]),
    ];
    bar_chart(&path, "nDCG@10 per task", "ndcg@10", &tasks, &bars).unwrap();
    let image = decode(&path);
    assert_eq!(image.dimensions(), CHART_SIZE);
    let (first, reranked) = (
        count_colour(&image, [0, 114, 178]),
        count_colour(&image, [213, 94, 0]),
    );
    assert!(first > 2000 && reranked > 2000, "{first} {reranked}");
    // Bar area grows with the value: the reranked bars (0.6 + 0.7) outweigh the first-stage ones (0.4 + 0.5).
    assert!(reranked > first);
}

#[test]
fn bar_chart_rejects_a_series_of_the_wrong_length() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.png");
    let error = bar_chart(
        &path,
        "t",
        "y",
        &["a".to_owned()],
        &[Bars::new("x", vec![0.1, 0.2])],
    )
    .unwrap_err();
    assert!(
        matches!(
            error,
            PlotError::Shape {
                values: 2,
                categories: 1,
                ..
            }
        ),
        "{error}"
    );
}
