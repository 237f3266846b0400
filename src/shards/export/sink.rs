//! A jsonl file written under a hidden temporary name and renamed into place when complete.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::ExportError;

/// Where an export's converted groups go, one at a time; the output appears only when it is finished.
pub trait Sink<R> {
    fn put(&mut self, item: R) -> Result<(), ExportError>;

    /// Completes the output and moves it into place.
    fn finish(self) -> Result<(), ExportError>;
}

pub struct JsonlSink {
    path: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
}

/// The hidden temporary sibling of `path` (`.name.tmp`).
pub fn temporary(path: &Path) -> Result<PathBuf, ExportError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(ExportError::io(dir))?;
    let name = path.file_name().ok_or_else(|| ExportError::Malformed {
        path: path.to_path_buf(),
        message: "the output must be a file name".into(),
    })?;
    Ok(dir.join(crate::atomic::temporary_sibling(Path::new(name))))
}

impl JsonlSink {
    pub fn create(path: &Path) -> Result<Self, ExportError> {
        let tmp = temporary(path)?;
        let file = File::create(&tmp).map_err(ExportError::io(&tmp))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out: BufWriter::with_capacity(1 << 20, file),
        })
    }
}

/// One value per line.
impl<R: Serialize> Sink<R> for JsonlSink {
    fn put(&mut self, line: R) -> Result<(), ExportError> {
        serde_json::to_writer(&mut self.out, &line)?;
        self.out
            .write_all(b"\n")
            .map_err(ExportError::io(&self.tmp))
    }

    fn finish(self) -> Result<(), ExportError> {
        let file = self
            .out
            .into_inner()
            .map_err(|e| ExportError::io(&self.tmp)(e.into_error()))?;
        file.sync_all().map_err(ExportError::io(&self.tmp))?;
        drop(file);
        fs::rename(&self.tmp, &self.path).map_err(ExportError::io(&self.path))
    }
}
