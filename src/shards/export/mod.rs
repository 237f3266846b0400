//! Exporters: the shards in the formats other trainers read, one line or row per group, in training order.
//!
//! | format | file | a group becomes |
//! |---|---|---|
//! | `swift` | ms-swift reranker jsonl | `messages` (system = instruction, user = query), `positive_messages` (one), `negative_messages`, with `images`, `positive_images`, `negative_images` |
//! | `flag` | FlagEmbedding jsonl | `{"query", "pos": [one], "neg": [...], "prompt"}` (text only) |
//! | `sentence-transformers` | Parquet | columns `anchor`, `positive`, `negative_1` .. `negative_N` |
//!
//! Images are written once each to `images/<image_id>.<ext>` next to the output file, unchanged, and referenced by
//! that relative path. A group a format cannot express is skipped and counted by reason in the
//! [`ExportSummary`], never written half right.

mod error;
mod flag;
mod images;
mod reader;
mod sentence;
mod sink;
mod swift;

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

pub use error::ExportError;
pub use reader::{for_each_group, ExportGroup, Record};

use self::images::ImageFiles;
use self::sink::Sink;
use super::ShardIndex;
use crate::progress;

/// The formats `umrank export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum ExportFormat {
    /// ms-swift reranker jsonl, with images.
    Swift,
    /// FlagEmbedding jsonl: {query, pos, neg, prompt}; text only.
    Flag,
    /// Parquet with columns anchor, positive, negative_1..negative_N (text, or an image path).
    SentenceTransformers,
}

/// What to export, and where.
#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub format: ExportFormat,
    /// The shards stage directory (with `index.json`).
    pub shards: PathBuf,
    /// The file to write; images go to `images/` beside it.
    pub out: PathBuf,
    /// The images dataset, instead of the one `index.json` names.
    pub images: Option<PathBuf>,
    /// sentence-transformers: negative columns to write (default: the most any group has). Groups with fewer are
    /// skipped; groups with more keep their first N.
    pub negatives: Option<usize>,
}

/// What an export did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExportSummary {
    /// Groups read from the shards.
    pub groups: u64,
    /// Lines (rows) written.
    pub written: u64,
    /// Groups not written, by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    /// Image files written.
    pub images: u64,
    /// Records exported without their image, because the format holds text only (or one value per cell).
    pub images_dropped: u64,
}

impl ExportSummary {
    fn skip(&mut self, reason: &'static str) {
        *self.skipped.entry(reason).or_default() += 1;
    }
}

impl fmt::Display for ExportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {} groups written", self.written, self.groups)?;
        if !self.skipped.is_empty() {
            let reasons: Vec<String> = self
                .skipped
                .iter()
                .map(|(r, n)| format!("{r} {n}"))
                .collect();
            write!(f, " (skipped: {})", reasons.join(", "))?;
        }
        write!(f, "; {} image files", self.images)?;
        if self.images_dropped > 0 {
            write!(
                f,
                "; {} records exported without their image",
                self.images_dropped
            )?;
        }
        Ok(())
    }
}

/// Exports the shards in `options.shards` to `options.out`.
pub fn export(options: &ExportOptions) -> Result<ExportSummary, ExportError> {
    let index = ShardIndex::read(&options.shards)?;
    let sft = index.sft(&options.shards)?;
    let found = sft.num_rows()?;
    if found != index.sft_rows {
        return Err(ExportError::Malformed {
            path: options.shards.clone(),
            message: format!(
                "the sft shards hold {found} rows, index.json says {}",
                index.sft_rows
            ),
        });
    }
    let out_dir = options.out.parent().unwrap_or(Path::new(".")).to_path_buf();
    let bar = progress::bar(index.groups, "exporting");
    let mut summary = ExportSummary::default();
    match options.format {
        ExportFormat::Flag => {
            let sink = sink::JsonlSink::create(&options.out)?;
            write_groups(&sft, &bar, &mut summary, sink, |group, dropped| {
                Ok(flag::line(group, dropped))
            })?;
        }
        ExportFormat::Swift => {
            let images = image_files(options, &index, &sft, &out_dir, swift::images_used)?;
            summary.images = images.len() as u64;
            let sink = sink::JsonlSink::create(&options.out)?;
            write_groups(&sft, &bar, &mut summary, sink, |group, _| {
                swift::line(group, &images)
            })?;
        }
        ExportFormat::SentenceTransformers => {
            let negatives = options.negatives.unwrap_or(index.max_negatives as usize);
            let used = |group: &ExportGroup| sentence::images_used(group, negatives);
            let images = image_files(options, &index, &sft, &out_dir, used)?;
            summary.images = images.len() as u64;
            let sink = sentence::SentenceSink::create(&options.out, negatives)?;
            write_groups(&sft, &bar, &mut summary, sink, |group, dropped| {
                sentence::row(group, negatives, &images, dropped)
            })?;
        }
    }
    bar.finish_and_clear();
    Ok(summary)
}

/// Converts every group of `sft` with `convert` (given the count of images dropped so far) into `sink`: written
/// when the format can hold it, skipped with the reason when it cannot. Counts go to `summary`.
fn write_groups<R>(
    sft: &crate::dataset::Dataset,
    bar: &ProgressBar,
    summary: &mut ExportSummary,
    mut sink: impl Sink<R>,
    mut convert: impl FnMut(&ExportGroup, &mut u64) -> Result<Result<R, &'static str>, ExportError>,
) -> Result<(), ExportError> {
    let groups = for_each_group(sft, |group| {
        bar.inc(1);
        match convert(&group, &mut summary.images_dropped)? {
            Ok(item) => {
                sink.put(item)?;
                summary.written += 1;
            }
            Err(reason) => summary.skip(reason),
        }
        Ok(())
    })?;
    sink.finish()?;
    summary.groups = groups;
    Ok(())
}

/// Writes the images the export will reference (`used` lists them per group) to `images/` beside the output, and
/// returns their relative paths.
fn image_files(
    options: &ExportOptions,
    index: &ShardIndex,
    sft: &crate::dataset::Dataset,
    out_dir: &Path,
    used: impl Fn(&ExportGroup) -> Vec<String>,
) -> Result<ImageFiles, ExportError> {
    let mut wanted = BTreeSet::new();
    for_each_group(sft, |group| {
        wanted.extend(used(&group));
        Ok(())
    })?;
    let dataset = options
        .images
        .clone()
        .unwrap_or_else(|| index.images_path(&options.shards));
    images::write_images(&dataset, &wanted, out_dir)
}
