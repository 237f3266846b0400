//! The Qwen2-VL / Qwen2.5-VL vision towers against transformers on tiny random checkpoints
//! (`tests/fixtures/models/vision`, written by `gen_vision.py` there), their configuration readers, their patch
//! layouts, and their trainability: gradients reach every weight and agree with finite differences.

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::PathBuf;
use umrank::models::gradcheck::GradCheck;
use umrank::models::layers::activation::Activation;
use umrank::models::layers::attention::AttentionKernel;
use umrank::models::layers::packed::PackedAttention;
use umrank::models::layers::rope::VisionRotaryEmbedding;
use umrank::models::qwen2_vl::grid::{frame_cu_seqlens, patch_positions, WindowPartition};
use umrank::models::qwen2_vl::{
    ImageGrid, VisionBlock, VisionConfig, VisionTransformer, VisionVariant, WindowAttention,
};

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/models/vision")
        .join(name)
}

fn reference_json() -> Value {
    let text = std::fs::read_to_string(fixture_path("reference.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn reference_tensors() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_path("reference.safetensors"), &Device::Cpu).unwrap()
}

fn grids(value: &Value) -> Vec<ImageGrid> {
    serde_json::from_value::<Vec<[usize; 3]>>(value.clone())
        .unwrap()
        .into_iter()
        .map(|[t, h, w]| ImageGrid::new(t, h, w))
        .collect()
}

fn usizes(value: &Value) -> Vec<usize> {
    serde_json::from_value(value.clone()).unwrap()
}

fn config(model: &str) -> VisionConfig {
    VisionConfig::from_path(&fixture_path(&format!("{model}/config.json"))).unwrap()
}

fn weights(model: &str) -> PathBuf {
    fixture_path(&format!("{model}/model.safetensors"))
}

fn tower(model: &str) -> VisionTransformer {
    // Safety: the fixture file is not modified while mapped.
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[weights(model)], DType::F32, &Device::Cpu).unwrap()
    };
    VisionTransformer::new(&config(model), vb.pp("visual")).unwrap()
}

/// `max |a - b| / max |b|`.
fn relative_error(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.dims(), b.dims());
    let max_abs = |t: &Tensor| {
        t.abs()
            .unwrap()
            .flatten_all()
            .unwrap()
            .max(0)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap() as f64
    };
    max_abs(&(a - b).unwrap()) / max_abs(b)
}

fn assert_tower_matches(model: &str) {
    let reference = reference_tensors();
    let grids = grids(&reference_json()["tower_grids"]);
    let merged = tower(model)
        .forward(&reference["pixel_values"], &grids)
        .unwrap();
    let expected = &reference[&format!("{model}.merged")];
    let error = relative_error(&merged, expected);
    assert!(error < 1e-4, "{model}: relative error {error:e}");
}

#[test]
fn qwen2_vl_tower_matches_transformers() {
    assert_tower_matches("qwen2_vl");
}

/// Blocks 0 and 2 attend within 2 x 2-token windows (cut short at the images' edges), block 1 over whole
/// images; the merged tokens come back in image order.
#[test]
fn qwen2_5_vl_tower_matches_transformers() {
    assert_tower_matches("qwen2_5_vl");
}

/// A tower that ignored the windows (or the window permutation) would not match: the fixture discriminates.
#[test]
fn qwen2_5_vl_without_windows_does_not_match() {
    let mut config = config("qwen2_5_vl");
    config.window = Some(WindowAttention {
        window_size: 56,
        fullatt_block_indexes: vec![0, 1, 2],
    });
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(&[weights("qwen2_5_vl")], DType::F32, &Device::Cpu)
            .unwrap()
    };
    let tower = VisionTransformer::new(&config, vb.pp("visual")).unwrap();
    let reference = reference_tensors();
    let merged = tower
        .forward(
            &reference["pixel_values"],
            &grids(&reference_json()["tower_grids"]),
        )
        .unwrap();
    let error = relative_error(&merged, &reference["qwen2_5_vl.merged"]);
    assert!(error > 1e-2, "relative error only {error:e}");
}

#[test]
fn patch_layouts_match_transformers() {
    for case in reference_json()["layouts"].as_array().unwrap() {
        let grids = grids(&case["grids"]);
        let positions: Vec<[u32; 2]> =
            serde_json::from_value(case["position_ids"].clone()).unwrap();
        assert_eq!(patch_positions(&grids, 2), positions, "{grids:?}");
        assert_eq!(
            frame_cu_seqlens(&grids),
            usizes(&case["cu_seqlens"]),
            "{grids:?}"
        );
        let window = case["window_size"].as_u64().unwrap() as usize / 28;
        let partition = WindowPartition::new(&grids, 2, window);
        assert_eq!(
            partition.merged_order,
            usizes(&case["window_index"]),
            "{grids:?}"
        );
        assert_eq!(
            partition.cu_seqlens,
            usizes(&case["cu_window_seqlens"]),
            "{grids:?}"
        );
        let inverse = partition.inverse_order();
        for (position, &token) in partition.merged_order.iter().enumerate() {
            assert_eq!(inverse[token], position);
        }
    }
}

#[test]
fn transformers_5_configs_read() {
    let qwen2 = config("qwen2_vl");
    assert_eq!(qwen2.variant, VisionVariant::Qwen2Vl);
    assert_eq!(
        (qwen2.depth, qwen2.hidden_size, qwen2.num_heads),
        (2, 32, 2)
    );
    assert_eq!((qwen2.intermediate_size, qwen2.out_hidden_size), (64, 48));
    assert_eq!(qwen2.hidden_act, Activation::QuickGelu);
    assert_eq!((qwen2.patch_dim(), qwen2.window), (1176, None));

    let qwen25 = config("qwen2_5_vl");
    assert_eq!(qwen25.variant, VisionVariant::Qwen25Vl);
    assert_eq!(
        (qwen25.depth, qwen25.hidden_size, qwen25.intermediate_size),
        (3, 32, 48)
    );
    assert_eq!((qwen25.out_hidden_size, qwen25.rope_theta), (48, 10000.0));
    assert_eq!(qwen25.hidden_act, Activation::Silu);
    assert_eq!(
        qwen25.window,
        Some(WindowAttention {
            window_size: 56,
            fullatt_block_indexes: vec![1]
        })
    );
    assert_eq!(qwen25.window_merged_tokens(), Some(2));
    assert!(qwen25.is_windowed_block(0) && !qwen25.is_windowed_block(1));
}

/// The layout of the released checkpoints' config.json (transformers 4): flat text fields, `in_chans`, defaults
/// left out.
#[test]
fn transformers_4_configs_read() {
    let qwen2_vl_2b = json!({
        "model_type": "qwen2_vl",
        "hidden_size": 1536,
        "vision_config": {
            "depth": 32, "embed_dim": 1280, "mlp_ratio": 4, "num_heads": 16, "in_chans": 3,
            "hidden_size": 1536, "patch_size": 14, "spatial_merge_size": 2, "spatial_patch_size": 14,
            "temporal_patch_size": 2
        }
    });
    let config = VisionConfig::from_model_config(&qwen2_vl_2b).unwrap();
    assert_eq!(config.variant, VisionVariant::Qwen2Vl);
    assert_eq!(
        (
            config.hidden_size,
            config.intermediate_size,
            config.out_hidden_size
        ),
        (1280, 5120, 1536)
    );
    assert_eq!(
        (config.head_dim(), config.hidden_act),
        (80, Activation::QuickGelu)
    );

    let qwen2_5_vl_3b = json!({
        "model_type": "qwen2_5_vl",
        "hidden_size": 2048,
        "vision_config": {
            "depth": 32, "hidden_act": "silu", "hidden_size": 1280, "intermediate_size": 3420,
            "num_heads": 16, "in_chans": 3, "out_hidden_size": 2048, "patch_size": 14,
            "spatial_merge_size": 2, "spatial_patch_size": 14, "window_size": 112,
            "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2, "temporal_patch_size": 2
        }
    });
    let config = VisionConfig::from_model_config(&qwen2_5_vl_3b).unwrap();
    assert_eq!(config.variant, VisionVariant::Qwen25Vl);
    assert_eq!(
        (
            config.hidden_size,
            config.intermediate_size,
            config.out_hidden_size
        ),
        (1280, 3420, 2048)
    );
    assert_eq!(config.window_merged_tokens(), Some(4));
    assert!(config.is_windowed_block(6) && !config.is_windowed_block(7));
}

/// A vision config that leaves the output width out gets the text model's width (transformers 5 nests it).
#[test]
fn missing_output_width_follows_the_text_model() {
    let config = json!({
        "model_type": "qwen2_5_vl",
        "text_config": {"hidden_size": 96},
        "vision_config": {"hidden_size": 64, "num_heads": 4, "depth": 1}
    });
    let config = VisionConfig::from_model_config(&config).unwrap();
    assert_eq!(config.out_hidden_size, 96);
    assert_eq!(config.window_merged_tokens(), Some(4));
}

#[test]
fn bad_configs_are_clear_errors() {
    let error = |config: Value| {
        VisionConfig::from_model_config(&config)
            .unwrap_err()
            .to_string()
    };
    let message = error(json!({"model_type": "qwen2_vl", "vision_config": {"depth": "deep"}}));
    assert!(message.contains("vision_config.depth"), "{message}");
    let message = error(json!({"model_type": "llava", "vision_config": {}}));
    assert!(message.contains("llava"), "{message}");
    let message = error(json!({"model_type": "qwen2_vl"}));
    assert!(message.contains("vision_config"), "{message}");
    let message = error(
        json!({"model_type": "qwen2_vl", "vision_config": {"embed_dim": 30, "num_heads": 4}}),
    );
    assert!(message.contains("num_heads"), "{message}");
    let message = error(json!({"model_type": "qwen2_5_vl", "vision_config": {"window_size": 14}}));
    assert!(message.contains("window_size"), "{message}");
    let message =
        error(json!({"model_type": "qwen2_vl", "vision_config": {"hidden_act": "relu6"}}));
    assert!(message.contains("hidden_act"), "{message}");
}

#[test]
fn inconsistent_inputs_are_clear_errors() {
    let tower = tower("qwen2_5_vl");
    let pixels = Tensor::zeros((24, 1176), DType::F32, &Device::Cpu).unwrap();
    let message = tower
        .forward(&pixels, &[ImageGrid::new(1, 4, 4)])
        .unwrap_err()
        .to_string();
    assert!(message.contains("(16, 1176)"), "{message}");
    let message = tower
        .forward(&pixels, &[ImageGrid::new(1, 4, 6), ImageGrid::new(1, 3, 0)])
        .unwrap_err()
        .to_string();
    assert!(message.contains("image 1"), "{message}");
    let message = tower
        .forward(&pixels, &[ImageGrid::new(1, 3, 8)])
        .unwrap_err()
        .to_string();
    assert!(message.contains("merge blocks"), "{message}");
    let message = tower.forward(&pixels, &[]).unwrap_err().to_string();
    assert!(message.contains("no images"), "{message}");
}

/// Backward from the merged tokens reaches every weight of the tower, the patch embedding included, with a
/// nonzero gradient: nothing in the tower stops gradients.
#[test]
fn gradients_reach_every_weight() {
    for model in ["qwen2_vl", "qwen2_5_vl"] {
        let mut varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let tower = VisionTransformer::new(&config(model), vb.pp("visual")).unwrap();
        varmap.load(weights(model)).unwrap();
        let reference = reference_tensors();
        let merged = tower
            .forward(
                &reference["pixel_values"],
                &grids(&reference_json()["tower_grids"]),
            )
            .unwrap();
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let weights = uniform(&mut rng, merged.dims(), 1.0)
            .to_dtype(DType::F32)
            .unwrap();
        let grads = (merged * weights)
            .unwrap()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        let vars = varmap.data().lock().unwrap();
        assert!(vars.contains_key("visual.patch_embed.proj.weight"));
        assert!(vars.len() > 20, "{model}: only {} vars", vars.len());
        for (name, var) in vars.iter() {
            let grad = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{model}: no gradient for {name}"));
            let norm = grad
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            assert!(
                norm > 0.0 && norm.is_finite(),
                "{model}: {name} gradient norm {norm}"
            );
        }
    }
}

fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], scale: f64) -> Tensor {
    let count = shape.iter().product();
    let values: Vec<f64> = (0..count)
        .map(|_| rng.random_range(-scale..scale))
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn tiny_block_config(variant: VisionVariant) -> VisionConfig {
    let vision = json!({"depth": 1, "num_heads": 2, "hidden_size": 8, "embed_dim": 8, "mlp_ratio": 1.5,
        "intermediate_size": 12, "out_hidden_size": 8, "window_size": 28, "fullatt_block_indexes": []});
    let model_type = match variant {
        VisionVariant::Qwen2Vl => "qwen2_vl",
        VisionVariant::Qwen25Vl => "qwen2_5_vl",
    };
    VisionConfig::from_model_config(&json!({"model_type": model_type, "vision_config": vision}))
        .unwrap()
}

/// Central finite differences in f64 through one block (norms, fused qkv, 2-D rotary, packed attention, MLP)
/// with respect to its input and every weight. Two 2 x 4-patch images; Qwen2.5-VL's block attends within
/// windows of one merged token.
#[test]
fn block_gradients_match_finite_differences() {
    for variant in [VisionVariant::Qwen2Vl, VisionVariant::Qwen25Vl] {
        let config = tiny_block_config(variant);
        let grids = [ImageGrid::new(1, 2, 4), ImageGrid::new(1, 2, 2)];
        let (cu_seqlens, positions) = match config.window_merged_tokens() {
            Some(side) => {
                let partition = WindowPartition::new(&grids, 2, side);
                let all = patch_positions(&grids, 2);
                let ordered: Vec<[u32; 2]> = partition
                    .patch_order(4)
                    .into_iter()
                    .map(|patch| all[patch])
                    .collect();
                (partition.cu_seqlens, ordered)
            }
            None => (frame_cu_seqlens(&grids), patch_positions(&grids, 2)),
        };
        let patches = positions.len();
        let attention = PackedAttention::new(&cu_seqlens, false, DType::F64, &Device::Cpu).unwrap();
        let positions = Tensor::from_vec(
            positions.into_iter().flatten().collect::<Vec<u32>>(),
            (patches, 2),
            &Device::Cpu,
        )
        .unwrap();
        let rotary = VisionRotaryEmbedding::new(config.head_dim(), 10000.0, &Device::Cpu).unwrap();
        let (cos, sin) = rotary.cos_sin(&positions, DType::F64).unwrap();

        let (hidden, inner) = (config.hidden_size, config.intermediate_size);
        let mut shapes: Vec<(&str, Vec<usize>)> = vec![
            ("attn.qkv.weight", vec![3 * hidden, hidden]),
            ("attn.qkv.bias", vec![3 * hidden]),
            ("attn.proj.weight", vec![hidden, hidden]),
            ("attn.proj.bias", vec![hidden]),
            ("norm1.weight", vec![hidden]),
            ("norm2.weight", vec![hidden]),
        ];
        match variant {
            VisionVariant::Qwen2Vl => shapes.extend([
                ("norm1.bias", vec![hidden]),
                ("norm2.bias", vec![hidden]),
                ("mlp.fc1.weight", vec![inner, hidden]),
                ("mlp.fc1.bias", vec![inner]),
                ("mlp.fc2.weight", vec![hidden, inner]),
                ("mlp.fc2.bias", vec![hidden]),
            ]),
            VisionVariant::Qwen25Vl => shapes.extend([
                ("mlp.gate_proj.weight", vec![inner, hidden]),
                ("mlp.gate_proj.bias", vec![inner]),
                ("mlp.up_proj.weight", vec![inner, hidden]),
                ("mlp.up_proj.bias", vec![inner]),
                ("mlp.down_proj.weight", vec![hidden, inner]),
                ("mlp.down_proj.bias", vec![hidden]),
            ]),
        }
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut inputs = vec![uniform(&mut rng, &[patches, hidden], 1.5)];
        inputs.extend(
            shapes
                .iter()
                .map(|(_, shape)| uniform(&mut rng, shape, 0.6)),
        );
        let projection = uniform(&mut rng, &[patches, hidden], 1.0);

        let block_output = |t: &[Tensor]| {
            let tensors: HashMap<String, Tensor> = shapes
                .iter()
                .zip(&t[1..])
                .map(|((name, _), tensor)| (name.to_string(), tensor.clone()))
                .collect();
            let vb = VarBuilder::from_tensors(tensors, DType::F64, &Device::Cpu);
            let block = VisionBlock::new(&config, vb)?;
            (block.forward(&t[0], &cos, &sin, &attention, AttentionKernel::Reference)?
                * &projection)?
                .sum_all()
        };
        let report = GradCheck::default().run(block_output, &inputs).unwrap();
        assert!(
            report.inputs.iter().all(|input| input.reached),
            "{variant:?}: backward missed an input\n{report}"
        );
        assert!(report.max_rel_error() < 1e-6, "{variant:?}:\n{report}");
    }
}

/// In bf16 the tower runs (norms, softmax and rotary in f32 inside) and stays near the f32 result.
#[test]
fn bf16_tower_tracks_f32() {
    let reference = reference_tensors();
    let grids = grids(&reference_json()["tower_grids"]);
    for model in ["qwen2_vl", "qwen2_5_vl"] {
        let vb = unsafe {
            VarBuilder::from_mmaped_safetensors(&[weights(model)], DType::BF16, &Device::Cpu)
                .unwrap()
        };
        let tower = VisionTransformer::new(&config(model), vb.pp("visual")).unwrap();
        let merged = tower.forward(&reference["pixel_values"], &grids).unwrap();
        assert_eq!(merged.dtype(), DType::BF16);
        let merged = merged.to_dtype(DType::F32).unwrap();
        let error = relative_error(&merged, &reference[&format!("{model}.merged")]);
        assert!(error < 5e-2, "{model}: relative error {error:e}");
    }
}

/// The packed tower is the same function as one call per image: packing attends only within each image.
#[test]
fn packed_images_equal_separate_calls() {
    let reference = reference_tensors();
    let grids = grids(&reference_json()["tower_grids"]);
    for model in ["qwen2_vl", "qwen2_5_vl"] {
        let tower = tower(model);
        let together = tower.forward(&reference["pixel_values"], &grids).unwrap();
        let mut row = 0;
        let mut token = 0;
        for grid in &grids {
            let pixels = reference["pixel_values"]
                .narrow(0, row, grid.patches())
                .unwrap();
            let alone = tower.forward(&pixels, &[*grid]).unwrap();
            let part = together.narrow(0, token, grid.merged_tokens(2)).unwrap();
            let error = relative_error(&alone, &part);
            assert!(error < 1e-5, "{model}: {grid:?} relative error {error:e}");
            row += grid.patches();
            token += grid.merged_tokens(2);
        }
    }
}
