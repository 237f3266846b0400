//! M-BEIR's query instructions: a TSV of prompts per (query modality, candidate modality, dataset).

use std::collections::HashMap;
use std::path::Path;

use super::lines::read_lines;
use super::records::Modality;
use super::IngestError;
use crate::shard::stable_hash;

/// Prompts keyed by dataset id and modality pair.
#[derive(Debug, Default)]
pub struct Instructions {
    by_task: HashMap<(String, Modality, Modality), Vec<String>>,
    by_dataset: HashMap<String, Vec<String>>,
    /// Dataset names by dataset id (`9` -> `CIRR`), as the TSV spells them.
    names: HashMap<String, String>,
}

impl Instructions {
    /// Reads the TSV: a header, then rows of query_modality, cand_modality, dataset name, dataset_id and one or
    /// more prompts. A malformed row is an error naming its line: instructions are configuration, not data, so a
    /// broken file must be fixed rather than half used.
    pub fn load(path: &Path, display: &str) -> Result<Self, IngestError> {
        let mut out = Self::default();
        for (i, line) in read_lines(path)?.into_iter().enumerate() {
            let text = line.text.map_err(|e| IngestError::Format {
                file: display.to_string(),
                line: line.number,
                message: e,
            })?;
            if i == 0 {
                continue;
            }
            let bad = |message: String| IngestError::Format {
                file: display.to_string(),
                line: line.number,
                message,
            };
            let cols: Vec<&str> = text.split('\t').map(str::trim).collect();
            if cols.len() < 5 {
                return Err(bad(format!(
                    "expected query_modality, cand_modality, dataset, dataset_id and at least one prompt; got {} columns",
                    cols.len()
                )));
            }
            let query: Modality = cols[0].parse().map_err(bad)?;
            let cand: Modality = cols[1].parse().map_err(|e: String| IngestError::Format {
                file: display.to_string(),
                line: line.number,
                message: e,
            })?;
            let prompts: Vec<String> = cols[4..]
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| p.to_string())
                .collect();
            if prompts.is_empty() {
                return Err(IngestError::Format {
                    file: display.to_string(),
                    line: line.number,
                    message: "no prompt on this row".into(),
                });
            }
            let dataset_id = cols[3].to_string();
            out.names
                .entry(dataset_id.clone())
                .or_insert_with(|| cols[2].to_string());
            out.by_dataset
                .entry(dataset_id.clone())
                .or_insert_with(|| prompts.clone());
            out.by_task.insert((dataset_id, query, cand), prompts);
        }
        Ok(out)
    }

    /// The name of the dataset with this id (the prefix of its qids and dids), if the TSV lists it.
    pub fn dataset_name(&self, dataset_id: &str) -> Option<&str> {
        self.names
            .get(dataset_id)
            .map(String::as_str)
            .filter(|name| !name.is_empty())
    }

    /// The instruction for a query: one of its dataset's prompts, chosen by a hash of the seed and qid so that the
    /// choice is the same on every run and in every shard.
    pub fn pick(
        &self,
        seed: u64,
        qid: &str,
        query: Modality,
        cand: Option<Modality>,
    ) -> Option<String> {
        let dataset_id = qid.split(':').next()?;
        let prompts = cand
            .and_then(|c| self.by_task.get(&(dataset_id.to_string(), query, c)))
            .or_else(|| self.by_dataset.get(dataset_id))?;
        let at = stable_hash(format!("{seed}:{qid}").as_bytes()) % prompts.len() as u64;
        prompts.get(at as usize).cloned()
    }
}
