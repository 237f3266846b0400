//! The train stage's charts (issue 6): `plots/loss.png` and `plots/weights.png` are written with the run's other
//! outputs, decode as PNGs of the chart size, and are byte-identical for two runs of the same job (they draw no
//! wall-clock field).

use crate::common::train_data;

use std::path::Path;

use candle_core::Device;
use train_data::{small_demo_data, tokenizer_dir};
use umrank::charts::CHART_SIZE;
use umrank::dataset::Dataset;
use umrank::schema::outputs::train::{LOSS_PLOT, PLOTS, WEIGHTS_PLOT};
use umrank::train::{train, RunSettings, TrainConfig, TrainInputs};

fn run(out: &Path, inputs: &TrainInputs) {
    let config: TrainConfig = toml::from_str(&format!(
        "init = 'tiny-text'\ntokenizer = '{}'\nmax_len = 256\ngroups_per_batch = 2\nlr = 1e-3\n\
         checkpoint_every = 0\nmax_steps = 4\nobjective = 'unified'\nweight = 'cl'\ndirection = 'sft'",
        tokenizer_dir().display()
    ))
    .unwrap();
    let settings = RunSettings {
        seed: 5,
        device: Device::Cpu,
        out_dir: out.to_path_buf(),
        run_key: "plots".into(),
        stop_after: None,
    };
    let outcome = train(&config, inputs, &settings).unwrap();
    assert_eq!(outcome.log.len(), 4);
}

#[test]
fn the_loss_and_weight_charts_are_written_and_reproducible() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 2);
    let inputs = TrainInputs {
        groups: Dataset::open(&data.shards.join("sft")).unwrap(),
        corpus: None,
        images: None,
    };
    let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
    run(&a, &inputs);
    run(&b, &inputs);
    for file in [LOSS_PLOT, WEIGHTS_PLOT] {
        let bytes = std::fs::read(a.join(PLOTS).join(file)).unwrap();
        let png = image::load_from_memory_with_format(&bytes, image::ImageFormat::Png).unwrap();
        assert_eq!((png.width(), png.height()), CHART_SIZE, "{file}");
        // Something is drawn: a chart is not one flat colour.
        let rgb = png.to_rgb8();
        let first = rgb.get_pixel(0, 0);
        assert!(rgb.pixels().any(|p| p != first), "{file} is blank");
        assert_eq!(
            bytes,
            std::fs::read(b.join(PLOTS).join(file)).unwrap(),
            "{file} differs between two runs of the same job"
        );
    }
}
