//! The run directory's layout: the name under which each stage writes each of its outputs.
//!
//! A file's name is part of the contract between the stage that writes it and the stages that read it, like its
//! schema. Declaring every name here, once, lets a downstream stage find an upstream output without importing
//! the upstream stage, so the stage modules depend on each other in data-flow order only.

/// Written by every stage that keeps statistics: its counters as JSON (a shard writes
/// `stats.part-I-of-N.json`, merged into this name when the last shard completes).
pub const STATS_JSON: &str = "stats.json";

/// The `world` stage's synthetic corpus.
pub mod world {
    /// An M-BEIR directory tree, as an ingest stage reads one.
    pub const MBEIR: &str = "mbeir";
}

/// The `ingest` stage's datasets; each directory holds the dataset of the same schema kind.
pub mod ingest {
    pub const CORPUS: &str = "corpus";
    pub const QUERIES: &str = "queries";
    pub const QRELS: &str = "qrels";
    pub const IMAGES: &str = "images";
}

/// The `embedder` stage (the first-stage retriever's trainer).
pub mod embedder {
    /// The trained dual encoder, as a model directory that an embed stage's `model_from` loads.
    pub const MODEL: &str = "model";
    /// One JSON line per epoch.
    pub const TRAIN_LOG: &str = "train_log.jsonl";
}

/// The `embed` stage's datasets, both of schema kind `embeddings`.
pub mod embed {
    pub const DOC_EMBEDDINGS: &str = "doc_embeddings";
    pub const QUERY_EMBEDDINGS: &str = "query_embeddings";
}

/// The `mine` stage's datasets.
pub mod mine {
    pub const CANDIDATES: &str = "candidates";
    pub const NEGATIVES: &str = "negatives";
    /// One row per query: how many negatives it got and why some are missing (schema kind `mine_stats`).
    pub const QUERY_STATS: &str = "query_stats";
}

/// The `train` stage (the reranker's trainer).
pub mod train {
    /// The trained LoRA adapter, in PEFT format.
    pub const ADAPTER: &str = "adapter";
    /// A fully fine-tuned model, as a Hugging Face model directory.
    pub const MODEL: &str = "model";
    /// A fully fine-tuned model's weights, next to its config.json.
    pub const FULL_WEIGHTS: &str = "model.safetensors";
    /// Trained weights that are not LoRA adapters (a tuned vision tower, an unfrozen LM head), written next to
    /// the PEFT adapter under their checkpoint names. PEFT itself has no place for them and ignores the file.
    pub const EXTRA_WEIGHTS: &str = "extra_weights.safetensors";
    /// One JSON line per logged step.
    pub const TRAIN_LOG: &str = "train_log.jsonl";
    /// Throughput measurements, kept apart from the log because they vary from run to run.
    pub const TRAIN_TIMING: &str = "train_timing.jsonl";
    /// Resumable checkpoints.
    pub const CHECKPOINTS: &str = "checkpoints";
    /// The training charts.
    pub const PLOTS: &str = "plots";
    /// The loss chart, under [`PLOTS`].
    pub const LOSS_PLOT: &str = "loss.png";
    /// The weights chart, under [`PLOTS`].
    pub const WEIGHTS_PLOT: &str = "weights.png";
}

/// The `eval` stage.
pub mod eval {
    /// Per-candidate run rows (schema kind `run`).
    pub const RUN: &str = "run";
    /// Per-query metrics (schema kind `metrics`).
    pub const METRICS: &str = "metrics";
    /// A shard's part of the summary (`summary.part-I-of-N.json`: the model, the pairs it scored, the seed of the
    /// tests), which the merge after a job array reads with the datasets to write the files below.
    pub const PART_SUMMARY: &str = "summary";
    /// The retriever's ranking as a TREC run.
    pub const FIRST_STAGE_TREC: &str = "first_stage.trec";
    /// The reranker's ranking as a TREC run.
    pub const RERANKED_TREC: &str = "reranked.trec";
    /// The summary: every metric of both runs, the comparisons and the scored model.
    pub const METRICS_JSON: &str = "metrics.json";
}

/// The `report` stage.
pub mod report {
    pub const REPORT_MD: &str = "report.md";
    pub const REPORT_HTML: &str = "report.html";
    /// The report's PNGs, referenced relative to the report.
    pub const PLOTS: &str = "plots";
    /// The rerankers' figures over seeds, when the run trained them over several.
    pub const SEEDS_JSON: &str = "seeds.json";
}

/// The `release` stage.
pub mod release {
    /// The release directory.
    pub const MODEL: &str = "model";
    /// The release's manifest, in the release directory.
    pub const MANIFEST: &str = "release.json";
    /// The base weights with the adapter merged in, when the release has them.
    pub const MERGED: &str = "merged";
}
