//! Human-readable output: `umrank report` and the `report` stage turn a pipeline's stage directories into
//! `report.md` and a self-contained `report.html` with PNG charts ([`crate::charts`], which the trainer uses too).
//!
//! [`collect`] reads what the stages left (eval metrics, mining statistics, train logs), [`document`] builds the
//! format-free content and draws the charts, and [`markdown`] / [`html`] lay it out.

pub mod collect;
pub mod document;
pub mod html;
pub mod markdown;
pub mod stage;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

pub use collect::{collect, stage_dirs, Findings};
pub use document::ReportSettings;
pub use stage::{ReportConfig, ReportStage};

use crate::charts::PlotError;
use crate::eval::{EvalError, EvalStageError};
use crate::schema::outputs;

/// Why a report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}{}: {source}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Json {
        path: PathBuf,
        line: Option<usize>,
        #[source]
        source: serde_json::Error,
    },
    #[error("nothing to report: no metrics.json, stats.json or train_log.jsonl in {0}")]
    Nothing(String),
    #[error(transparent)]
    Metrics(#[from] EvalStageError),
    #[error(transparent)]
    Test(#[from] EvalError),
    #[error(transparent)]
    Plot(#[from] PlotError),
}

impl ReportError {
    pub(crate) fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { path, source }
    }
}

/// The files a report consists of.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFiles {
    pub markdown: PathBuf,
    pub html: PathBuf,
    pub plots: Vec<PathBuf>,
    /// The summary table (one row per reranker) as plain text, when there were eval stages.
    pub summary: Option<String>,
}

/// Writes the report of the `(stage name, directory)` pairs into `out`: `report.md`, `report.html` and
/// `plots/*.png`. The plots directory is emptied first, so no chart of an earlier report lingers.
pub fn write_report(
    stages: &[(String, PathBuf)],
    settings: &ReportSettings,
    out: &Path,
) -> Result<ReportFiles, ReportError> {
    let findings = collect(stages)?;
    if findings.is_empty() {
        let names: Vec<String> = stages
            .iter()
            .map(|(_, d)| d.display().to_string())
            .collect();
        return Err(ReportError::Nothing(names.join(", ")));
    }
    let plots_dir = out.join(outputs::report::PLOTS);
    if plots_dir.exists() {
        fs::remove_dir_all(&plots_dir).map_err(ReportError::io(&plots_dir))?;
    }
    fs::create_dir_all(&plots_dir).map_err(ReportError::io(&plots_dir))?;
    let document = document::build(&findings, settings, &plots_dir)?;
    let markdown = out.join(outputs::report::REPORT_MD);
    write_atomically(&markdown, markdown::render(&document).as_bytes())?;
    let html = out.join(outputs::report::REPORT_HTML);
    write_atomically(&html, html::render(&document, out)?.as_bytes())?;
    Ok(ReportFiles {
        markdown,
        html,
        plots: document.plots,
        summary: document::summary_table(&findings.evals).map(|t| t.to_text()),
    })
}

/// Writes through a temporary name, so that a killed run leaves no half-written report under the final name.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let temporary = path.with_file_name(format!(".{name}.tmp"));
    let mut file = fs::File::create(&temporary).map_err(ReportError::io(&temporary))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(ReportError::io(&temporary))?;
    fs::rename(&temporary, path).map_err(ReportError::io(path))
}
