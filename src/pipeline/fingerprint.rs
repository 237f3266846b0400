//! A stage run's identity and whether a previous run of it still stands: the fingerprint over the stage's kind,
//! config, seed, shard and inputs, the content hashes of inputs from outside the pipeline, and the check that a
//! recorded run's outputs and observed files are unchanged.

use std::fs;
use std::path::Path;

use super::manifest::mtime_ns;
use super::{InputRecord, Manifest, PipelineError};
use crate::digest::{sha256_file, Fingerprint};
use crate::shard::Shard;

/// Keys sorted at every level, so the hash does not depend on map order.
pub(super) fn canonical_json(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let fields: Vec<String> = keys
                .into_iter()
                .map(|k| {
                    format!(
                        "{}:{}",
                        serde_json::Value::String(k.clone()),
                        canonical_json(&map[k])
                    )
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
        serde_json::Value::Array(items) => {
            let items: Vec<String> = items.iter().map(canonical_json).collect();
            format!("[{}]", items.join(","))
        }
        other => other.to_string(),
    }
}

pub(super) fn fingerprint(
    kind: &str,
    config_hash: &str,
    seed: u64,
    shard: Shard,
    inputs: &[InputRecord],
) -> String {
    let mut fp = Fingerprint::new();
    fp.part("umrank", env!("CARGO_PKG_VERSION").as_bytes())
        .part("kind", kind.as_bytes())
        .part("config", config_hash.as_bytes())
        .part("seed", &seed.to_le_bytes())
        .part("shard", shard.to_string().as_bytes());
    for input in inputs {
        match input {
            InputRecord::Stage { name, hash, .. } => fp
                .part("stage", name.as_bytes())
                .part("hash", hash.as_bytes()),
            InputRecord::File { path, sha256, .. } => fp
                .part("file", path.to_string_lossy().as_bytes())
                .part("sha256", sha256.as_bytes()),
        };
    }
    fp.finish()
}

/// Whether a previous run of the same fingerprint left its outputs intact and its observed inputs unchanged.
/// Outputs are compared by size, then by content only if their mtime moved.
pub(super) fn is_current(
    prev: &Manifest,
    fingerprint: &str,
    dir: &Path,
) -> Result<bool, PipelineError> {
    if prev.fingerprint != fingerprint {
        return Ok(false);
    }
    for output in &prev.outputs {
        let path = dir.join(&output.path);
        let Ok(meta) = fs::metadata(&path) else {
            tracing::info!("{}: missing, rerunning", path.display());
            return Ok(false);
        };
        if meta.len() != output.bytes {
            return Ok(false);
        }
        if mtime_ns(&meta) != output.mtime_ns
            && sha256_file(&path).map_err(PipelineError::io(&path))? != output.sha256
        {
            tracing::info!("{}: changed since the last run, rerunning", path.display());
            return Ok(false);
        }
    }
    let run_dir = dir.parent().unwrap_or(Path::new(""));
    for seen in &prev.observed {
        match fs::metadata(run_dir.join(&seen.path)) {
            Ok(meta) if meta.len() == seen.size && mtime_ns(&meta) == seen.mtime_ns => {}
            _ => {
                tracing::info!(
                    "{}: changed since the last run, rerunning",
                    seen.path.display()
                );
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// The manifests of a stage that a job array completed as N shards, when every shard's fingerprint is the one this
/// run would give it (`expected`) and its outputs are intact: together the shards are the stage's whole output, so
/// an unsharded run (the usual next step after the array) has nothing to redo.
pub(super) fn completed_as_shards(
    dir: &Path,
    expected: impl Fn(Shard) -> String,
) -> Result<Option<Vec<Manifest>>, PipelineError> {
    let Ok(parts) = Manifest::read_complete(dir) else {
        return Ok(None);
    };
    for part in &parts {
        if part.shard.is_all() || !is_current(part, &expected(part.shard), dir)? {
            return Ok(None);
        }
    }
    Ok(Some(parts))
}

/// Hashes an external input, reusing the previous run's hash when size and mtime are unchanged.
pub(super) fn hash_file_input(
    path: &Path,
    previous: Option<&Manifest>,
) -> Result<InputRecord, PipelineError> {
    let meta = fs::metadata(path).map_err(PipelineError::io(path))?;
    let (size, mtime) = (meta.len(), mtime_ns(&meta));
    let cached = previous
        .into_iter()
        .flat_map(|m| &m.inputs)
        .find_map(|i| match i {
            InputRecord::File {
                path: p,
                size: s,
                mtime_ns: t,
                sha256,
            } if p == path && *s == size && *t == mtime => Some(sha256.clone()),
            _ => None,
        });
    let sha256 = match cached {
        Some(sha) => sha,
        None => sha256_file(path).map_err(PipelineError::io(path))?,
    };
    Ok(InputRecord::File {
        path: path.to_path_buf(),
        size,
        mtime_ns: mtime,
        sha256,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_json_sorts_keys_at_every_level() {
        let a = serde_json::json!({"b": 1, "a": {"y": [1, {"q": 1, "p": 2}], "x": null}});
        assert_eq!(
            canonical_json(&a),
            r#"{"a":{"x":null,"y":[1,{"p":2,"q":1}]},"b":1}"#
        );
    }
}
