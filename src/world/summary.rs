//! The exact counts of a generated world, written as `world.json` and returned to the caller.

use serde::{Deserialize, Serialize};

use super::config::{PerSplit, WorldConfig};
use super::plan::World;
use super::tasks::Modality;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorldSummary {
    pub config: WorldConfig,
    /// One per task, in the order the datasets were generated.
    pub tasks: Vec<TaskSummary>,
    /// Image files written, each once.
    pub images: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSummary {
    /// The dataset name, as in `mbeir_<name>_<split>.jsonl`.
    pub name: String,
    pub task_id: u8,
    pub dataset_id: u32,
    pub query_modality: Modality,
    pub candidate_modality: Modality,
    /// Lines of `query/<split>/mbeir_<name>_<split>.jsonl`.
    pub queries: PerSplit<usize>,
    /// Lines of `qrels/<split>/mbeir_<name>_<split>_qrels.txt`.
    pub qrels: PerSplit<usize>,
    /// Lines of `cand_pool/local/mbeir_<name>_cand_pool.jsonl`.
    pub pool: usize,
}

impl WorldSummary {
    pub fn of(world: &World) -> WorldSummary {
        let tasks = world
            .datasets
            .iter()
            .map(|dataset| {
                let in_split = |split| dataset.queries.iter().filter(move |q| q.split == split);
                TaskSummary {
                    name: dataset.task.name().to_string(),
                    task_id: dataset.task.task_id(),
                    dataset_id: dataset.task.dataset_id(),
                    query_modality: dataset.task.query_modality(),
                    candidate_modality: dataset.task.candidate_modality(),
                    queries: PerSplit::from_fn(|split| in_split(split).count()),
                    qrels: PerSplit::from_fn(|split| {
                        in_split(split).map(|q| q.positives.len()).sum()
                    }),
                    pool: dataset.pool.len(),
                }
            })
            .collect();
        WorldSummary {
            config: world.config.clone(),
            tasks,
            images: world.images.len(),
        }
    }
}
