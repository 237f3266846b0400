//! Qwen2-VL and Qwen2.5-VL: the vision tower that turns image patches into language-model tokens, and the
//! multimodal 3-D position ids of prompts that hold those tokens.
//!
//! - [`config`]: the tower's configuration from a transformers-4 or -5 `config.json`.
//! - [`grid`]: image patch grids and the patch orders, attention segments and windows derived from them.
//! - [`vision`]: the tower itself, trainable end to end.
//! - [`rope_index`]: transformers' `get_rope_index` for padded batches and packed sequences.

pub mod config;
pub mod grid;
pub mod rope_index;
pub mod vision;

pub use config::{VisionConfig, VisionConfigError, VisionVariant, WindowAttention};
pub use grid::{GridError, ImageGrid};
pub use rope_index::{packed_rope_index, rope_index, MropePositions, MropeTokens, RopeIndexError};
pub use vision::{VisionBlock, VisionInputError, VisionTransformer};
