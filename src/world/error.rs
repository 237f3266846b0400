//! Why a world could not be generated.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum WorldError {
    #[error("invalid world config: {field} {reason}")]
    InvalidConfig { field: &'static str, reason: String },

    #[error(
        "world output {} already exists and is not an empty directory: remove it or choose another --out",
        path.display()
    )]
    OutputExists { path: PathBuf },

    #[error("world output {} has no final path component to name it by", path.display())]
    OutputPath { path: PathBuf },

    #[error("could not {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("could not encode image {path}: {source}")]
    Encode {
        path: String,
        #[source]
        source: image::ImageError,
    },

    #[error("could not serialise a record of {}: {source}", path.display())]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// The world never repeats a scene; this says the seed's draws kept hitting used ones.
    #[error(
        "found no fresh {split} family after {attempts} draws; the scene space is too crowded"
    )]
    SceneSpaceExhausted {
        split: &'static str,
        attempts: usize,
    },
}

impl WorldError {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> WorldError {
        let path = path.into();
        move |source| WorldError::Io {
            action,
            path,
            source,
        }
    }
}
