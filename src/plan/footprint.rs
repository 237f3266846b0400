//! What one token (or image patch) costs inside a layer, in bytes: the tensors autograd keeps for the backward
//! pass, the blocked attention kernel's buffers, and the short-lived tensors of a backward or inference step.
//!
//! The counts follow the code of `crate::models` tensor by tensor. Candle keeps every tensor of the forward graph
//! that a later op consumed, not only the ones its backward needs, and every op writes a new tensor (views such as
//! reshapes, transposes and narrows share their input's storage). So a layer keeps: each norm's f32 square and
//! scaled copy (plus the casts of a half-precision model), each projection's output (and bias sum), each LoRA
//! adapter's input cast, dropout mask and masked input, low-rank product, output and scaled output, the rotary's
//! four half-width products and the concatenation, the contiguous head-major copies of q, k and v that the kernel
//! reads, its output and the token-major copy of it, the residual sums, the SiLU and the gate product.
//!
//! Measured on the CPU (`benches/train_memory.rs`), a training step's peak resident memory exceeds these counts:
//! the allocator's slack and candle's backward (each gradient starts as zeros and is summed into) add about half
//! as much again to the activations and the kernel's buffers. [`MEASURED_OVERHEAD`] is that factor; the plan
//! applies it to both.

use super::shape::{DecoderShape, VisionShape};
use crate::models::layers::blocked_attention::device_block_sizes;

/// What a training step's activations and attention buffers take beyond the tensors counted here, as a
/// percentage of them: fitted to the peaks `benches/train_memory.rs` measured on the CPU (see the README's
/// benchmark table).
pub const MEASURED_OVERHEAD: u64 = 145;

/// `bytes` with [`MEASURED_OVERHEAD`] added.
pub fn with_overhead(bytes: u64) -> u64 {
    bytes * MEASURED_OVERHEAD / 100
}

/// Element sizes in bytes: of the model's weights and activations, of norm and softmax arithmetic (f32 for a
/// half-precision model), and of LoRA adapters (kept in f32 for a half-precision model).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Widths {
    pub model: u64,
    pub compute: u64,
    pub adapter: u64,
}

impl Widths {
    /// The widths of a model stored with `model_bytes` per element.
    pub fn of(model_bytes: u64) -> Self {
        let compute = if model_bytes < 4 { 4 } else { model_bytes };
        Self {
            model: model_bytes,
            compute,
            adapter: compute,
        }
    }

    /// `bytes` when the model's dtype differs from the compute dtype (a cast happens), else nothing.
    fn if_cast(&self, bytes: u64) -> u64 {
        if self.model != self.compute {
            bytes
        } else {
            0
        }
    }
}

/// LoRA adapters as a training step runs them.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraRun {
    pub rank: u64,
    /// Which of the seven projections (q, k, v, o, gate, up, down) carry an adapter.
    pub targets: [bool; 7],
    /// Whether dropout draws a mask (training with `lora_dropout > 0`).
    pub dropout: bool,
}

/// An RMS norm over `width` features, as `crate::models::layers::norm::RmsNorm` computes it.
fn rms_norm(width: u64, w: Widths) -> u64 {
    w.if_cast(width * w.compute)
        + 2 * width * w.compute
        + w.if_cast(width * w.model)
        + width * w.model
}

/// A projection `in -> out` with an optional bias and LoRA adapter, as `crate::models::layers::linear::Linear` runs it.
fn linear(inputs: u64, outputs: u64, bias: bool, lora: Option<(&LoraRun, bool)>, w: Widths) -> u64 {
    let base = outputs * w.model * if bias { 2 } else { 1 };
    let adapter = match lora {
        Some((run, true)) => {
            let cast_in = if w.adapter != w.model {
                inputs * w.adapter
            } else {
                0
            };
            let dropout = if run.dropout {
                2 * inputs * w.adapter
            } else {
                0
            };
            let cast_out = if w.adapter != w.model {
                outputs * w.model
            } else {
                0
            };
            cast_in
                + dropout
                + run.rank * w.adapter
                + 2 * outputs * w.adapter
                + cast_out
                + outputs * w.model
        }
        _ => 0,
    };
    base + adapter
}

/// Rotary embedding of `width` features: four half-width products, their sum and difference, the concatenation.
fn rotary(width: u64, w: Widths) -> u64 {
    4 * width * w.model
}

/// What autograd keeps of one decoder layer per token of a training step on the blocked kernel.
pub fn decoder_layer_kept(shape: &DecoderShape, lora: Option<&LoraRun>, w: Widths) -> u64 {
    decoder_attention_kept(shape, lora, w) + decoder_mlp_kept(shape, lora, w)
}

/// What autograd keeps of a layer's attention half (norm, q/k/v/o projections, rotary, kernel, residual) per
/// token.
pub fn decoder_attention_kept(shape: &DecoderShape, lora: Option<&LoraRun>, w: Widths) -> u64 {
    let (h, q, kv) = (shape.hidden, shape.q_width(), shape.kv_width());
    let qk_norm = if shape.qk_norm {
        rms_norm(q, w) + rms_norm(kv, w)
    } else {
        0
    };
    let kernel = (q + 2 * kv) * w.model + q * w.model + shape.heads * 4 + q * w.model;
    rms_norm(h, w)
        + projections(shape, lora, w, 0..4)
        + qk_norm
        + rotary(q, w)
        + rotary(kv, w)
        + kernel
        + h * w.model
}

/// What autograd keeps of a layer's MLP half (norm, gate/up/down projections, SiLU, product, residual) per
/// token.
pub fn decoder_mlp_kept(shape: &DecoderShape, lora: Option<&LoraRun>, w: Widths) -> u64 {
    let (h, i) = (shape.hidden, shape.intermediate);
    rms_norm(h, w) + projections(shape, lora, w, 4..7) + 2 * i * w.model + h * w.model
}

/// The projections `which` (indexes in q, k, v, o, gate, up, down order) with their adapters.
fn projections(
    shape: &DecoderShape,
    lora: Option<&LoraRun>,
    w: Widths,
    which: std::ops::Range<usize>,
) -> u64 {
    shape.projections()[which.clone()]
        .iter()
        .zip(which)
        .map(|(&(inputs, outputs, bias), index)| {
            let adapter = lora.map(|run| (run, run.targets[index]));
            linear(inputs, outputs, bias, adapter, w)
        })
        .sum()
}

/// The blocked kernel's buffers per token while it runs one layer's backward pass (`blocked_attention::bwd`):
/// f32 copies of q, k, v, the output and its gradient, the gradient of q, per-query-head key and value gradients
/// before their group sums, and those sums. The forward pass needs less (widened inputs and the output).
pub fn blocked_attention_workspace(shape: &DecoderShape) -> u64 {
    let (q, kv) = (shape.q_width(), shape.kv_width());
    let saved = 3 * q + 2 * kv;
    let grads = q + 2 * q + 2 * kv;
    (saved + grads) * 4
}

/// The tensor-op tiles of the blocked algorithm off the CPU (`blocked_attention::tensor_tiles`) over `rows`
/// batch rows: at most six f32 tiles of the sizes `device_block_sizes` picks are alive at once in a backward pass
/// (the scores, their masked and exponentiated forms, the probabilities' gradient and the scores' gradient).
pub fn device_attention_tiles(rows: u64, heads: u64) -> u64 {
    let blocks = device_block_sizes(rows as usize, heads as usize);
    6 * rows * heads * (blocks.queries * blocks.keys) as u64 * 4
}

/// What the reference kernel keeps per sequence of `len` tokens and layer: the `heads x len x len` scores, their
/// f32 cast and masked sum, the softmax's intermediates and the probabilities cast back.
pub fn reference_attention_scores(heads: u64, len: u64, w: Widths) -> u64 {
    heads * len * len * (w.model + 5 * w.compute + w.if_cast(w.model))
}

/// The gradients of the residual stream alive at once while the backward pass crosses one layer, per token.
pub fn residual_backward(shape: &DecoderShape, w: Widths) -> u64 {
    4 * shape.hidden * w.model
}

/// The gradients of the MLP's intermediates alive at once while the backward pass crosses it, per token (of
/// one slice when the MLP is recomputed in slices): those of the gate, the activation, the up projection and the
/// product, and of an adapter's output in its own dtype.
pub fn mlp_backward(shape: &DecoderShape, lora: bool, w: Widths) -> u64 {
    let i = shape.intermediate;
    let adapters = if lora { 2 * i * w.adapter } else { 0 };
    4 * i * w.model + adapters
}

/// The most one decoder layer holds at once per token in an inference pass (nothing kept for a backward pass):
/// the residual stream and the MLP's gate, activation, up projection and product, or attention's projections,
/// rotated copies and head-major copies, whichever is larger.
pub fn decoder_layer_inference(shape: &DecoderShape, w: Widths) -> u64 {
    let (h, q, kv, i) = (
        shape.hidden,
        shape.q_width(),
        shape.kv_width(),
        shape.intermediate,
    );
    let mlp = 4 * i + 3 * h;
    let attention = 4 * q + 6 * kv + 3 * h;
    mlp.max(attention) * w.model + rms_norm(h, w)
}

/// The blocked kernel's forward buffers per token (inference): widened copies of q, k and v and the f32 output.
pub fn blocked_attention_forward(shape: &DecoderShape, w: Widths) -> u64 {
    let (q, kv) = (shape.q_width(), shape.kv_width());
    w.if_cast((q + 2 * kv) * 4) + q * 4
}

/// What autograd keeps of one vision block per patch when the tower trains.
pub fn vision_block_kept(shape: &VisionShape, w: Widths) -> u64 {
    let (h, i) = (shape.hidden, shape.intermediate);
    let norm = if shape.gated {
        rms_norm(h, w)
    } else {
        w.if_cast(h * w.compute) + 5 * h * w.compute + w.if_cast(h * w.model)
    };
    let attention = 3 * h * w.model * 2
        + 2 * rotary(h, w)
        + 3 * h * w.model
        + 2 * h * w.model
        + h * w.model * 2;
    // Either MLP keeps about four intermediate-wide tensors and its output (gated: gate, up, activation and
    // product; GELU: the first projection and the activation's three steps), each with its bias sum.
    let mlp = (4 * i + h) * w.model * 2;
    2 * norm + attention + mlp + 2 * h * w.model
}

/// The most one vision block holds at once per patch in a pass that keeps nothing (a frozen tower).
pub fn vision_block_inference(shape: &VisionShape, w: Widths) -> u64 {
    let (h, i) = (shape.hidden, shape.intermediate);
    (4 * i + 6 * h) * w.model + (4 * h) * 4
}
