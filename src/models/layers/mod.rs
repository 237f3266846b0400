//! The differentiable building blocks the architectures are made of: linear layers, norms, activations, rotary
//! positions, masks and attention (the reference kernel and the blocked one), each with a backward pass.

pub mod activation;
pub mod attention;
pub mod blocked_attention;
pub mod key_spans;
pub mod layer_error;
pub mod linear;
pub mod mask;
pub mod norm;
pub mod packed;
pub mod recompute;
pub mod rope;
pub mod shared_prefix;
pub mod softmax;
