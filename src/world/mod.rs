//! The demo world: a deterministic generator of a small multimodal retrieval dataset in M-BEIR format.
//!
//! The demo needs data of its own that enters umrank through the same door as real data, so the world writes the
//! M-BEIR layout (see [`generate`]) and the demo ingests it like any M-BEIR download.
//!
//! A world is made of synthetic scenes: one to three coloured shapes on a plain background. Scenes come in
//! families: a centre and its near misses, each differing from the centre in exactly one attribute of one object.
//! Every task (text -> image, text -> text, image -> text, image -> image, image + edit instruction -> image) asks
//! one query per family, with the centre as positive and the near misses as listed hard negatives, so a retriever
//! or reranker has to get the details right. No scene appears twice in a world, and the splits hold different
//! families.

pub mod caption;
mod config;
mod error;
pub mod family;
mod mbeir;
pub mod plan;
pub mod render;
pub mod scene;
pub mod stage;
mod summary;
pub mod tasks;

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

pub use config::{PerSplit, Split, WorldConfig, WorldSize, MAX_IMAGE_SIDE, MIN_IMAGE_SIDE};
pub use error::WorldError;
pub use plan::{plan, World};
pub use summary::{TaskSummary, WorldSummary};
pub use tasks::{Modality, Task};

/// Generates the world `config` describes into the directory `out`, and returns its exact counts.
///
/// `out` must not exist or be an empty directory: a world is never mixed with older files. The files are first
/// written to a hidden sibling (`.<name>.partial`) and renamed into place when complete, so an interrupted run
/// leaves no `out` that could pass for a finished world. Same config -> byte-identical files.
pub fn generate(config: &WorldConfig, out: &Path) -> Result<WorldSummary, WorldError> {
    let world = plan(config)?;
    let out_is_empty_dir = check_output(out)?;
    let partial = partial_path(out)?;
    if partial.exists() {
        fs::remove_dir_all(&partial).map_err(WorldError::io("remove stale", &partial))?;
    }
    fs::create_dir_all(&partial).map_err(WorldError::io("create directory", &partial))?;
    let summary = mbeir::write(&world, &partial)?;
    if out_is_empty_dir {
        fs::remove_dir(out).map_err(WorldError::io("replace empty directory", out))?;
    }
    fs::rename(&partial, out).map_err(WorldError::io("move the finished world to", out))?;
    Ok(summary)
}

/// Whether `out` is an existing empty directory; an error when it exists as anything else.
fn check_output(out: &Path) -> Result<bool, WorldError> {
    match fs::symlink_metadata(out) {
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(false),
        Err(source) => Err(WorldError::Io {
            action: "inspect",
            path: out.to_path_buf(),
            source,
        }),
        Ok(meta) if meta.is_dir() => {
            let mut entries = fs::read_dir(out).map_err(WorldError::io("list", out))?;
            if entries.next().is_some() {
                Err(WorldError::OutputExists {
                    path: out.to_path_buf(),
                })
            } else {
                Ok(true)
            }
        }
        Ok(_) => Err(WorldError::OutputExists {
            path: out.to_path_buf(),
        }),
    }
}

/// The hidden sibling of `out` that a world is written into before it is renamed.
fn partial_path(out: &Path) -> Result<PathBuf, WorldError> {
    let name = out.file_name().ok_or_else(|| WorldError::OutputPath {
        path: out.to_path_buf(),
    })?;
    let mut partial_name = std::ffi::OsString::from(".");
    partial_name.push(name);
    partial_name.push(".partial");
    Ok(out.with_file_name(partial_name))
}
