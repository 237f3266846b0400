//! Writing a file so that a reader, or a run started again after a kill, finds either its old content or the
//! whole new content, never a part: the bytes go to a hidden sibling `.NAME.tmp` (which the runner removes when
//! a crash leaves one behind), are synced to disk, and the sibling is renamed over the file.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A failed atomic write, with the path the failing operation touched (the file or its temporary sibling).
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct AtomicWriteError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// The hidden sibling `.NAME.tmp` that `path`'s new content is written to first.
pub fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

/// Writes `bytes` to `path` atomically, creating its directory if needed.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), AtomicWriteError> {
    let at = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AtomicWriteError { path, source }
    };
    if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
        fs::create_dir_all(dir).map_err(at(dir))?;
    }
    let temporary = temporary_sibling(path);
    let mut file = fs::File::create(&temporary).map_err(at(&temporary))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(at(&temporary))?;
    drop(file);
    fs::rename(&temporary, path).map_err(at(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_content_whole_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/out.json");
        write_atomically(&path, b"old").unwrap();
        write_atomically(&path, b"new content").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new content");
        assert!(!temporary_sibling(&path).exists());
        assert_eq!(
            temporary_sibling(&path),
            dir.path().join("sub/.out.json.tmp")
        );
    }

    #[test]
    fn a_failure_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        fs::write(&blocker, b"x").unwrap();
        let error = write_atomically(&blocker.join("below"), b"y").unwrap_err();
        assert!(error.path.starts_with(&blocker), "{error}");
    }
}
