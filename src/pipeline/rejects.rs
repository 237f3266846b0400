//! Row-level failures. A record that cannot be used becomes a reject row with its source and reason; the stage
//! fails only when rejects pass the configured share (docs/faults.md#rejects-and-the-reject-limit), and then names
//! the first one.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringBuilder, UInt64Builder};

use super::RejectFailure;
use crate::dataset::{DatasetError, DatasetWriter, WriteOptions, WrittenPart};
use crate::schema;
use crate::shard::Shard;

/// One input record a stage could not use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// File or URL the record came from.
    pub source: String,
    /// 1-based line or row in the source, when known.
    pub line: Option<u64>,
    /// The record's id, when it could be read.
    pub record_id: Option<String>,
    /// Stable snake_case reason code.
    pub reason: String,
    /// A sentence for a person, naming the offending value.
    pub detail: String,
}

impl Reject {
    pub fn new(
        source: impl Into<String>,
        reason: impl Into<String>,
        detail: impl Into<String>,
    ) -> Self {
        Self {
            source: source.into(),
            line: None,
            record_id: None,
            reason: reason.into(),
            detail: detail.into(),
        }
    }

    pub fn at_line(mut self, line: u64) -> Self {
        self.line = Some(line);
        self
    }

    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.record_id = Some(id.into());
        self
    }
}

impl fmt::Display for Reject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.source)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": {}", self.reason)?;
        if let Some(id) = &self.record_id {
            write!(f, " ({id})")?;
        }
        write!(f, ": {}", self.detail)
    }
}

/// When rejects fail a stage.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RejectPolicy {
    /// The largest share of records that may be rejected before the stage fails.
    pub max_fraction: f64,
    /// Fail at any reject.
    pub strict: bool,
}

impl Default for RejectPolicy {
    fn default() -> Self {
        Self {
            max_fraction: 0.01,
            strict: false,
        }
    }
}

impl RejectPolicy {
    /// Whether `rejected` rejects out of `records` records are over the limit.
    pub fn exceeded(&self, rejected: u64, records: u64) -> bool {
        if rejected == 0 {
            return false;
        }
        self.strict || rejected as f64 > self.max_fraction * records as f64
    }

    /// `Ok` while `rejected` of `records` is within the policy; otherwise the failure that names the stage, the
    /// first reject (`first`, as its file, line and reason) and the rejects file.
    pub(crate) fn enforce(
        &self,
        stage: &str,
        rejected: u64,
        records: u64,
        first: Option<&Reject>,
        rejects_file: &Path,
    ) -> Result<(), RejectFailure> {
        if !self.exceeded(rejected, records) {
            return Ok(());
        }
        Err(RejectFailure {
            stage: stage.to_string(),
            rejected,
            records,
            max_fraction: self.max_fraction,
            strict: self.strict,
            first: first.map(ToString::to_string).unwrap_or_default(),
            rejects_file: rejects_file.to_path_buf(),
        })
    }
}

/// Where a stage's rejects go: `rejects.parquet`, or `rejects.part-I-of-N.parquet` for a shard.
pub fn rejects_path(stage_dir: &Path, shard: Shard) -> PathBuf {
    if shard.is_all() {
        stage_dir.join("rejects.parquet")
    } else {
        stage_dir.join(format!("rejects.{}.parquet", shard.part_name()))
    }
}

const FLUSH_ROWS: usize = 4096;

/// Streams rejects to disk in batches, so a badly broken input costs disk, not memory.
pub(crate) struct RejectSink {
    stage: String,
    writer: DatasetWriter,
    pending: Vec<Reject>,
    first: Option<Reject>,
    count: u64,
}

impl RejectSink {
    pub(crate) fn create(stage: &str, path: PathBuf) -> Result<Self, DatasetError> {
        let kind = schema::get("rejects").map_err(|source| DatasetError::Schema {
            path: path.clone(),
            source,
        })?;
        let writer = DatasetWriter::create_at(path, kind, kind.arrow(), WriteOptions::default())?;
        Ok(Self {
            stage: stage.to_string(),
            writer,
            pending: Vec::new(),
            first: None,
            count: 0,
        })
    }

    pub(crate) fn push(&mut self, reject: Reject) -> Result<(), DatasetError> {
        if self.first.is_none() {
            self.first = Some(reject.clone());
        }
        self.count += 1;
        self.pending.push(reject);
        if self.pending.len() >= FLUSH_ROWS {
            self.flush()?;
        }
        Ok(())
    }

    pub(crate) fn count(&self) -> u64 {
        self.count
    }

    pub(crate) fn first(&self) -> Option<&Reject> {
        self.first.as_ref()
    }

    fn flush(&mut self) -> Result<(), DatasetError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let batch = self.batch()?;
        self.pending.clear();
        self.writer.write(&batch)
    }

    fn batch(&self) -> Result<RecordBatch, DatasetError> {
        let n = self.pending.len();
        let mut stage = StringBuilder::with_capacity(n, n * self.stage.len());
        let mut source = StringBuilder::new();
        let mut line = UInt64Builder::with_capacity(n);
        let mut record_id = StringBuilder::new();
        let mut reason = StringBuilder::new();
        let mut detail = StringBuilder::new();
        for r in &self.pending {
            stage.append_value(&self.stage);
            source.append_value(&r.source);
            line.append_option(r.line);
            record_id.append_option(r.record_id.as_deref());
            reason.append_value(&r.reason);
            detail.append_value(&r.detail);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(stage.finish()),
            Arc::new(source.finish()),
            Arc::new(line.finish()),
            Arc::new(record_id.finish()),
            Arc::new(reason.finish()),
            Arc::new(detail.finish()),
        ];
        RecordBatch::try_new(self.writer.arrow_schema(), columns).map_err(|source| {
            DatasetError::Arrow {
                path: self.writer.path().to_path_buf(),
                source,
            }
        })
    }

    /// Writes what is pending and renames the file into place.
    pub(crate) fn finish(mut self) -> Result<WrittenPart, DatasetError> {
        self.flush()?;
        self.writer.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_thresholds() {
        let p = RejectPolicy::default();
        assert!(!p.exceeded(0, 0));
        assert!(!p.exceeded(1, 100));
        assert!(p.exceeded(2, 100));
        assert!(p.exceeded(1, 0));
        let strict = RejectPolicy { strict: true, ..p };
        assert!(strict.exceeded(1, 1_000_000));
        assert!(!strict.exceeded(0, 10));
    }

    #[test]
    fn display_names_file_and_line() {
        let r = Reject::new("query/test/a.jsonl", "malformed_json", "expected `:`")
            .at_line(17)
            .with_id("9:3");
        assert_eq!(
            r.to_string(),
            "query/test/a.jsonl:17: malformed_json (9:3): expected `:`"
        );
    }
}
