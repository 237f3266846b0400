use std::path::PathBuf;

/// Show what a dataset or a stage manifest holds: schema with field docs, row count and first rows; or a stage's
/// config, inputs and outputs with their hashes.
///
/// PATH is a dataset directory (its part files are read as one dataset), a single Parquet file, a manifest*.json,
/// or a stage directory (its manifest.json is shown).
#[derive(Debug, clap::Args)]
pub struct InspectArgs {
    /// Dataset directory, Parquet file, manifest file, or stage directory.
    pub path: PathBuf,

    /// Print JSON instead of the human layout.
    #[arg(long)]
    pub json: bool,

    /// How many rows of a dataset to show.
    #[arg(short = 'n', long, default_value_t = 5)]
    pub rows: usize,

    /// For an images dataset: the pixel bounds its image token counts are computed at (a train stage's
    /// `min_pixels`) [default: 3136, Qwen2-VL's processor].
    #[arg(long, value_name = "PIXELS")]
    pub min_pixels: Option<u64>,

    /// For an images dataset: the upper pixel bound (a train stage's `max_pixels`) [default: 1003520].
    #[arg(long, value_name = "PIXELS")]
    pub max_pixels: Option<u64>,
}

pub fn inspect(args: &InspectArgs) -> anyhow::Result<()> {
    let defaults = umrank::media::preprocess::Qwen2VlParams::default();
    let bounds = (
        args.min_pixels.unwrap_or(defaults.min_pixels),
        args.max_pixels.unwrap_or(defaults.max_pixels),
    );
    let inspected = umrank::inspect::inspect(&args.path, args.rows, bounds)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&inspected.to_json()?)?);
    } else {
        print!("{}", inspected.render());
    }
    Ok(())
}
