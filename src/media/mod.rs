//! Images: where they come from, how they are validated, and how models want them preprocessed.

pub mod archive;
pub mod fetch;
pub mod image_table;
pub mod loader;
mod local;
pub mod locator;
pub mod preprocess;
pub mod record;
pub mod reject;
mod truncation;
pub mod validate;

pub use loader::{ImageLoader, LoadOptions, LoaderError};
pub use record::ImageRecord;
pub use reject::{ImageReject, RejectCode};
