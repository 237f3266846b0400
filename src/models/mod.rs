//! The model layer: differentiable building blocks and the architectures built from them.
//!
//! Everything the trainer differentiates through is built here from candle ops that have a backward pass (see
//! docs/dependencies.md#trainable-layers-are-our-own: candle-nn's fused softmax, norms and rope have none), and every
//! block is checked against finite differences with [`gradcheck`].

pub mod activation;
pub mod attention;
pub mod blocked_attention;
pub mod chat_template;
pub mod decoder;
pub mod embedders;
pub mod gguf;
pub mod gguf_tokenizer;
pub mod gradcheck;
pub mod hf_config;
pub mod key_spans;
pub mod layer_error;
pub mod linear;
pub mod lora;
pub mod mask;
pub mod norm;
pub mod packed;
pub mod peft;
pub mod precision;
pub mod prompt;
pub mod pyjson;
pub mod qwen2_vl;
pub mod recompute;
pub mod reranker;
pub mod rope;
pub mod shared_prefix;
pub mod softmax;
pub mod tokenizer;
pub mod weights;
