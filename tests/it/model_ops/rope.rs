use crate::model_ops::common::{assert_close, assert_gradients, project, uniform};
use candle_core::{DType, Device, Tensor};
use umrank::models::layers::rope::{
    apply_rotary_emb, MropeSection, RotaryEmbedding, VisionRotaryEmbedding,
};

fn positions(rows: &[&[u32]]) -> Tensor {
    Tensor::new(
        rows.iter().map(|r| r.to_vec()).collect::<Vec<_>>(),
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn rope_matches_candle_fused_kernel() {
    let rotary = RotaryEmbedding::new(16, 10000.0, &Device::Cpu).unwrap();
    let pos = positions(&[&[0, 1, 2, 3, 4], &[7, 8, 9, 10, 11]]);
    let (cos, sin) = rotary.cos_sin(&pos, DType::F32).unwrap();
    assert_eq!(cos.dims(), &[2, 5, 8]);
    let xs = uniform(60, (2, 3, 5, 16), DType::F32);
    let ours =
        apply_rotary_emb(&xs, &cos.unsqueeze(1).unwrap(), &sin.unsqueeze(1).unwrap()).unwrap();
    let fused = candle_nn::rotary_emb::rope(&xs, &cos, &sin).unwrap();
    assert_close(&ours, &fused, 1e-5, "rope");
}

#[test]
fn rope_gradient_matches_finite_differences() {
    let rotary = RotaryEmbedding::new(8, 10000.0, &Device::Cpu).unwrap();
    let pos = positions(&[&[0, 1, 2], &[5, 3, 9]]);
    let (cos, sin) = rotary.cos_sin(&pos, DType::F64).unwrap();
    let (cos, sin) = (cos.unsqueeze(1).unwrap(), sin.unsqueeze(1).unwrap());
    let xs = uniform(61, (2, 2, 3, 8), DType::F64);
    assert_gradients(
        "rope",
        |t| project(&apply_rotary_emb(&t[0], &cos, &sin)?, 62),
        &[xs],
    );
}

#[test]
fn mrope_with_equal_rows_is_plain_rope() {
    let rotary = RotaryEmbedding::new(16, 1000000.0, &Device::Cpu).unwrap();
    let pos = positions(&[&[0, 1, 2, 3], &[4, 5, 6, 7]]);
    let section = MropeSection::new(vec![2, 3, 3], 16).unwrap();
    let stacked = Tensor::stack(&[&pos, &pos, &pos], 0).unwrap();
    let (mcos, msin) = rotary
        .mrope_cos_sin(&stacked, &section, DType::F32)
        .unwrap();
    let (cos, sin) = rotary.cos_sin(&pos, DType::F32).unwrap();
    assert_close(&mcos, &cos, 0.0, "cos");
    assert_close(&msin, &sin, 0.0, "sin");
}

/// Each frequency band takes its angle from the position row its section assigns: with t = 0, h = 1, w = 2 the
/// angle of band j is `row(j) * inv_freq[j]`.
#[test]
fn mrope_sections_select_position_rows() {
    let rotary = RotaryEmbedding::new(16, 10000.0, &Device::Cpu).unwrap();
    let section = MropeSection::new(vec![2, 3, 3], 16).unwrap();
    let rows = Tensor::new(&[[[0u32]], [[1]], [[2]]], &Device::Cpu).unwrap();
    let (cos, _) = rotary.mrope_cos_sin(&rows, &section, DType::F32).unwrap();
    let inv_freq = rotary.inv_freq().to_vec1::<f32>().unwrap();
    let expected: Vec<f32> = [0u32, 0, 1, 1, 1, 2, 2, 2]
        .iter()
        .zip(&inv_freq)
        .map(|(&row, f)| (row as f32 * f).cos())
        .collect();
    assert_eq!(
        cos.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        expected
    );
}

#[test]
fn mrope_gradient_matches_finite_differences() {
    let rotary = RotaryEmbedding::new(8, 10000.0, &Device::Cpu).unwrap();
    let section = MropeSection::new(vec![1, 2, 1], 8).unwrap();
    let t = positions(&[&[0, 1, 1, 1]]);
    let h = positions(&[&[0, 1, 1, 2]]);
    let w = positions(&[&[0, 1, 2, 1]]);
    let pos = Tensor::stack(&[&t, &h, &w], 0).unwrap();
    let (cos, sin) = rotary.mrope_cos_sin(&pos, &section, DType::F64).unwrap();
    let (cos, sin) = (cos.unsqueeze(1).unwrap(), sin.unsqueeze(1).unwrap());
    let xs = uniform(63, (1, 3, 4, 8), DType::F64);
    assert_gradients(
        "mrope",
        |t| project(&apply_rotary_emb(&t[0], &cos, &sin)?, 64),
        &[xs],
    );
}

#[test]
fn vision_rotary_gradient_matches_finite_differences() {
    let rotary = VisionRotaryEmbedding::new(8, 10000.0, &Device::Cpu).unwrap();
    let hw = Tensor::new(&[[0u32, 0], [0, 1], [1, 0], [1, 1], [3, 2]], &Device::Cpu).unwrap();
    let (cos, sin) = rotary.cos_sin(&hw, DType::F64).unwrap();
    assert_eq!(cos.dims(), &[5, 4]);
    let (cos, sin) = (cos.unsqueeze(1).unwrap(), sin.unsqueeze(1).unwrap());
    let xs = uniform(65, (5, 2, 8), DType::F64);
    assert_gradients(
        "vision rope",
        |t| project(&apply_rotary_emb(&t[0], &cos, &sin)?, 66),
        &[xs],
    );
}

/// The vision tower rotates bf16 activations in f32 and rounds once, as transformers does.
#[test]
fn vision_rotary_of_half_precision_computes_in_f32() {
    let rotary = VisionRotaryEmbedding::new(8, 10000.0, &Device::Cpu).unwrap();
    let hw = Tensor::new(&[[0u32, 3], [2, 1]], &Device::Cpu).unwrap();
    let (cos, sin) = rotary.cos_sin(&hw, DType::BF16).unwrap();
    assert_eq!(cos.dtype(), DType::F32);
    let (cos, sin) = (cos.unsqueeze(1).unwrap(), sin.unsqueeze(1).unwrap());
    let xs = uniform(67, (2, 2, 8), DType::BF16);
    let out = apply_rotary_emb(&xs, &cos, &sin).unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    let out32 = apply_rotary_emb(&xs.to_dtype(DType::F32).unwrap(), &cos, &sin).unwrap();
    assert_close(
        &out,
        &out32.to_dtype(DType::BF16).unwrap(),
        0.0,
        "bf16 vision rope",
    );
}

#[test]
fn inconsistent_shapes_are_clear_errors() {
    let device = Device::Cpu;
    assert!(RotaryEmbedding::new(7, 10000.0, &device).is_err());
    assert!(VisionRotaryEmbedding::new(6, 10000.0, &device).is_err());
    let err = MropeSection::new(vec![16, 24, 16], 128)
        .unwrap_err()
        .to_string();
    assert!(err.contains("sums to 56") && err.contains("64"), "{err}");

    let rotary = RotaryEmbedding::new(8, 10000.0, &device).unwrap();
    let section = MropeSection::new(vec![2, 1, 1], 8).unwrap();
    let flat = positions(&[&[0, 1]]);
    let err = rotary
        .mrope_cos_sin(&flat, &section, DType::F32)
        .unwrap_err()
        .to_string();
    assert!(err.contains("(3, batch, seq)"), "{err}");
    let wide = MropeSection::new(vec![4, 4, 4], 24).unwrap();
    let stacked = Tensor::stack(&[&flat, &flat, &flat], 0).unwrap();
    assert!(rotary.mrope_cos_sin(&stacked, &wide, DType::F32).is_err());

    let (cos, sin) = rotary.cos_sin(&flat, DType::F32).unwrap();
    let xs = uniform(68, (1, 1, 2, 6), DType::F32);
    let err = apply_rotary_emb(&xs, &cos, &sin).unwrap_err().to_string();
    assert!(err.contains("not twice"), "{err}");
}
