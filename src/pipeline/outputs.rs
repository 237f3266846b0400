//! A stage run's outputs on disk: checking what it reads from outside the pipeline before anything runs, clearing
//! what an earlier or interrupted run of the same shard left, and recording what the run wrote.

use std::fs;
use std::path::{Path, PathBuf};

use super::manifest::mtime_ns;
use super::{manifest_path, rejects_path, Input, Output, OutputRecord, PipelineError, Stage};
use crate::dataset::{is_temporary, Dataset, PART_EXTENSION};
use crate::digest::sha256_file;
use crate::shard::Shard;

/// Fails before anything runs when a file a stage reads from outside the pipeline is missing, rather than after
/// the stages above it have run for minutes.
pub(super) fn check_files_exist(name: &str, stage: &dyn Stage) -> Result<(), PipelineError> {
    for input in stage.inputs() {
        let Input::Files(paths) = input else {
            continue;
        };
        if let Some(missing) = paths.into_iter().find(|path| !path.exists()) {
            return Err(PipelineError::MissingInput {
                stage: name.to_string(),
                path: missing,
                cwd: std::env::current_dir().unwrap_or_default(),
            });
        }
    }
    Ok(())
}

/// Removes what a previous or interrupted run of this shard left, so a rerun starts clean: its manifest first (so
/// that nothing below counts as finished), then its parts, temporary files, files of a different shard count, and
/// the stage's summary files (computed over parts this run replaces).
pub(super) fn clear_shard(
    dir: &Path,
    outputs: &[Output],
    shard: Shard,
) -> Result<(), PipelineError> {
    remove_if_present(&manifest_path(dir, shard))?;
    remove_if_present(&rejects_path(dir, shard))?;
    if !dir.exists() {
        return Ok(());
    }
    remove_stale_in(dir, shard, |name| {
        name.starts_with("manifest.") || name.starts_with("rejects.")
    })?;
    for output in outputs {
        let path = dir.join(output.name());
        match output {
            Output::Tree { .. } | Output::Summary { .. } => {
                if path.is_dir() {
                    fs::remove_dir_all(&path).map_err(PipelineError::io(&path))?;
                } else {
                    remove_if_present(&path)?;
                }
            }
            Output::Dataset { .. } => {
                remove_if_present(&path.join(format!("{}.{PART_EXTENSION}", shard.part_name())))?;
                if path.is_dir() {
                    remove_stale_in(&path, shard, |name| name.starts_with("part-"))?;
                }
            }
        }
    }
    Ok(())
}

/// Removes temporary files, and shard-named files (as chosen by `ours`) of a shard count other than `shard`'s.
/// Temporary files of the other shards of the same count are left alone: in a job array those shards may be
/// running right now, writing them.
fn remove_stale_in(
    dir: &Path,
    shard: Shard,
    ours: impl Fn(&str) -> bool,
) -> Result<(), PipelineError> {
    for entry in fs::read_dir(dir).map_err(PipelineError::io(dir))?.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let named = name
            .find("part-")
            .and_then(|at| Shard::from_part_name(&name[at..]));
        let stale_count = named.is_some_and(|s| s.count != shard.count);
        let sibling = named.is_some_and(|s| s.count == shard.count && s.index != shard.index);
        let unsharded_leftover =
            !shard.is_all() && (name == "manifest.json" || name == "rejects.parquet");
        if (is_temporary(&name) && !sibling) || (ours(&name) && (stale_count || unsharded_leftover))
        {
            remove_if_present(&entry.path())?;
        }
    }
    Ok(())
}

fn remove_if_present(path: &Path) -> Result<(), PipelineError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(PipelineError::Io {
            path: path.to_path_buf(),
            source: e,
        }),
    }
}

pub(super) fn collect_outputs(
    name: &str,
    dir: &Path,
    outputs: &[Output],
    shard: Shard,
) -> Result<Vec<OutputRecord>, PipelineError> {
    let mut records = Vec::new();
    for output in outputs {
        let path = dir.join(output.name());
        match output {
            Output::Dataset { name: dataset, .. } => {
                let part = path.join(format!("{}.{PART_EXTENSION}", shard.part_name()));
                if !part.is_file() {
                    return Err(PipelineError::MissingOutput {
                        stage: name.to_string(),
                        output: dataset.clone(),
                        path: part,
                    });
                }
                records.push(describe_file(dataset, dir, &part, true)?);
            }
            // A shard does not write the summary files; the merge after the array does (see `Output::Summary`).
            Output::Summary { .. } if !shard.is_all() => {}
            Output::Tree { name: tree } | Output::Summary { name: tree } => {
                if !path.exists() {
                    return Err(PipelineError::MissingOutput {
                        stage: name.to_string(),
                        output: tree.clone(),
                        path,
                    });
                }
                for file in files_under(&path)? {
                    records.push(describe_file(tree, dir, &file, false)?);
                }
            }
        }
    }
    Ok(records)
}

pub(super) fn describe_file(
    output: &str,
    dir: &Path,
    path: &Path,
    parquet: bool,
) -> Result<OutputRecord, PipelineError> {
    let meta = fs::metadata(path).map_err(PipelineError::io(path))?;
    let rows = if parquet {
        Some(Dataset::open(path)?.num_rows()?)
    } else {
        None
    };
    Ok(OutputRecord {
        output: output.to_string(),
        path: path.strip_prefix(dir).unwrap_or(path).to_path_buf(),
        rows,
        bytes: meta.len(),
        sha256: sha256_file(path).map_err(PipelineError::io(path))?,
        mtime_ns: mtime_ns(&meta),
    })
}

/// A file, or every file under a directory, sorted so that hashes do not depend on directory order. Temporary
/// files are skipped.
pub(super) fn files_under(path: &Path) -> Result<Vec<PathBuf>, PipelineError> {
    let meta = fs::metadata(path).map_err(PipelineError::io(path))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let mut files = Vec::new();
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).map_err(PipelineError::io(&dir))? {
            let entry = entry.map_err(PipelineError::io(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let kind = entry.file_type().map_err(PipelineError::io(entry.path()))?;
            if kind.is_dir() {
                pending.push(entry.path());
            } else if !is_temporary(&name) {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}
