//! What the memory benchmarks share: each measurement runs in a process of its own, so that the kernel's
//! high-water mark of resident memory (`VmHWM`) is that measurement's, and reports one `RESULT {json}` line.

use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Runs `command` (this benchmark's own binary in its child mode) and returns the object of its `RESULT` line.
pub fn run_measurement(mut command: Command, what: &str) -> Result<Value> {
    let out = command
        .output()
        .with_context(|| format!("running measurement {what}"))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "measurement {what} failed ({}): {stdout}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .with_context(|| format!("measurement {what} printed no RESULT line"))?;
    Ok(serde_json::from_str(line)?)
}

/// A `/proc/self/status` field in KiB.
pub fn status_kib(field: &str) -> Result<u64> {
    status_kib_of("/proc/self/status", field)
}

/// A `field:  N kB` line of a `/proc` file, in KiB.
pub fn status_kib_of(file: &str, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(file)?;
    let line = status
        .lines()
        .find(|l| l.starts_with(field))
        .with_context(|| format!("no {field} in {file}"))?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("malformed status line")?
        .parse()?)
}
