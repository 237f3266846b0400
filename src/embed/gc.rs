//! Pruning an embedding store (`umrank store gc`): removes the chunks no kept run uses, and the temporary files
//! killed writers left (docs/mining.md#pruning-the-store).
//!
//! Every embed run writes the chunks it read from or wrote to `store_refs.txt` in its stage directory
//! ([`super::store::references_path`]). A chunk is kept when a kept run lists it, or when it is younger than the
//! minimum age: a run still going may have just renamed it into place and not yet listed it. A temporary file is
//! removed only once older than the minimum age, since a younger one may be a chunk being written. Chunks appear
//! only by an atomic rename, so gc never sees half of one. A run that is reading the store while gc removes one of
//! its chunks finds the chunk gone and embeds its vectors again: pruning costs time, never a wrong vector.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::store::{chunk_digest, REFERENCES_HEADER};
use super::EmbedError;

/// What to keep.
#[derive(Debug, Clone)]
pub struct GcPolicy {
    /// Run directories (an embed stage's directory, or any directory above it such as a pipeline's workdir)
    /// whose embed stages' chunks are kept.
    pub keep_runs: Vec<PathBuf>,
    /// Files younger than this are kept whatever they are.
    pub min_age: Duration,
    /// Report what would be removed, remove nothing.
    pub dry_run: bool,
}

/// What a collection removed (or, dry, would remove) and kept.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Removed chunks and temporary files, sorted.
    pub removed: Vec<PathBuf>,
    pub removed_bytes: u64,
    /// Chunks kept because a kept run uses them.
    pub kept_referenced: usize,
    /// Chunks and temporary files kept because they are younger than the minimum age.
    pub kept_young: usize,
    /// The references files the kept runs were read from.
    pub reference_files: usize,
}

/// Collects the store at `root` under `policy`. A kept run without any references file is an error, not a run
/// with nothing to keep: a mistyped directory would otherwise cost the whole store.
pub fn collect(root: &Path, policy: &GcPolicy) -> Result<GcReport, EmbedError> {
    if !root.is_dir() {
        return Err(EmbedError::Input {
            path: root.to_path_buf(),
            message: "not a directory: no embedding store here".into(),
        });
    }
    if policy.keep_runs.is_empty() {
        return Err(EmbedError::Config(
            "name at least one run to keep (--keep-runs DIR): with none, every chunk would go"
                .into(),
        ));
    }
    let mut report = GcReport::default();
    let mut referenced = BTreeSet::new();
    for run in &policy.keep_runs {
        let files = reference_files(run)?;
        if files.is_empty() {
            return Err(EmbedError::Input {
                path: run.clone(),
                message: "no embed stage's store_refs*.txt under it: not a run that used a store (or one \
                          from before umrank recorded its chunks); refusing to prune against it"
                    .into(),
            });
        }
        report.reference_files += files.len();
        for file in files {
            referenced.extend(read_references(&file)?);
        }
    }
    let now = SystemTime::now();
    for model_dir in sorted_entries(root)? {
        if !model_dir.is_dir() {
            continue;
        }
        let model_key = file_name(&model_dir);
        for path in sorted_entries(&model_dir)? {
            let name = file_name(&path);
            let is_chunk = chunk_digest(&name).is_some();
            let is_temporary = name.starts_with('.') && name.ends_with(".tmp");
            if !is_chunk && !is_temporary {
                continue;
            }
            if is_chunk && referenced.contains(&format!("{model_key}/{name}")) {
                report.kept_referenced += 1;
                continue;
            }
            let metadata = fs::metadata(&path).map_err(io(&path))?;
            let age = metadata
                .modified()
                .ok()
                .and_then(|modified| now.duration_since(modified).ok())
                .unwrap_or_default();
            if age < policy.min_age {
                report.kept_young += 1;
                continue;
            }
            if !policy.dry_run {
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    // Another gc, or the writer renaming its temporary file, got there first.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(&path)(e)),
                }
            }
            report.removed_bytes += metadata.len();
            report.removed.push(path);
        }
    }
    Ok(report)
}

/// The references files under `run` (itself included), sorted; symbolic links are not followed.
fn reference_files(run: &Path) -> Result<Vec<PathBuf>, EmbedError> {
    let metadata = fs::symlink_metadata(run).map_err(io(run))?;
    if metadata.is_file() {
        let own = if is_references_file(run) {
            vec![run.to_path_buf()]
        } else {
            Vec::new()
        };
        return Ok(own);
    }
    let mut found = Vec::new();
    let mut pending = vec![run.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for path in sorted_entries(&dir)? {
            let kind = fs::symlink_metadata(&path).map_err(io(&path))?.file_type();
            if kind.is_dir() {
                pending.push(path);
            } else if kind.is_file() && is_references_file(&path) {
                found.push(path);
            }
        }
    }
    found.sort();
    Ok(found)
}

fn is_references_file(path: &Path) -> bool {
    let name = file_name(path);
    name == "store_refs.txt" || (name.starts_with("store_refs.") && name.ends_with(".txt"))
}

/// The `<model key>/<chunk file>` lines of a references file, which must start with [`REFERENCES_HEADER`].
fn read_references(path: &Path) -> Result<Vec<String>, EmbedError> {
    let text = fs::read_to_string(path).map_err(io(path))?;
    let mut lines = text.lines();
    if lines.next() != Some(REFERENCES_HEADER) {
        return Err(EmbedError::Input {
            path: path.to_path_buf(),
            message: format!("does not start with `{REFERENCES_HEADER}`"),
        });
    }
    Ok(lines
        .filter(|line| !line.is_empty())
        .map(str::to_string)
        .collect())
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>, EmbedError> {
    let mut paths = Vec::new();
    for entry in fs::read_dir(dir).map_err(io(dir))? {
        paths.push(entry.map_err(io(dir))?.path());
    }
    paths.sort();
    Ok(paths)
}

fn file_name(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> EmbedError {
    let path = path.to_path_buf();
    move |source| EmbedError::Io { path, source }
}
