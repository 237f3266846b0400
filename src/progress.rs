//! Progress reporting shared by every long loop.
//!
//! Bars draw on stderr only when it is a terminal, so logs and CI output stay clean; log lines are routed
//! through the same [`MultiProgress`] so that they never tear a bar. When the bars cannot draw (stderr is a
//! file, a pipe, a CI log or a pod's log), each bar instead logs a plain line every [`LOG_EVERY`] while it is
//! alive, so that a long stage still shows that it is moving and how long it has left.
//!
//! `UMRANK_PROGRESS_LOG_MS` sets that interval in milliseconds; it exists so that tests need not wait 10 s.

use std::io::{self, Write};
use std::sync::OnceLock;
use std::thread;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle, WeakProgressBar};

/// How often a bar that cannot draw logs its state: often enough to show life, rarely enough to keep logs short.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// The environment variable that overrides [`LOG_EVERY`], in milliseconds.
pub const LOG_EVERY_VAR: &str = "UMRANK_PROGRESS_LOG_MS";

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
    watched(
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
    watched(
        ProgressBar::new_spinner()
            .with_style(style)
            .with_message(message.into()),
    )
}

/// Adds `bar` to the drawn set; where it cannot be drawn but info lines are logged, it logs its state instead.
fn watched(bar: ProgressBar) -> ProgressBar {
    let bar = multi().add(bar);
    if multi().is_hidden() && tracing::enabled!(tracing::Level::INFO) {
        log_while_alive(bar.downgrade(), log_every());
    }
    bar
}

/// The logging interval: [`LOG_EVERY`] unless [`LOG_EVERY_VAR`] holds a positive number of milliseconds (zero would
/// log without pause).
fn log_every() -> Duration {
    std::env::var(LOG_EVERY_VAR)
        .ok()
        .and_then(|ms| ms.trim().parse().ok())
        .filter(|&ms| ms > 0)
        .map_or(LOG_EVERY, Duration::from_millis)
}

/// Logs the bar's state every `every` on a thread of its own, until the bar is finished or dropped. The thread
/// holds the bar weakly, so it never keeps a finished loop's bar alive.
fn log_while_alive(bar: WeakProgressBar, every: Duration) {
    let spawned = thread::Builder::new()
        .name("progress-log".into())
        .spawn(move || loop {
            thread::sleep(every);
            match bar.upgrade() {
                Some(bar) if !bar.is_finished() => tracing::info!("{}", status_line(&bar)),
                _ => break,
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("no progress log for this bar: {e}");
    }
}

/// One line of progress: `message: done/total, rate/s, ETA 2m34s` (a spinner has no total and no ETA).
pub fn status_line(bar: &ProgressBar) -> String {
    let done = bar.position();
    let rate = rate(bar);
    let message = bar.message();
    match bar.length() {
        Some(total) => format!(
            "{message}: {done}/{total}, {}/s, ETA {}",
            format_rate(rate),
            eta(total.saturating_sub(done), rate)
        ),
        None => format!("{message}: {done}, {}/s", format_rate(rate)),
    }
}

/// Items per second over the bar's life. indicatif's own estimate weighs recent items and decays while none
/// completes, so between training steps of several seconds it sank toward zero and the ETA swung by hours from
/// one line to the next; a bar's items (steps, pairs, batches) cost about the same, so the whole-life mean is the
/// steadier guide. No items yet is no rate.
fn rate(bar: &ProgressBar) -> f64 {
    let seconds = bar.elapsed().as_secs_f64();
    let done = bar.position();
    if done == 0 || seconds <= 0.0 {
        return 0.0;
    }
    done as f64 / seconds
}

/// Items per second with as many decimals as a reader needs: two below 1 (a step every few seconds), one below
/// 100, none above.
fn format_rate(rate: f64) -> String {
    if rate < 1.0 {
        format!("{rate:.2}")
    } else if rate < 100.0 {
        format!("{rate:.1}")
    } else {
        format!("{rate:.0}")
    }
}

/// The time `left` items take at `rate` per second; unknown before the first item is done (or at a rate so slow
/// that the time does not fit a `Duration`).
fn eta(left: u64, rate: f64) -> String {
    Duration::try_from_secs_f64(left as f64 / rate)
        .map_or_else(|_| "unknown".into(), format_duration)
}

/// A duration as `1h02m03s`, `2m34s` or `9s`: short enough for a log line, exact to the second.
pub fn format_duration(duration: Duration) -> String {
    let seconds = duration.as_secs();
    let (hours, minutes, seconds) = (seconds / 3600, seconds / 60 % 60, seconds % 60);
    if hours > 0 {
        format!("{hours}h{minutes:02}m{seconds:02}s")
    } else if minutes > 0 {
        format!("{minutes}m{seconds:02}s")
    } else {
        format!("{seconds}s")
    }
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
