//! Human-readable output: `umrank report` and the `report` stage turn a pipeline's stage directories into
//! `report.md` and a self-contained `report.html` with PNG charts ([`crate::charts`], which the trainer uses too).
//!
//! [`collect`] reads what the stages left (eval metrics, mining statistics, train logs), [`seeds`] aggregates the
//! rerankers of a run over several seeds, [`document`] builds the format-free content and draws the charts, and
//! [`markdown`] / [`html`] lay it out.

pub mod collect;
pub mod document;
pub mod html;
pub mod markdown;
pub mod seeds;
pub mod stage;

use std::fs;
use std::path::{Path, PathBuf};

pub use collect::{collect, stage_dirs, Findings};
pub use document::ReportSettings;
pub use seeds::OverSeeds;
pub use stage::{ReportConfig, ReportStage};

use crate::charts::PlotError;
use crate::eval::{EvalError, EvalStageError, TestSettings};
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
    /// For a report over seeds: `seeds.json`, and the summary over seeds (then the rerankers compared over
    /// seeds) as plain text.
    pub over_seeds: Option<(PathBuf, String)>,
}

/// Writes the report of the `(stage name, directory)` pairs into `out`: `report.md`, `report.html` and
/// `plots/*.png`, and `seeds.json` when the stages include replicas of a per-seed stage (`eval_sft@s2`; see
/// [`seeds`]). The plots directory is emptied first, so no chart of an earlier report lingers.
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
    let over_seeds = if seeds::names_replicas(stages.iter().map(|(name, _)| name.as_str())) {
        let tests = TestSettings {
            permutations: settings.permutations,
            seed: settings.seed,
        };
        Some(seeds::over_seeds(&findings.evals, tests)?)
    } else {
        None
    };
    let document = document::build(&findings, over_seeds.as_ref(), settings, &plots_dir)?;
    let markdown = out.join(outputs::report::REPORT_MD);
    write_atomically(&markdown, markdown::render(&document).as_bytes())?;
    let html = out.join(outputs::report::REPORT_HTML);
    write_atomically(&html, html::render(&document, out)?.as_bytes())?;
    let over_seeds = match over_seeds {
        Some(over) => Some(write_over_seeds(&over, out)?),
        None => {
            remove_stale(&out.join(outputs::report::SEEDS_JSON))?;
            None
        }
    };
    Ok(ReportFiles {
        markdown,
        html,
        plots: document.plots,
        summary: document::summary_table(&findings.evals).map(|t| t.to_text()),
        over_seeds,
    })
}

/// Writes `seeds.json`; returns its path and the summary over seeds as text.
fn write_over_seeds(over: &OverSeeds, out: &Path) -> Result<(PathBuf, String), ReportError> {
    let path = out.join(outputs::report::SEEDS_JSON);
    let mut json = serde_json::to_vec_pretty(over).map_err(|source| ReportError::Json {
        path: path.clone(),
        line: None,
        source,
    })?;
    json.push(b'\n');
    write_atomically(&path, &json)?;
    let mut text = document::seeds_summary_table(over).to_text();
    if let Some(compared) = document::seeds_compared_table(over) {
        text.push('\n');
        text.push_str(&compared.to_text());
    }
    Ok((path, text))
}

/// Removes what an earlier report over seeds left, so that a report over one seed has no `seeds.json`.
fn remove_stale(path: &Path) -> Result<(), ReportError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ReportError::io(path)(e)),
        _ => Ok(()),
    }
}

/// Writes through a temporary name, so that a killed run leaves no half-written report under the final name.
fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ReportError> {
    crate::atomic::write_atomically(path, bytes).map_err(|e| ReportError::io(e.path)(e.source))
}
