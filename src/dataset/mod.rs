//! Parquet datasets on disk.
//!
//! A dataset is a directory of part files named `part-I-of-N.parquet`. A stage run as shard I of N writes part I;
//! readers see the N parts as one dataset and refuse an incomplete set. Files are written under a hidden temporary
//! name and renamed into place only when complete, so a crash never leaves a file that looks finished.

pub mod columns;
mod error;
mod reader;
mod writer;

pub use error::DatasetError;
pub use reader::{Dataset, RowGroupAt, DEFAULT_BATCH_ROWS};
pub use writer::{DatasetWriter, WriteOptions, WrittenPart};

/// Key-value metadata key under which each Parquet file records its dataset kind.
pub const KIND_METADATA_KEY: &str = "umrank.schema";

/// Extension of a part file.
pub const PART_EXTENSION: &str = "parquet";

/// Whether a directory entry is a temporary file a writer left behind (it is never read, and is removed when the
/// stage runs again).
pub fn is_temporary(name: &str) -> bool {
    name.starts_with('.') && name.ends_with(".tmp")
}
