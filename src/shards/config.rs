use serde::{Deserialize, Serialize};

use super::ShardsError;

/// The `[shards]` table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardsConfig {
    /// The upstream stage with the queries, corpus and images datasets.
    #[serde(default = "default_ingest")]
    pub ingest: String,
    /// The upstream stage with the negatives dataset.
    #[serde(default = "default_mine")]
    pub mine: String,
    /// Shuffle the groups with the pipeline seed (otherwise keep the negatives dataset's order).
    #[serde(default = "default_shuffle")]
    pub shuffle: bool,
    /// Most sft rows in one shard file.
    #[serde(default = "default_max_rows")]
    pub max_rows_per_shard: u64,
    /// Most bytes of (uncompressed) values in one shard file.
    #[serde(default = "default_max_bytes")]
    pub max_bytes_per_shard: u64,
}

fn default_ingest() -> String {
    "ingest".into()
}

fn default_mine() -> String {
    "mine".into()
}

fn default_shuffle() -> bool {
    true
}

/// Half a million rows: about 30k groups of 1 + 16, a few hundred MB of text.
fn default_max_rows() -> u64 {
    500_000
}

/// 512 MiB: well under the file limits of the hubs shards are shared on, and a few row groups each.
fn default_max_bytes() -> u64 {
    512 << 20
}

impl Default for ShardsConfig {
    fn default() -> Self {
        Self {
            ingest: default_ingest(),
            mine: default_mine(),
            shuffle: default_shuffle(),
            max_rows_per_shard: default_max_rows(),
            max_bytes_per_shard: default_max_bytes(),
        }
    }
}

impl ShardsConfig {
    pub fn validate(&self) -> Result<(), ShardsError> {
        if self.max_rows_per_shard == 0 {
            return Err(ShardsError::Config(
                "max_rows_per_shard must be at least 1".into(),
            ));
        }
        if self.max_bytes_per_shard == 0 {
            return Err(ShardsError::Config(
                "max_bytes_per_shard must be at least 1".into(),
            ));
        }
        Ok(())
    }
}
