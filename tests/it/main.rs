//! umrank's integration tests, built as one test binary: one link instead of one per file keeps the suite's
//! build time and disk use down (each binary statically links candle, arrow and the rest).
//!
//! Run one module with `cargo test --release --test it <module>::`.

mod attention_blocked;
mod cli;
mod common;
mod dataset;
mod decoder;
mod decoder_gguf;
mod demo;
mod docs;
mod dual_encoder;
mod embed;
mod embedders;
mod eval_metrics;
mod eval_stage;
mod ingest;
mod ingest_formats;
mod ingest_hardening;
mod jpeg_decode;
mod lora;
mod mbeir_published;
mod media_sources;
mod mine;
#[cfg(feature = "cuda")]
mod mine_cuda;
mod mine_cuda_sim;
mod mine_stage;
mod model_ops;
mod module_order;
mod peft_round_trip;
mod pipeline;
mod pipelines;
mod plan;
mod prefix_score;
mod preprocess_parity;
mod progress;
mod prompt;
mod prompt_families;
mod prompt_llama3;
mod release;
mod release_gate;
mod report;
mod score_cli;
mod score_text;
mod shards;
mod snapshots;
mod tokenizer;
mod tokenizer_chat_template;
mod train_data_parallel;
mod train_gguf;
mod train_learns;
mod train_loop;
mod train_objective;
mod train_optim;
mod train_plots;
mod train_pretrained;
mod train_recompute;
mod train_shared_prefix;
mod train_warm;
mod vision;
mod vision_rope_index;
mod vlm;
mod world;
