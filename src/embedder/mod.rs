//! Training a dual encoder from scratch: the demo's first-stage retriever.
//!
//! No pretrained image tower can be had offline, so the demo trains a tiny CLIP-architecture model on the ingest
//! stage's train split (query, positive) pairs with the symmetric in-batch contrastive loss CLIP was trained with,
//! and writes it as a Hugging Face CLIP directory that the embed stage loads like any downloaded checkpoint.
//!
//! ```text
//! ingest (queries, corpus, qrels, images) ──> pairs ──> vocabulary + tokenizer, preprocessed pixels
//!                                                  └──> InfoNCE over in-batch negatives (AdamW, cosine) ──> model/
//! ```
//!
//! Records are embedded exactly as the embed stage embeds them: text alone, image alone, or the normalised sum of
//! both, so what is trained is what mining ranks with.

mod checkpoint;
mod config;
mod data;
mod error;
mod fit;
mod loss;
mod stage;
mod vocab;

pub use checkpoint::{clip_config, preprocessor_config, ModelFiles};
pub use config::{Architecture, DualEncoderConfig};
pub use data::{Pair, PairSet, Pixels, Record};
pub use error::DualEncoderError;
pub use fit::{fit, recall_at_1, steps_per_epoch, EpochLog, FitReport, Inputs};
pub use loss::symmetric_info_nce;
pub use stage::DualEncoderStage;
pub use vocab::{build_tokenizer, END_OF_TEXT_ID, PAD_ID};
