//! The validated image as the images dataset stores it.

use std::sync::Arc;

use sha2::{Digest, Sha256};

use super::validate::ImageInfo;

/// One image, stored once however many rows point at it: its id is the hash of its original bytes, so the same
/// picture under two paths or URLs is the same record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRecord {
    /// Lowercase hex SHA-256 of `bytes`.
    pub image_id: String,
    /// The original encoding, unmodified: re-encoding would change the id and lose information.
    pub bytes: Arc<[u8]>,
    pub width: u32,
    pub height: u32,
    /// `png`, `jpeg`, `gif`, `webp` or `bmp`.
    pub format: String,
}

impl ImageRecord {
    /// Builds the record for bytes that [`validate`](super::validate::validate) accepted with `info`.
    pub fn new(bytes: Vec<u8>, info: ImageInfo) -> Self {
        ImageRecord {
            image_id: image_id(&bytes),
            bytes: bytes.into(),
            width: info.width,
            height: info.height,
            format: info.format.as_str().to_string(),
        }
    }
}

/// The image id of some bytes: lowercase hex SHA-256.
pub fn image_id(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}
