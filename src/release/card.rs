//! The model card (README.md): YAML front matter that the Hugging Face Hub reads (base_model, license, tags,
//! datasets), how to load and score, the metrics table, and the training provenance from the manifests.

use std::fmt::Write;

use super::lineage::Lineage;
use super::manifest::ReleaseKind;
use super::metrics::MetricsTable;
use super::provenance::{Provenance, StageRecord};
use crate::models::adapters::lora::LoraConfig;
use crate::models::qwen2_vl::PairScore;

/// Where the license in the card came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LicenseSource {
    Configured,
    /// The base model's README.md front matter.
    BaseModel,
    /// Neither: the card says "other" and explains.
    Unknown,
}

/// Everything the card shows.
pub struct CardInput<'a> {
    pub kind: ReleaseKind,
    /// The model trained from; none for a random initialisation.
    pub base_model: Option<&'a str>,
    pub license: &'a str,
    pub license_source: LicenseSource,
    /// The adapter's settings, for adapter releases.
    pub lora: Option<&'a LoraConfig>,
    pub merged: bool,
    pub generated_preprocessor: bool,
    pub provenance: &'a Provenance,
    pub lineage: &'a Lineage,
    pub metrics: &'a MetricsTable,
    pub check: PairScore,
}

/// The README.md text.
pub fn render(input: &CardInput) -> String {
    let mut card = String::new();
    front_matter(&mut card, input);
    overview(&mut card, input);
    usage(&mut card, input);
    metrics(&mut card, input.metrics);
    training(&mut card, input);
    provenance(&mut card, input.provenance);
    lineage(&mut card, input.lineage);
    card
}

/// A YAML scalar: JSON string syntax is valid YAML double-quoted syntax, so any text is safe.
fn yaml(text: &str) -> String {
    serde_json::Value::String(text.to_string()).to_string()
}

fn tags(provenance: &Provenance) -> Vec<String> {
    let mut tags: Vec<String> = ["reranker", "multimodal", "umrank"]
        .iter()
        .map(|t| t.to_string())
        .collect();
    if let Some(objective) = provenance.objective_name() {
        tags.push(objective);
    }
    tags
}

fn front_matter(card: &mut String, input: &CardInput) {
    card.push_str("---\n");
    if let Some(base) = input.base_model {
        let _ = writeln!(card, "base_model: {}", yaml(base));
    }
    let _ = writeln!(card, "license: {}", yaml(input.license));
    let library = match input.kind {
        ReleaseKind::Adapter => "peft",
        ReleaseKind::Full => "transformers",
    };
    let _ = writeln!(card, "library_name: {library}\ntags:");
    for tag in tags(input.provenance) {
        let _ = writeln!(card, "- {}", yaml(&tag));
    }
    if input.provenance.datasets.is_empty() {
        card.push_str("datasets: []\n");
    } else {
        card.push_str("datasets:\n");
        for dataset in &input.provenance.datasets {
            let _ = writeln!(card, "- {}", yaml(dataset));
        }
    }
    card.push_str("---\n\n");
}

fn overview(card: &mut String, input: &CardInput) {
    let objective = input
        .provenance
        .objective_name()
        .unwrap_or_else(|| "an unrecorded".to_string());
    let trained = format!(
        "A pointwise (instruction, query, document) reranker trained by umrank with the **{objective}** objective \
         (Dai et al., arXiv 2510.14824)."
    );
    match (input.kind, input.base_model) {
        (ReleaseKind::Adapter, base) => {
            let _ = writeln!(
                card,
                "# Multimodal reranker: LoRA adapter for `{}`\n\n{trained} This directory holds the adapter in PEFT \
                 format (`adapter_config.json`, `adapter_model.safetensors`) with the base model's configuration, \
                 tokenizer, chat template and image processor{}.",
                base.unwrap_or("an unnamed base"),
                if input.merged {
                    "; `merged/` holds the base weights with the adapter merged in, loadable without peft"
                } else {
                    ""
                }
            );
        }
        (ReleaseKind::Full, Some(base)) => {
            let _ = writeln!(
                card,
                "# Multimodal reranker fine-tuned from `{base}`\n\n{trained} Every weight was tuned; this directory \
                 is a complete model (configuration, weights, tokenizer, image processor) that loads without a base."
            );
        }
        (ReleaseKind::Full, None) => {
            let init = input
                .provenance
                .train
                .config_value("init")
                .map_or("an unrecorded architecture".to_string(), compact);
            let _ = writeln!(
                card,
                "# Multimodal reranker trained from scratch\n\n{trained} The model started from a random \
                 initialisation ({init}); this directory is the complete trained model (configuration, weights, \
                 tokenizer, image processor)."
            );
        }
    }
    if input.generated_preprocessor {
        card.push_str(
            "\nThe base model directory had no `preprocessor_config.json`; umrank wrote a Qwen2-VL image processor \
             config matching the vision tower, with images between 4 and 1280 merged tokens.\n",
        );
    }
    match input.license_source {
        LicenseSource::Configured => {}
        LicenseSource::BaseModel => {
            card.push_str("\nThe license is the base model's, from its model card.\n")
        }
        LicenseSource::Unknown => card.push_str(
            "\nLicense: neither the release config nor the base model's card names a license, so it is given as \
             `other`. Check the base model's terms before redistributing.\n",
        ),
    }
    card.push('\n');
}

fn usage(card: &mut String, input: &CardInput) {
    let umrank = match input.kind {
        ReleaseKind::Adapter => format!(
            "`umrank score --model BASE --adapter DIR --pairs PAIRS.jsonl` scores pairs{}. With transformers and \
             peft: `scripts/load_with_peft.py` in the umrank repository loads the base with this adapter and scores \
             a pair.",
            if input.merged {
                ", and `umrank score --model DIR/merged` does the same without the adapter"
            } else {
                ""
            }
        ),
        ReleaseKind::Full => {
            "`umrank score --model DIR --pairs PAIRS.jsonl` scores pairs; transformers loads the directory with \
             `from_pretrained`."
                .to_string()
        }
    };
    let _ = writeln!(
        card,
        "## Usage\n\nThe score of a pair is `p_yes = sigmoid(z_yes - z_no)`, from the logits of the tokens `yes` and \
         `no` at the last position of this prompt (Qwen chat format):\n\n```text\n<|im_start|>system\nJudge whether \
         the Document meets the requirements based on the Query and the Instruct provided. Note that the answer can \
         only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n<Instruct>: {{instruction}}<Query>:{{query image}}\
         {{query text}}\n<Document>:{{document image}}{{document text}}<|im_end|>\n<|im_start|>assistant\n```\n\n\
         With umrank: `umrank verify DIR` checks every file's hash and scores a built-in pair; {umrank}\n\n\
         The built-in check pair (see `release.json`) scored p_yes = {:.6} (z_yes = {:.6}, z_no = {:.6}) when this \
         release was made.\n",
        input.check.p_yes,
        input.check.z_yes,
        input.check.z_no
    );
}

fn metrics(card: &mut String, table: &MetricsTable) {
    card.push_str("## Metrics\n\n");
    if table.rows.is_empty() && table.notes.is_empty() {
        card.push_str("No evaluation metrics: no eval stage was given to the release.\n");
    } else if table.rows.is_empty() {
        card.push_str("No evaluation metrics could be read.\n");
    } else {
        card.push_str(
            "Averages over the evaluated queries (`mean`, what trec_eval reports) and over tasks (`macro`).\n\n",
        );
        let columns = &table.columns;
        let _ = writeln!(
            card,
            "| eval stage | run | average | {} |",
            columns.join(" | ")
        );
        let _ = writeln!(card, "|---|---|---|{}", "---:|".repeat(columns.len()));
        for row in &table.rows {
            let cells: Vec<String> = columns
                .iter()
                .map(|c| row.values.get(c).map_or("".into(), |v| format!("{v:.4}")))
                .collect();
            let _ = writeln!(
                card,
                "| {} | {} | {} | {} |",
                row.stage,
                row.run,
                row.average,
                cells.join(" | ")
            );
        }
        if !table.tests.is_empty() {
            card.push_str("\nPaired randomisation tests (mean difference and p-value):\n\n");
            for test in &table.tests {
                let _ = writeln!(card, "- {test}");
            }
        }
    }
    for note in &table.notes {
        let _ = writeln!(card, "\n{note}.");
    }
    card.push('\n');
}

fn compact(value: &serde_json::Value) -> String {
    format!("`{value}`")
}

fn training(card: &mut String, input: &CardInput) {
    let provenance = input.provenance;
    let train = &provenance.train;
    card.push_str("## Training\n\n");
    let objective = provenance
        .objective()
        .map_or("not recorded in the train config".to_string(), compact);
    let _ = writeln!(card, "- Objective: {objective}");
    let _ = writeln!(card, "- Seed: {}", train.seed);
    match input.lora {
        Some(lora) => {
            let _ = writeln!(
                card,
                "- LoRA: rank {}, alpha {}, on {}{}",
                lora.r,
                lora.alpha,
                lora.target_modules.join(", "),
                if lora.use_rslora { " (rsLoRA)" } else { "" }
            );
        }
        None => card.push_str("- Tuning: every weight (full fine-tuning)\n"),
    }
    let _ = writeln!(card, "- Train config: {}", compact(&train.config));
    let _ = writeln!(card, "- Mining model: {}", mining_model(provenance));
    for (kind, label) in [("mine", "Negatives"), ("shards", "Shards")] {
        match provenance.stage_of_kind(kind) {
            Some(stage) => {
                let _ = writeln!(card, "- {label} config: {}", compact(&stage.config));
            }
            None => {
                let _ = writeln!(
                    card,
                    "- {label} config: no `{kind}` stage upstream of training"
                );
            }
        }
    }
    card.push('\n');
}

/// The embedder the negatives were mined with: the embed stage's `model` directory, or the stage it took its
/// model from (`model_from`).
fn mining_model(provenance: &Provenance) -> String {
    let Some(embed) = provenance.stage_of_kind("embed") else {
        return "not recorded (no `embed` stage upstream of training)".to_string();
    };
    if let Some(model) = embed.config_value("model").filter(|m| !m.is_null()) {
        return compact(model);
    }
    match embed.config_value("model_from").and_then(|m| m.as_str()) {
        Some(stage) => format!("the model trained by stage `{stage}`"),
        None => "not recorded in the embed config".to_string(),
    }
}

fn provenance(card: &mut String, provenance: &Provenance) {
    card.push_str(
        "## Provenance\n\nThe stages this release was made from, as their manifests record them. `release.json` \
         lists every file of this directory with its sha256, the base model's weight hashes, and each stage's \
         output hashes.\n\n| stage | kind | seed | config sha256 | fingerprint |\n|---|---|---:|---|---|\n",
    );
    let all = std::iter::once(&provenance.train)
        .chain(&provenance.upstream)
        .chain(&provenance.evals);
    for stage in all {
        stage_row(card, stage);
    }
    for dir in &provenance.missing {
        let _ = writeln!(
            card,
            "\nUpstream stage directory {} was named by a manifest but could not be read.",
            dir.display()
        );
    }
}

fn stage_row(card: &mut String, stage: &StageRecord) {
    let _ = writeln!(
        card,
        "| {} | {} | {} | `{}` | `{}` |",
        stage.name,
        stage.kind,
        stage.seed,
        stage.config_hash,
        stage.fingerprints.join(", ")
    );
}

/// The data snapshot, the release replaced and what changed in the data since.
fn lineage(card: &mut String, lineage: &Lineage) {
    card.push_str("\n## Lineage\n\n");
    match &lineage.data {
        Some(data) => {
            let _ = writeln!(
                card,
                "Data snapshot: ingest fingerprint `{}`: {} queries, {} documents, {} judgements.",
                data.fingerprints.join(", "),
                data.queries,
                data.documents,
                data.judgements
            );
        }
        None => {
            card.push_str("Data snapshot: not recorded (no ingest stage upstream of training).\n")
        }
    }
    let Some(previous) = &lineage.previous else {
        card.push_str("\nPrevious release: none (no promotion gate).\n");
        return;
    };
    let _ = writeln!(
        card,
        "\nPrevious release: {} (release.json sha256 `{}`).",
        previous.path.display(),
        previous.sha256
    );
    match &lineage.changes {
        Some(changes) => {
            let how = if changes.exact {
                "ids added and removed"
            } else {
                "net change of the recorded counts: the previous data could not be read"
            };
            let _ = writeln!(
                card,
                "\nChanged since ({how}):\n\n| | added | removed |\n|---|---:|---:|"
            );
            for (what, change) in [
                ("queries", changes.queries),
                ("documents", changes.documents),
                ("judgements", changes.judgements),
            ] {
                let _ = writeln!(card, "| {what} | {} | {} |", change.added, change.removed);
            }
        }
        None => card.push_str(
            "\nChanged since: unknown (the previous release recorded no data snapshot).\n",
        ),
    }
}
