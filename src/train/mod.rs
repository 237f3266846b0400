//! Training rerankers (DESIGN §4): the objectives over groups of one positive and N negatives, the optimizer and
//! the learning-rate schedule.
//!
//! [`objective::group_loss`] turns a batch's yes/no logits into a loss to differentiate and the values a training
//! log reports; [`optim::AdamW`] applies the gradients (with [`optim::GradAccumulator`] summing micro-batches);
//! [`schedule::Schedule`] gives each step's learning rate.

pub mod dual_encoder;
pub mod error;
pub mod objective;
pub mod optim;
pub mod schedule;

pub use error::TrainError;
