//! Hard-negative mining: exact top-k retrieval, the positive-aware false-negative filter, negative sampling and
//! the statistics the mine stage reports (DESIGN §5).
//!
//! Everything here is a pure function over in-memory f32 matrices and document indices; the stage reads the
//! embeddings and qrels datasets and writes candidates and negatives. Documents are numbered `0..N` over the
//! whole corpus; [`DocOrder`] ranks their ids, which breaks score ties the way trec_eval does.

mod error;
pub mod filter;
mod kernel;
mod matrix;
mod order;
pub mod sample;
mod select;
pub mod stats;
pub mod topk;

pub use error::MineError;
pub use filter::{filter_candidates, Candidate, FilterConfig, FilterKind, Filtered};
pub use matrix::Matrix;
pub use order::DocOrder;
pub use sample::{
    sample_negatives, Group, Negative, NegativeKind, QueryInput, QueryNegatives, RandomPool,
    SampleConfig,
};
pub use select::Hit;
pub use stats::{DropCounts, MiningStats, ScoreSummary, StatsBuilder};
pub use topk::{exact_top_k, merge_top_k, CorpusPart, Exclusions, TopKConfig};
