//! Training from a GGUF file: SmolLM2-135M-Instruct's Q4_1 checkpoint (the test asset) builds as a trainable
//! reranker with LoRA on every projection and the GGUF's own vocabulary, and the adapter it writes applies to the
//! same GGUF at inference, as the eval stage loads it.

use crate::common::assets;

use candle_core::{Device, Tensor};
use umrank::models::formats::gguf::GgufCheckpoint;
use umrank::models::reranker::{PairSide, Reranker};
use umrank::train::model::TrainableReranker;
use umrank::train::TrainConfig;

/// Training SmolLM2's GGUF with `tune` ("lora" or "full").
fn config(tune: &str) -> TrainConfig {
    toml::from_str(&format!(
        "model = '{}'\ntune = '{tune}'\nlora_r = 4",
        assets::smollm2_gguf().display()
    ))
    .unwrap()
}

/// p_yes of one fixed pair under `adapter` (none: the base model).
fn p_yes(adapter: Option<&std::path::Path>) -> f32 {
    let reranker = Reranker::load(&assets::smollm2_gguf(), adapter, &Device::Cpu).unwrap();
    let text = |text| PairSide {
        text: Some(text),
        image: None,
    };
    let pair = reranker
        .prompt(
            "Retrieve the manual page description that matches this summary.",
            text("copy a string"),
            text("The strcpy() function copies the string pointed to by src to dst."),
            128,
        )
        .unwrap();
    reranker.score(&[pair], 1).unwrap()[0].p_yes
}

#[test]
fn a_gguf_model_trains_lora_adapters_that_apply_to_the_same_gguf() {
    let model = TrainableReranker::build(&config("lora"), 7, &Device::Cpu).unwrap();
    let trainable = model.trainable();
    // 30 layers x 7 projections x (A, B), and nothing of the base.
    assert_eq!(trainable.len(), 30 * 7 * 2);
    assert!(trainable
        .iter()
        .all(|(name, _)| name.ends_with(".lora_A") || name.ends_with(".lora_B")));
    let checkpoint = GgufCheckpoint::read(&assets::smollm2_gguf(), &Device::Cpu).unwrap();
    let text = "Retrieve a page: copy a string";
    assert_eq!(
        model.tokenizer().encode(text, false).unwrap(),
        checkpoint
            .tokenizer()
            .encode(text, false)
            .unwrap()
            .get_ids(),
        "the trainable model reads the GGUF's own vocabulary"
    );

    let tmp = tempfile::tempdir().unwrap();
    let fresh = tmp.path().join("fresh");
    model.save_adapter(&fresh).unwrap();
    let untouched = p_yes(None);
    // A fresh adapter's B is zero: the adapted model is the base model.
    assert!((p_yes(Some(&fresh)) - untouched).abs() < 1e-6);

    for (name, var) in &trainable {
        if name.ends_with(".lora_B") {
            let values = Tensor::randn(0f32, 0.05, var.dims(), &Device::Cpu).unwrap();
            var.set(&values).unwrap();
        }
    }
    let trained = tmp.path().join("trained");
    model.save_adapter(&trained).unwrap();
    let adapted = p_yes(Some(&trained));
    assert!(
        (adapted - untouched).abs() > 1e-3,
        "the saved adapter changes the GGUF's score ({adapted} vs {untouched})"
    );
}

#[test]
fn full_fine_tuning_of_a_gguf_is_refused_before_training() {
    let problem = config("full").validate().unwrap_err().to_string();
    assert!(problem.contains("`tune`"), "{problem}");
    assert!(problem.contains("GGUF"), "{problem}");
    assert!(config("lora").validate().is_ok());
}
