//! The model layer: differentiable building blocks and the architectures built from them.
//!
//! Everything the trainer differentiates through is built here from candle ops that have a backward pass (see
//! docs/dependencies.md#trainable-layers-are-our-own: candle-nn's fused softmax, norms and rope have none), and every
//! block is checked against finite differences with [`gradcheck`].
//!
//! By kind:
//! - the building blocks: [`layers`] (linear, norms, rotary positions, masks, attention) and [`adapters`] (LoRA
//!   and its PEFT files);
//! - the architectures: [`decoder`] (Qwen2/Qwen3/Llama-family text decoders), [`qwen2_vl`] (the vision tower and
//!   the vision-language model) and [`embedders`] (the first-stage retrievers: BERT, CLIP, SigLIP);
//! - the task: [`backbone`] (the network under the LM head), [`reranker`] (a reranker ready to score pairs) and
//!   [`prefix_score`] (scoring a query's prompts with their common head run once);
//! - what surrounds them: [`formats`] (checkpoints, configs, GGUF, dtypes), [`text`] (tokenizers, chat templates,
//!   the prompt), [`init`] (seeded initial weights for both trainers) and [`gradcheck`].

pub mod adapters;
pub mod backbone;
pub mod decoder;
pub mod embedders;
pub mod formats;
pub mod gradcheck;
pub mod init;
pub mod layers;
pub mod prefix_score;
pub mod qwen2_vl;
pub mod reranker;
pub mod text;
