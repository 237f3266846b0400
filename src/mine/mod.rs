//! Hard-negative mining: exact top-k retrieval, the positive-aware false-negative filter, negative sampling and
//! the statistics the mine stage reports (docs/mining.md).
//!
//! The library is pure functions over in-memory f32 matrices and document indices; [`stage`] is the `mine`
//! pipeline stage built on it, which reads the ingest and embed stages' datasets and writes `candidates` and
//! `negatives`, and [`top_k_on`] is where it picks the device a search runs on. Documents are numbered `0..N` over the
//! whole corpus; [`DocOrder`] ranks their ids, which breaks score ties the way trec_eval does. The flow:
//!
//! ```
//! use umrank::mine::*;
//!
//! # fn main() -> Result<(), MineError> {
//! let ids = ["d0", "d1", "d2", "d3"];
//! let docs = [1.0f32, 0.0, 0.97, 0.1, 0.5, 0.5, 0.0, 1.0];
//! let queries = [1.0f32, 0.0];
//! let gold = vec![vec![0u32]];
//!
//! let order = DocOrder::from_ids(&ids)?;
//! let corpus = CorpusPart::whole(Matrix::new("corpus", &docs, 2)?);
//! let queries = Matrix::new("queries", &queries, 2)?;
//! let config = TopKConfig { k: 3, ..TopKConfig::default() };
//! let candidates = exact_top_k(&queries, &corpus, &order, &Exclusions::new(gold.clone()), &config)?;
//! assert_eq!(candidates[0].iter().map(|hit| hit.doc).collect::<Vec<_>>(), [1, 2, 3]);
//!
//! let mut stats = StatsBuilder::new();
//! let pool = RandomPool::all(&order);
//! for (query, hits) in candidates.iter().enumerate() {
//!     let vector = queries.row(query);
//!     let positive_scores: Vec<f32> =
//!         gold[query].iter().map(|&doc| corpus.score(vector, doc)).collect::<Result<_, _>>()?;
//!     let filtered = filter_candidates("q0", hits, &positive_scores, &FilterConfig::default())?;
//!     let input = QueryInput { qid: "q0", positives: &gold[query], filtered: &filtered };
//!     let sample = SampleConfig { negatives_per_group: 2, ..SampleConfig::default() };
//!     let negatives = sample_negatives(&input, &pool, &order, &sample, |doc| corpus.score(vector, doc))?;
//!     stats.add_query("q0", &positive_scores, &filtered, &negatives);
//! }
//! let stats = stats.finish();
//! // d1 (0.97) is within 5% of the positive (1.0): dropped as a likely false negative.
//! assert_eq!(stats.dropped.relative_margin, 1);
//! println!("{stats}");
//! # Ok(())
//! # }
//! ```

pub mod cuda;
mod error;
pub mod filter;
mod kernel;
mod matrix;
mod order;
pub mod sample;
mod search;
mod select;
pub mod stage;
pub mod stats;
pub mod topk;

pub use error::MineError;
pub use filter::{filter_candidates, Candidate, FilterConfig, FilterKind, Filtered};
pub use matrix::Matrix;
pub use order::DocOrder;
pub use sample::{
    sample_negatives, Negative, QueryInput, QueryNegatives, RandomPool, SampleConfig,
};
pub use search::top_k_on;
pub use select::Hit;
pub use stage::{MineConfig, MineStage, Scope};
pub use stats::{DropCounts, MiningStats, QueryStats, ScoreSummary, StatsBuilder};
pub use topk::{exact_top_k, merge_top_k, CorpusPart, Exclusions, TopKConfig};
