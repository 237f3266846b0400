//! Progress reporting shared by every long loop.
//!
//! Bars draw on stderr only when it is a terminal, so logs and CI output stay clean; log lines are routed
//! through the same [`MultiProgress`] so that they never tear a bar.

use std::io::{self, Write};
use std::sync::OnceLock;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The process-wide set of bars.
pub fn multi() -> &'static MultiProgress {
    static MULTI: OnceLock<MultiProgress> = OnceLock::new();
    MULTI.get_or_init(MultiProgress::new)
}

/// Hides every bar (`-q`).
pub fn set_quiet(quiet: bool) {
    if quiet {
        multi().set_draw_target(ProgressDrawTarget::hidden());
    }
}

/// A bar over `len` items with a rate and an ETA.
pub fn bar(len: u64, message: impl Into<String>) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{msg:>14} [{bar:32}] {human_pos}/{human_len} {per_sec:>10} elapsed {elapsed} ETA {eta}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ");
    multi().add(
        ProgressBar::new(len)
            .with_style(style)
            .with_message(message.into()),
    )
}

/// A spinner for work of unknown length, still showing a rate.
pub fn spinner(message: impl Into<String>) -> ProgressBar {
    let style = ProgressStyle::with_template(
        "{msg:>14} {spinner} {human_pos} {per_sec:>10} elapsed {elapsed}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_spinner());
    multi().add(
        ProgressBar::new_spinner()
            .with_style(style)
            .with_message(message.into()),
    )
}

/// A `tracing` writer that prints between bar redraws.
#[derive(Clone, Copy, Default)]
pub struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        multi().suspend(|| io::stderr().write_all(buf))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogWriter;

    fn make_writer(&'a self) -> Self::Writer {
        LogWriter
    }
}
