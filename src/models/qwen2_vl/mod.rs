//! Qwen2-VL and Qwen2.5-VL: the vision tower that turns image patches into language-model tokens, and the
//! multimodal 3-D position ids of prompts that hold those tokens.
//!
//! - [`config`]: the tower's configuration from a transformers-4 or -5 `config.json`.
//! - [`grid`]: image patch grids and the patch orders, attention segments and windows derived from them.
//! - [`vision`]: the tower itself, trainable end to end.
//! - [`rope_index`]: transformers' `get_rope_index` for padded batches and packed sequences.
//! - [`model`]: the whole model, tower and decoder, with image tokens spliced into the prompt.
//! - [`score`]: reranker scores (yes/no logits at the last token) for this model and text-only decoders.
//! - [`gme`]: GME-style embeddings (last-token pooling, L2-normalised).

pub mod config;
pub mod gme;
pub mod grid;
pub mod model;
pub mod rope_index;
pub mod score;
pub mod vision;

pub use config::{VisionConfig, VisionConfigError, VisionVariant, WindowAttention};
pub use gme::{gme_embed, GmeInput, GmePromptBuilder, GME_DEFAULT_INSTRUCTION};
pub use grid::{GridError, ImageGrid};
pub use model::{splice_image_tokens, Qwen2VlModel, VlBatch, VlInputError, VlLoadError};
pub use rope_index::{packed_rope_index, rope_index, MropePositions, MropeTokens, RopeIndexError};
pub use score::{
    score, score_batch, HiddenStates, ImagePatches, PaddedBatch, PairScore, ScoreInput, Scores,
};
pub use vision::{VisionBlock, VisionInputError, VisionTransformer};
