//! Reading checkpoints as the ecosystem writes them: safetensors (single or sharded), Hugging Face configs,
//! GGUF files, and the dtypes weights are computed in.

pub mod gguf;
pub mod hf_config;
pub mod precision;
pub mod weights;
