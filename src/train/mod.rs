//! Training rerankers (docs/method.md): the objectives over groups of one positive and N negatives, the optimizer and
//! the learning-rate schedule.
//!
//! [`objective::group_loss`] turns a batch's yes/no logits into a loss to differentiate and the values a training
//! log reports; [`optim::AdamW`] applies the gradients (with [`optim::GradAccumulator`] summing micro-batches);
//! [`schedule::Schedule`] gives each step's learning rate.
//!
//! The `train` stage around them: [`data`] reads the shards into groups, [`encode`] builds their prompts,
//! [`images`] serves (and caches) image embeddings, [`model`] is the model being trained, [`forward`] runs a
//! micro-batch (padded, packed, or with each group's shared [`prefix`] run once), [`order`] fixes the data
//! order, [`trainer`] is the loop with [`checkpoint`]s, the per-step [`log`] and its [`plots`], [`parallel`]
//! splits it over data-parallel ranks, and [`stage`] puts it in the pipeline.

pub mod error;
pub mod objective;

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod encode;
pub mod failure;
pub mod forward;
pub mod images;
pub mod log;
pub mod model;
pub mod order;
pub mod parallel;
pub mod plots;
pub mod prefix;
pub mod stage;
pub mod trainer;
pub mod warm;

pub use config::TrainConfig;
pub use error::TrainError;
pub use failure::TrainRunError;
pub use stage::TrainStage;
pub use trainer::{
    prepare, train, train_prepared, train_prepared_on, Prepared, RunSettings, TrainInputs,
    TrainOutcome,
};
