//! Why a training run stopped. Bad groups are rejects, not failures; these are the problems that leave nothing
//! sensible to train on or to write.

use std::path::PathBuf;

use super::config::ConfigProblem;
use super::error::TrainError;
use crate::dataset::DatasetError;
use crate::models::adapters::peft::PeftError;
use crate::models::text::prompt::PromptError;
use crate::models::text::tokenizer::TokenizerError;

#[derive(Debug, thiserror::Error)]
pub enum TrainRunError {
    #[error(transparent)]
    Config(#[from] ConfigProblem),
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("{path}: {message}")]
    Data { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("model: {0}")]
    Model(String),
    #[error(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    Prompt(#[from] PromptError),
    #[error(transparent)]
    Train(#[from] TrainError),
    #[error(transparent)]
    Peft(#[from] PeftError),
    #[error("checkpoint {path}: {message}")]
    Checkpoint { path: PathBuf, message: String },
    #[error("no group is left to train on: all {rejected} were rejected (first: {first})")]
    NothingToTrain { rejected: usize, first: String },
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error(transparent)]
    Plot(Box<crate::charts::PlotError>),
    /// Between data-parallel ranks; a rank stopped by another's failure gets `PeerFailed` naming that rank.
    #[error(transparent)]
    Distributed(#[from] crate::distributed::DistributedError),
    /// A data-parallel run stopped because this rank failed first.
    #[error("data-parallel rank {rank} of {world} failed: {source}")]
    Rank {
        rank: usize,
        world: usize,
        #[source]
        source: Box<TrainRunError>,
    },
}

impl TrainRunError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }

    pub(crate) fn model(what: impl std::fmt::Display) -> Self {
        Self::Model(what.to_string())
    }
}

/// An optimizer or schedule error is a training error, as the loss's are.
impl From<crate::optim::OptimError> for TrainRunError {
    fn from(error: crate::optim::OptimError) -> Self {
        Self::Train(TrainError::Optim(error))
    }
}
