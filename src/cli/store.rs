//! `umrank store gc`: pruning the embedding store that scheduled runs share.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use umrank::embed::gc::{collect, GcPolicy};

/// Look after an embedding store: the vectors embed stages keep by content, shared by the runs that name the same
/// `store` (docs/mining.md#embedding-store).
#[derive(Debug, Args)]
pub struct StoreArgs {
    #[command(subcommand)]
    pub command: StoreCommand,
}

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    Gc(GcArgs),
}

/// Remove the chunks that no kept run uses, and the temporary files killed writers left.
///
/// Every embed run lists the chunks it read or wrote in its stage directory (store_refs.txt). A scheduled job
/// keeps the runs it may still retrain from (the one in service, the latest) and prunes the rest:
/// `umrank store gc /data/store --keep-runs runs/2026-12-06 runs/2026-12-07`. Files younger than --min-age are
/// kept whatever they are, so a run writing to the store meanwhile loses nothing: set it above the longest embed
/// stage. A run that reads a chunk while gc removes it embeds those vectors again; nothing wrong is ever read.
#[derive(Debug, Args)]
pub struct GcArgs {
    /// The store directory: `store` in [pipeline] or [embed], --store of `umrank embed`, or an embed stage's own
    /// `<stage>/store`.
    #[arg(value_name = "STORE")]
    pub store: PathBuf,

    /// Runs whose chunks are kept: embed stage directories, or any directory above them (a pipeline's workdir).
    /// Each must hold at least one store_refs*.txt.
    #[arg(long, required = true, num_args = 1.., value_name = "DIR")]
    pub keep_runs: Vec<PathBuf>,

    /// Keep every file younger than this (30s, 15m, 6h, 2d): chunks a running embed stage wrote but has not yet
    /// listed, and temporary files it is writing.
    #[arg(long, default_value = "6h", value_parser = parse_age, value_name = "AGE")]
    pub min_age: Duration,

    /// List what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn store(args: &StoreArgs) -> anyhow::Result<()> {
    match &args.command {
        StoreCommand::Gc(gc) => collect_garbage(gc),
    }
}

fn collect_garbage(args: &GcArgs) -> anyhow::Result<()> {
    let policy = GcPolicy {
        keep_runs: args.keep_runs.clone(),
        min_age: args.min_age,
        dry_run: args.dry_run,
    };
    let report = collect(&args.store, &policy)?;
    for path in &report.removed {
        println!("{}", path.display());
    }
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removed"
    };
    eprintln!(
        "{verb} {} files ({:.1} MiB); kept {} chunks the {} references files of the kept runs list and {} files \
         younger than {:?}",
        report.removed.len(),
        report.removed_bytes as f64 / (1024.0 * 1024.0),
        report.kept_referenced,
        report.reference_files,
        report.kept_young,
        args.min_age,
    );
    Ok(())
}

/// `30s`, `15m`, `6h`, `2d`, or `0`.
fn parse_age(text: &str) -> Result<Duration, String> {
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("`{text}` needs a unit: s, m, h or d (e.g. 6h)"))?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number
        .parse()
        .map_err(|_| format!("`{text}` does not start with a whole number"))?;
    let seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "unknown unit `{other}` in `{text}`: use s, m, h or d"
            ))
        }
    };
    Ok(Duration::from_secs(number.saturating_mul(seconds)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_take_a_unit() {
        assert_eq!(parse_age("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_age("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_age("0"), Ok(Duration::ZERO));
        assert!(parse_age("6").unwrap_err().contains("unit"));
        assert!(parse_age("6w").unwrap_err().contains("unknown unit"));
        assert!(parse_age("h").is_err());
    }
}
