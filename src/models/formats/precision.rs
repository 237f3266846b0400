//! Which dtype a layer computes its numerically delicate parts in.

use candle_core::DType;

/// The dtype for reductions and exponentials on `dtype` inputs: f32 for the half-precision types, the input's own
/// dtype otherwise.
///
/// transformers upcasts RMSNorm, LayerNorm, the attention softmax and the vision rotary to f32 for bf16/f16 models;
/// a bf16 mean over 4096 channels or a bf16 softmax over 3200 keys loses most of its mantissa. f64 stays f64 so
/// that gradient checks run at full precision.
pub fn compute_dtype(dtype: DType) -> DType {
    match dtype {
        DType::BF16 | DType::F16 => DType::F32,
        other => other,
    }
}
