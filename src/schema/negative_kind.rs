//! Where a mined negative came from. The negatives dataset keeps the two kinds in separate list columns named
//! after them, and the training shards carry the name on every negative row, so the vocabulary is part of the
//! data contract rather than of the stage that mines.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NegativeKind {
    /// Drawn from the retriever's top candidates that survived the false-negative filter.
    Hard,
    /// Drawn uniformly from the pool.
    Random,
}

impl NegativeKind {
    /// The name of the kind's list column in the negatives dataset, and its value in the shards.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Hard => "hard",
            Self::Random => "random",
        }
    }
}
