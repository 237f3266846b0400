//! Images: where they come from, how they are validated, and how models want them preprocessed.
pub mod preprocess;
