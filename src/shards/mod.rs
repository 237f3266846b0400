//! The shards stage: mined groups in, training shards out (docs/design.md#groups-and-positives,
//! docs/method.md#pairs-and-groups).
//!
//! Input: the ingest stage's `queries`, `corpus` and `images`, and the mine stage's `negatives` (one row per
//! training query: its positives, its hard and its random negatives). Output, under the stage directory:
//!
//! ```text
//! sft/part-00000-of-0000N.parquet ...   pointwise rows (schemas/sft.json)
//! cl/part-00000-of-0000N.parquet ...    one row per group (schemas/cl.json)
//! index.json                            shards in training order: files, rows, groups, sha256 (ShardIndex)
//! ```
//!
//! **Groups.** Each (query, positive) pair is a group: a query with two positives gives two groups, each with that
//! positive and all of the row's negatives, in the row's order: hard negatives as listed (retriever rank order),
//! then random negatives as listed. [`group_id`] is a stable hash of (qid, positive did), the same in sft and cl
//! and across reruns. In sft a group's rows are contiguous: the positive (label true, `negative_kind` `none`),
//! then its negatives in group order. In cl a group is one row; its documents' parts come from the corpus by did.
//!
//! **Prompts are parts**, never rendered: instruction, query text, query image id, document text, document image
//! id. The trainer renders them with its model's own chat template (src/models/text/prompt.rs for Qwen2-VL), so one set
//! of shards serves every backbone; `index.json` says so (`"prompt": "parts"`). Images are not copied: image ids
//! key into the ingest stage's `images` dataset, whose path the index records.
//!
//! **Order.** With `shuffle` on (the default), groups are sorted by id and then permuted by a ChaCha8 stream drawn
//! from the pipeline seed: the order depends only on the set of groups and the seed. Off, the
//! order is that of the negatives dataset.
//!
//! **Shards.** The ordered groups are cut into shards of at most `max_rows_per_shard` sft rows and
//! `max_bytes_per_shard` bytes of uncompressed values per file, never splitting a group; sft shard i and cl shard i
//! hold the same groups. The files are named like any sharded dataset, `part-I-of-N`, so
//! [`Dataset::open`](crate::dataset::Dataset::open) on `sft/` or `cl/` reads every shard as one dataset, in
//! training order. The stage itself cannot run under `--shard I/N`: the shuffle is global.
//!
//! **Bad rows.** A negatives row naming an unknown query or document, listing a document as both positive and
//! negative, or repeating an id, is rejected whole, with its reason.

mod columns;
mod config;
mod error;
pub mod export;
mod groups;
mod index;
mod inputs;
mod plan;
mod stage;
mod write;

pub use config::ShardsConfig;
pub use error::ShardsError;
pub use groups::group_id;
pub use index::{
    relative_to, FileEntry, ShardEntry, ShardIndex, INDEX, INDEX_FORMAT, PROMPT_PARTS,
};
pub use stage::ShardsStage;

use crate::schema::NegativeKind;

/// Directory of the pointwise dataset.
pub const SFT: &str = "sft";
/// Directory of the contrastive dataset.
pub const CL: &str = "cl";
/// `negative_kind` of a group's positive.
pub const POSITIVE_KIND: &str = "none";

/// The `negative_kind` value of a row: `none` for the positive, else `hard` or `random`.
pub fn kind_name(kind: Option<NegativeKind>) -> &'static str {
    match kind {
        None => POSITIVE_KIND,
        Some(kind) => kind.name(),
    }
}
