//! The decoder against transformers on tiny random checkpoints (tests/fixtures/models, written by
//! gen_decoders.py), loaded through the real model-directory path: Qwen2 (transformers-4 config, q/k/v bias, tied
//! head, left padding), Qwen3 (transformers-5 config, q/k norm, head_dim != hidden / heads), Llama (sharded,
//! untied) and the Qwen2-VL text model (nested config, `model.language_model.*` weights, M-RoPE positions that
//! differ per row, input embeddings with spliced-in "image" rows). Also packed sequences, selected logit rows,
//! bf16, gradients, and the loader's errors.

use crate::common::reference;

use candle_core::{DType, Device, IndexOp, Tensor};
use reference::{fixture, get, load, rel_error, rel_error_at, to_f64, Batch};
use std::path::Path;
use umrank::models::decoder::{select_positions, AttentionLayout, Decoder};
use umrank::models::formats::hf_config::Architecture;
use umrank::models::gradcheck::GradCheck;

const TOLERANCE: f64 = 1e-4;

/// Runs `case`'s padded batch through the checkpoint and compares hidden states and logits at the real tokens.
fn assert_matches_transformers(checkpoint: &str, case: &str) {
    let decoder = load(checkpoint);
    let batch = Batch::of(case);
    let hidden = batch.hidden(&decoder, false);
    let logits = decoder.logits(&hidden).unwrap();
    let valid = batch.valid_positions();
    let hidden_err = rel_error_at(&hidden, &get(&format!("{case}.hidden")), &valid);
    let logits_err = rel_error_at(&logits, &get(&format!("{case}.logits")), &valid);
    assert!(
        hidden_err < TOLERANCE && logits_err < TOLERANCE,
        "{case}: hidden rel error {hidden_err:e}, logits rel error {logits_err:e}"
    );
}

#[test]
fn qwen2_matches_transformers() {
    let decoder = load("qwen2");
    let config = decoder.config();
    assert_eq!(config.architecture, Architecture::Qwen2);
    assert!(config.tie_word_embeddings && config.qkv_bias);
    assert_matches_transformers("qwen2", "qwen2");
}

#[test]
fn qwen3_matches_transformers() {
    let config = load("qwen3").config().clone();
    assert!(config.qk_norm);
    assert_ne!(
        config.head_dim * config.num_attention_heads,
        config.hidden_size
    );
    assert_matches_transformers("qwen3", "qwen3");
}

#[test]
fn sharded_llama_matches_transformers() {
    assert!(fixture("llama/model.safetensors.index.json").is_file());
    assert!(!load("llama").config().tie_word_embeddings);
    assert_matches_transformers("llama", "llama");
}

/// The VL text model fed embeddings (token embeddings with some rows replaced, as image features are) and
/// per-row (temporal, height, width) positions, against transformers' Qwen2-VL language model.
#[test]
fn qwen2_vl_mrope_matches_transformers() {
    let decoder = load("qwen2_vl");
    assert_eq!(decoder.config().mrope_section, Some(vec![2, 3, 3]));
    let batch = Batch::of("qwen2_vl");
    let positions = &batch.position_ids;
    assert_eq!(positions.dims(), [3, 3, 7]);
    assert_ne!(
        to_f64(&positions.i(1).unwrap()),
        to_f64(&positions.i(0).unwrap()),
        "the fixture must exercise distinct height positions"
    );
    let embeds = get("qwen2_vl.inputs_embeds");
    let hidden = decoder
        .forward_embeds(&embeds, positions, &batch.layout(DType::F32), false)
        .unwrap();
    let logits = decoder.logits(&hidden).unwrap();
    let valid = batch.valid_positions();
    let hidden_err = rel_error_at(&hidden, &get("qwen2_vl.hidden"), &valid);
    let logits_err = rel_error_at(&logits, &get("qwen2_vl.logits"), &valid);
    assert!(
        hidden_err < TOLERANCE && logits_err < TOLERANCE,
        "hidden {hidden_err:e}, logits {logits_err:e}"
    );
}

/// The padded batch's real tokens, concatenated into one row; positions gathered the same way (for M-RoPE, along
/// each of the three position rows).
fn pack(batch: &Batch, embeds: &Tensor) -> (Tensor, Tensor, Vec<usize>) {
    let valid = batch.valid_positions();
    let packed_embeds = select_positions(embeds, &valid)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let gather = |positions: &Tensor| -> Tensor {
        let as_hidden = positions
            .to_dtype(DType::F64)
            .unwrap()
            .unsqueeze(2)
            .unwrap();
        select_positions(&as_hidden, &valid)
            .unwrap()
            .squeeze(1)
            .unwrap()
            .to_dtype(DType::I64)
            .unwrap()
    };
    let positions = match batch.position_ids.rank() {
        2 => gather(&batch.position_ids).unsqueeze(0).unwrap(),
        _ => Tensor::stack(
            &(0..3)
                .map(|d| gather(&batch.position_ids.i(d).unwrap()))
                .collect::<Vec<_>>(),
            0,
        )
        .unwrap()
        .unsqueeze(1)
        .unwrap(),
    };
    let mut cu_seqlens = vec![0];
    for (row, _) in batch.last_positions() {
        let len = valid.iter().filter(|&&(r, _)| r == row).count();
        cu_seqlens.push(cu_seqlens.last().unwrap() + len);
    }
    (packed_embeds, positions, cu_seqlens)
}

fn assert_packed_matches_padded_reference(checkpoint: &str, case: &str, embeds: Option<Tensor>) {
    let decoder = load(checkpoint);
    let batch = Batch::of(case);
    let embeds = embeds.unwrap_or_else(|| decoder.embed(&batch.input_ids).unwrap());
    let (packed, positions, cu_seqlens) = pack(&batch, &embeds);
    assert_eq!(cu_seqlens, [0, 7, 11, 16]);
    let layout = AttentionLayout::packed(&cu_seqlens, DType::F32, &Device::Cpu).unwrap();
    let hidden = decoder
        .forward_embeds(&packed, &positions, &layout, false)
        .unwrap();
    let want = select_positions(&get(&format!("{case}.hidden")), &batch.valid_positions()).unwrap();
    let err = rel_error(&to_f64(&hidden), &to_f64(&want));
    assert!(err < TOLERANCE, "{case} packed: rel error {err:e}");
}

#[test]
fn packed_sequences_match_the_padded_reference() {
    assert_packed_matches_padded_reference("qwen3", "qwen3", None);
    assert_packed_matches_padded_reference("qwen2", "qwen2", None);
}

#[test]
fn packed_mrope_sequences_match_the_padded_reference() {
    assert_packed_matches_padded_reference(
        "qwen2_vl",
        "qwen2_vl",
        Some(get("qwen2_vl.inputs_embeds")),
    );
}

/// Scoring reads two LM-head rows at each row's last token: they must equal those columns of the full logits,
/// for a tied (Qwen2) and an untied (Llama) head.
#[test]
fn token_logits_are_columns_of_the_full_logits() {
    for (checkpoint, tokens) in [("qwen2", [9u32, 200, 17]), ("llama", [3, 311, 150])] {
        let decoder = load(checkpoint);
        let batch = Batch::of(checkpoint);
        let hidden = batch.hidden(&decoder, false);
        let last = select_positions(&hidden, &batch.last_positions()).unwrap();
        let selected = decoder.token_logits(&last, &tokens).unwrap();
        assert_eq!(selected.dims(), [3, 3]);
        let ids = Tensor::new(&tokens, &Device::Cpu).unwrap();
        let full = decoder
            .logits(&last)
            .unwrap()
            .index_select(&ids, 1)
            .unwrap();
        let err = rel_error(&to_f64(&selected), &to_f64(&full));
        assert!(err < 1e-6, "{checkpoint}: {err:e}");
        let vocab = decoder.config().vocab_size as u32;
        assert!(decoder.token_logits(&last, &[vocab]).is_err());
    }
}

#[test]
fn bf16_tracks_the_f32_reference() {
    let decoder = Decoder::from_model_dir(&fixture("qwen2"), DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(decoder.dtype(), DType::BF16);
    let batch = Batch::of("qwen2");
    let hidden = decoder
        .forward(
            &batch.input_ids,
            &batch.position_ids,
            &batch.layout(DType::BF16),
            false,
        )
        .unwrap();
    let logits = decoder.logits(&hidden).unwrap();
    assert_eq!(logits.dtype(), DType::BF16);
    let err = rel_error_at(&logits, &get("qwen2.logits"), &batch.valid_positions());
    assert!(err < 5e-2, "bf16 logits rel error {err:e}");
}

/// Backward through the whole decoder (q/k norm or q/k/v bias, rotary, masked attention, gated MLP, LoRA
/// adapters, final norm, LM-head rows) agrees with finite differences in f64.
#[test]
fn gradients_match_finite_differences() {
    let qwen3 = Decoder::from_model_dir(&fixture("qwen3"), DType::F64, &Device::Cpu).unwrap();
    let mut qwen2_lora =
        Decoder::from_model_dir(&fixture("qwen2"), DType::F64, &Device::Cpu).unwrap();
    qwen2_lora.load_lora(&fixture("qwen2_lora"), 0).unwrap();
    for decoder in [qwen3, qwen2_lora] {
        let ids = Tensor::new(&[[5u32, 77, 140]], &Device::Cpu).unwrap();
        let embeds = decoder.embed(&ids).unwrap();
        let positions = Tensor::new(&[[0u32, 1, 2]], &Device::Cpu).unwrap();
        let layout = AttentionLayout::causal(3, DType::F64, &Device::Cpu).unwrap();
        let f = |inputs: &[Tensor]| {
            let hidden = decoder.forward_embeds(&inputs[0], &positions, &layout, false)?;
            let logits = decoder.token_logits(&hidden, &[9, 200])?;
            let weights = Tensor::new(&[[[1.0f64, -0.7]]], &Device::Cpu)?;
            logits.broadcast_mul(&weights)?.sum_all()
        };
        let report = GradCheck::default().run(f, &[embeds]).unwrap();
        assert!(report.inputs[0].reached, "{report}");
        assert!(report.max_rel_error() < 1e-6, "{report}");
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A copy of the qwen2 checkpoint whose model.safetensors went through `edit`.
fn edited_qwen2(
    edit: impl FnOnce(&mut std::collections::HashMap<String, Tensor>),
) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("qwen2"), dir.path());
    let file = dir.path().join("model.safetensors");
    let mut tensors = candle_core::safetensors::load(&file, &Device::Cpu).unwrap();
    edit(&mut tensors);
    candle_core::safetensors::save(&tensors, &file).unwrap();
    dir
}

fn load_error(dir: &Path) -> String {
    Decoder::from_model_dir(dir, DType::F32, &Device::Cpu)
        .unwrap_err()
        .to_string()
}

#[test]
fn missing_tensor_error_names_the_tensor_and_file() {
    let name = "model.layers.1.self_attn.k_proj.bias";
    let dir = edited_qwen2(|tensors| {
        tensors.remove(name);
    });
    let err = load_error(dir.path());
    let file = dir.path().join("model.safetensors");
    assert!(
        err.contains(&format!("`{name}`")) && err.contains(&file.display().to_string()),
        "{err}"
    );
}

#[test]
fn wrong_shape_error_names_the_tensor_file_and_shapes() {
    let name = "model.layers.0.mlp.up_proj.weight";
    let dir = edited_qwen2(|tensors| {
        tensors.insert(
            name.into(),
            Tensor::zeros((63, 32), DType::F32, &Device::Cpu).unwrap(),
        );
    });
    let err = load_error(dir.path());
    assert!(
        err.contains(&format!("`{name}`"))
            && err.contains("model.safetensors")
            && err.contains("[63, 32]")
            && err.contains("[64, 32]"),
        "{err}"
    );
}

#[test]
fn untied_checkpoint_without_lm_head_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&fixture("llama"), dir.path());
    let index = dir.path().join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).unwrap();
    let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
    let shard = value["weight_map"]["lm_head.weight"]
        .as_str()
        .unwrap()
        .to_string();
    let shard_path = dir.path().join(&shard);
    let mut tensors = candle_core::safetensors::load(&shard_path, &Device::Cpu).unwrap();
    tensors.remove("lm_head.weight");
    candle_core::safetensors::save(&tensors, &shard_path).unwrap();

    // The index still maps lm_head.weight to the shard: the index itself is found inconsistent.
    let err = load_error(dir.path());
    assert!(
        err.contains("`lm_head.weight`") && err.contains(&shard),
        "{err}"
    );

    // With the index corrected, the decoder asks for the head and the error names the index.
    value["weight_map"]
        .as_object_mut()
        .unwrap()
        .remove("lm_head.weight");
    std::fs::write(&index, value.to_string()).unwrap();
    let err = load_error(dir.path());
    assert!(
        err.contains("`lm_head.weight`") && err.contains("model.safetensors.index.json"),
        "{err}"
    );
}

#[test]
fn bad_directories_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("config.json"), "{err}");
    std::fs::copy(fixture("qwen2/config.json"), dir.path().join("config.json")).unwrap();
    let err = load_error(dir.path());
    assert!(err.contains("no weights found"), "{err}");
}

#[test]
fn position_ids_must_fit_the_input() {
    let decoder = load("qwen2");
    let batch = Batch::of("qwen2");
    let layout = batch.layout(DType::F32);
    let wrong = batch.position_ids.narrow(1, 0, 6).unwrap();
    assert!(decoder
        .forward(&batch.input_ids, &wrong, &layout, false)
        .is_err());
    let three_rows = Tensor::stack(&[&batch.position_ids; 3], 0).unwrap();
    let err = decoder
        .forward(&batch.input_ids, &three_rows, &layout, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("position ids"), "{err}");
    let packed = AttentionLayout::packed(&[0, 7, 14, 21], DType::F32, &Device::Cpu).unwrap();
    let err = decoder
        .forward(&batch.input_ids, &batch.position_ids, &packed, false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("one row"), "{err}");
}
