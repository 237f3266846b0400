//! Command-line parsing and dispatch. Library errors become `anyhow` errors here, printed with their causes.

mod data_parallel;
mod demo;
mod embedder;
mod eval;
mod inspect;
mod mine;
mod release;
mod report;
mod run;
mod score;
mod shards;
mod stages;
mod store;
mod train;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{ArgAction, Parser, Subcommand};
use tracing_subscriber::EnvFilter;

use umrank::pipeline::RejectPolicy;
use umrank::progress;
use umrank::release::{GateRefused, GATE_REFUSED_EXIT};

/// Build training corpora for multimodal LLM rerankers, train them (SFT, CL or the unified objectives), evaluate
/// them and release them.
///
/// Every stage reads and writes Parquet datasets under a work directory, records a manifest, and is skipped when
/// it is already up to date; a killed run, started again, resumes where it stopped.
#[derive(Debug, Parser)]
#[command(
    name = "umrank",
    version,
    propagate_version = true,
    max_term_width = 110
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,

    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, clap::Args)]
pub struct Global {
    /// Largest share of a stage's input records that may be rejected (bad rows, missing images) before the stage
    /// fails. Rejected records are listed with their reason in the stage's rejects.parquet either way.
    #[arg(long, global = true, default_value_t = 0.01, value_name = "F", value_parser = parse_fraction)]
    pub max_reject_fraction: f64,

    /// Fail a stage at its first rejected record.
    #[arg(long, global = true)]
    pub strict: bool,

    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Only warnings and errors; no progress bars.
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

impl Global {
    pub fn policy(&self) -> RejectPolicy {
        RejectPolicy {
            max_fraction: self.max_reject_fraction,
            strict: self.strict,
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Run(run::RunArgs),
    Demo(run::DemoArgs),
    Inspect(inspect::InspectArgs),
    World(stages::WorldArgs),
    Ingest(stages::IngestArgs),
    Embedder(embedder::EmbedderArgs),
    Embed(stages::EmbedArgs),
    Mine(mine::MineArgs),
    Score(score::ScoreArgs),
    Train(Box<train::TrainArgs>),
    Release(release::ReleaseArgs),
    Verify(release::VerifyArgs),
    Shards(shards::ShardsArgs),
    Export(shards::ExportArgs),
    Eval(eval::EvalArgs),
    Report(report::ReportArgs),
    Store(store::StoreArgs),
}

fn parse_fraction(s: &str) -> Result<f64, String> {
    let f: f64 = s.parse().map_err(|_| format!("`{s}` is not a number"))?;
    if (0.0..=1.0).contains(&f) {
        Ok(f)
    } else {
        Err(format!("{f} is not between 0 and 1"))
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli.global);
    let result = match &cli.command {
        Command::Run(args) => run::run(args, &cli.global),
        Command::Demo(args) => run::demo(args, &cli.global),
        Command::Inspect(args) => inspect::inspect(args),
        Command::World(args) => stages::world(args, &cli.global),
        Command::Ingest(args) => stages::ingest(args, &cli.global),
        Command::Embedder(args) => embedder::embedder(args, &cli.global),
        Command::Embed(args) => stages::embed(args, &cli.global),
        Command::Mine(args) => mine::mine(args, &cli.global),
        Command::Score(args) => score::score_pairs(args),
        Command::Train(args) => train::train(args, &cli.global),
        Command::Release(args) => release::release(args, &cli.global),
        Command::Verify(args) => release::verify_release(args),
        Command::Shards(args) => shards::shards(args, &cli.global),
        Command::Export(args) => shards::export_shards(args),
        Command::Eval(args) => eval::eval(args),
        Command::Report(args) => report::report(args),
        Command::Store(args) => store::store(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            // A refused promotion is an outcome a scheduler acts on, not a failure of the run.
            if e.chain().any(|cause| cause.is::<GateRefused>()) {
                ExitCode::from(GATE_REFUSED_EXIT)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn init_logging(global: &Global) {
    progress::set_quiet(global.quiet);
    let level = match (global.quiet, global.verbose) {
        (true, _) => "warn",
        (false, 0) => "info",
        (false, 1) => "debug",
        (false, _) => "trace",
    };
    let filter = EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| EnvFilter::new(format!("umrank={level},warn")));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(progress::LogWriter)
        // Colour codes only where a person watches; a log file or a pod's log gets plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
}

/// The error and its causes on one line. Library errors already spell out their source, so a cause whose text is
/// already in the message is not repeated.
fn describe(e: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}
