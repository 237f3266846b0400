//! Progress off a terminal: where bars cannot draw (stderr is a file), a long stage logs plain lines with items
//! done and total, rate and ETA while it runs.

use std::fs::{self, File};
use std::process::{Command, Stdio};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget};
use umrank::progress::{format_duration, status_line, LOG_EVERY_VAR};

use crate::common::train_data::{small_demo_data, tokenizer_dir};

#[test]
fn a_training_run_with_stderr_in_a_file_logs_progress_while_it_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let data = small_demo_data(tmp.path(), &[], 3);
    let out = tmp.path().join("train");
    let stderr = tmp.path().join("stderr.log");
    let status = Command::new(env!("CARGO_BIN_EXE_umrank"))
        .args([
            "train",
            "--init",
            "tiny",
            "--max-len",
            "512",
            "--max-steps",
            "6",
        ])
        .arg("--tokenizer")
        .arg(tokenizer_dir())
        .arg("--shards")
        .arg(&data.shards)
        .arg("--ingest")
        .arg(&data.ingest)
        .arg("--out")
        .arg(&out)
        // Every few milliseconds instead of every 10 s: the run is shorter than one default interval.
        .env(LOG_EVERY_VAR, "5")
        .stdout(Stdio::null())
        .stderr(File::create(&stderr).unwrap())
        .status()
        .unwrap();
    let log = fs::read_to_string(&stderr).unwrap();
    assert!(status.success(), "umrank train failed:\n{log}");

    let progress = log
        .lines()
        .position(|l| l.contains("/6, ") && l.contains("/s, ETA "));
    let done = log.lines().position(|l| l.contains(": done in "));
    assert!(
        progress.is_some() && progress < done,
        "no progress line before the end of training:\n{log}"
    );
}

#[test]
fn a_status_line_has_the_message_items_done_and_total_rate_and_eta() {
    let bar = ProgressBar::hidden().with_message("train_sft loss 0.6931");
    bar.set_length(1200);
    bar.inc(340);
    let line = status_line(&bar);
    assert!(
        line.starts_with("train_sft loss 0.6931: 340/1200, "),
        "{line}"
    );
    assert!(line.contains("/s, ETA "), "{line}");
}

#[test]
fn a_bar_without_progress_has_no_eta_yet() {
    let bar = ProgressBar::hidden().with_message("mine mining");
    bar.set_length(8);
    assert_eq!(status_line(&bar), "mine mining: 0/8, 0.00/s, ETA unknown");
}

#[test]
fn the_eta_follows_the_mean_rate_while_a_slow_item_runs() {
    let bar = ProgressBar::hidden().with_message("train steps");
    bar.set_length(4);
    bar.inc(2);
    std::thread::sleep(Duration::from_millis(400));
    // Two items in at least 0.4 s: at most 5 items per second, and the two left take as long again as the two
    // done, however long the wait for the third has been so far.
    let line = status_line(&bar);
    let rate: f64 = line
        .split(", ")
        .nth(1)
        .and_then(|r| r.strip_suffix("/s"))
        .unwrap()
        .parse()
        .unwrap();
    assert!(rate > 0.0 && rate <= 5.0, "{line}");
    let eta = line.rsplit("ETA ").next().unwrap();
    assert!(eta.ends_with('s') && !eta.contains('h'), "{line}");
}

#[test]
fn a_spinner_status_line_has_no_total() {
    let bar =
        ProgressBar::with_draw_target(None, ProgressDrawTarget::hidden()).with_message("exporting");
    bar.inc(7);
    let line = status_line(&bar);
    assert!(line.starts_with("exporting: 7, "), "{line}");
    assert!(line.ends_with("/s"), "{line}");
}

#[test]
fn durations_read_as_hours_minutes_and_seconds() {
    assert_eq!(format_duration(Duration::from_secs(9)), "9s");
    assert_eq!(format_duration(Duration::from_secs(154)), "2m34s");
    assert_eq!(format_duration(Duration::from_secs(3723)), "1h02m03s");
}
