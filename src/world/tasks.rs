//! The five retrieval tasks of the world, and how each turns a family into one query and its candidates.
//!
//! Every task puts a family's centre and all its near misses into its pool, with the same wording or rendering
//! style, so that a near miss differs from the positive only in the one attribute that makes it wrong.

use rand::seq::SliceRandom;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::caption::{caption, instruction, CaptionStyle, INSTRUCTION_TEMPLATES};
use super::config::Split;
use super::family::Family;
use super::plan::PlacedScene;
pub use crate::modality::Modality;

/// A task of the world; each is one M-BEIR dataset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Caption -> the scene's image.
    TextToImage,
    /// Caption -> a paraphrase of the same scene.
    TextToText,
    /// Image -> its caption.
    ImageToText,
    /// Image -> the same scene rendered in another style.
    ImageToImage,
    /// Image of a near miss + an edit instruction -> the image of the edited scene (the centre).
    EditToImage,
}

impl Task {
    pub const ALL: [Task; 5] = [
        Task::TextToImage,
        Task::TextToText,
        Task::ImageToText,
        Task::ImageToImage,
        Task::EditToImage,
    ];

    /// The M-BEIR task id (M-BEIR numbers its eight query -> candidate modality pairs 0 to 7).
    pub fn task_id(self) -> u8 {
        match self {
            Task::TextToImage => 0,
            Task::TextToText => 1,
            Task::ImageToText => 3,
            Task::ImageToImage => 4,
            Task::EditToImage => 7,
        }
    }

    /// 100 + task id: M-BEIR's own datasets use 0 to 9, so world ids can sit next to real ones.
    pub fn dataset_id(self) -> u32 {
        100 + u32::from(self.task_id())
    }

    /// The dataset name, as it appears in file names (`mbeir_<name>_<split>.jsonl`).
    pub fn name(self) -> &'static str {
        match self {
            Task::TextToImage => "world_t2i",
            Task::TextToText => "world_t2t",
            Task::ImageToText => "world_i2t",
            Task::ImageToImage => "world_i2i",
            Task::EditToImage => "world_it2i",
        }
    }

    pub fn query_modality(self) -> Modality {
        match self {
            Task::TextToImage | Task::TextToText => Modality::Text,
            Task::ImageToText | Task::ImageToImage => Modality::Image,
            Task::EditToImage => Modality::ImageText,
        }
    }

    pub fn candidate_modality(self) -> Modality {
        match self {
            Task::TextToText | Task::ImageToText => Modality::Text,
            Task::TextToImage | Task::ImageToImage | Task::EditToImage => Modality::Image,
        }
    }

    /// Retrieval instructions, as M-BEIR's `query_instructions.tsv` gives them (four per dataset).
    pub fn prompts(self) -> [&'static str; 4] {
        match self {
            Task::TextToImage => [
                "Retrieve the image that matches this description.",
                "Find the picture described by the caption.",
                "Identify the image showing exactly these shapes.",
                "Which image shows the shapes, colours, sizes and positions described?",
            ],
            Task::TextToText => [
                "Retrieve a paraphrase of this description.",
                "Find another description of the same scene.",
                "Which caption describes the same shapes in other words?",
                "Retrieve the text that describes the same picture.",
            ],
            Task::ImageToText => [
                "Retrieve the caption that describes this image.",
                "Find the description of the shapes in this picture.",
                "Which text describes exactly what this image shows?",
                "Identify the caption matching the image.",
            ],
            Task::ImageToImage => [
                "Retrieve another rendering of the same scene.",
                "Find the image that shows the same shapes, colours, sizes and positions.",
                "Which picture shows the same scene as this one, whatever its background?",
                "Identify the image with identical content, ignoring background and outlines.",
            ],
            Task::EditToImage => [
                "Retrieve the image that results from applying the instruction to this image.",
                "Find the picture after the requested change.",
                "Apply the edit to the image and retrieve the result.",
                "Which image shows this scene after the described modification?",
            ],
        }
    }
}

/// One task's data: its queries over all splits (train, then val, then test) and its single pool, which holds
/// each family's members contiguously, in a shuffled order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dataset {
    pub task: Task,
    pub queries: Vec<Query>,
    pub pool: Vec<Candidate>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    /// `<dataset_id>:<n>`, n counting from 1 over all splits.
    pub qid: String,
    pub split: Split,
    /// Index into the world's families.
    pub family: usize,
    pub text: Option<String>,
    /// Index into the world's images.
    pub image: Option<usize>,
    /// The scene the query shows or describes; for an edit query, the scene before the edit.
    pub scene: usize,
    /// Indices into the dataset's pool.
    pub positives: Vec<usize>,
    /// Indices into the dataset's pool: the family's near misses.
    pub negatives: Vec<usize>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// `<dataset_id>:<n>`, n counting from 1 in pool order.
    pub did: String,
    pub text: Option<String>,
    /// Index into the world's images.
    pub image: Option<usize>,
    /// The scene the candidate shows or describes.
    pub scene: usize,
}

/// Builds `task`'s dataset: one query per family, the family's members as candidates.
pub fn build_dataset<R: Rng>(
    task: Task,
    scenes: &[PlacedScene],
    families: &[Family],
    rng: &mut R,
) -> Dataset {
    let mut queries = Vec::with_capacity(families.len());
    let mut pool = Vec::new();
    for (index, family) in families.iter().enumerate() {
        let wording = Wording::sample(task, family, rng);
        // Shuffled so that a did's rank within its family says nothing about relevance (ties, for instance, are
        // broken by did).
        let mut members: Vec<usize> = family.members().collect();
        members.shuffle(rng);
        let (mut positives, mut negatives) = (Vec::new(), Vec::new());
        for member in members {
            if member == family.centre {
                positives.push(pool.len());
            } else {
                negatives.push(pool.len());
            }
            pool.push(Candidate {
                did: format!("{}:{}", task.dataset_id(), pool.len() + 1),
                text: wording.candidate_text(&scenes[member]),
                image: wording.candidate_image(&scenes[member]),
                scene: member,
            });
        }
        let (text, image, scene) = wording.query(family, scenes);
        queries.push(Query {
            qid: format!("{}:{}", task.dataset_id(), queries.len() + 1),
            split: family.split,
            family: index,
            text,
            image,
            scene,
            positives,
            negatives,
        });
    }
    Dataset {
        task,
        queries,
        pool,
    }
}

/// The random choices one family needs in one task, and what they make of its query and candidates.
enum Wording {
    /// A caption of the centre asks for its canonical image.
    CaptionToImage { query: CaptionStyle },
    /// A caption of the centre asks for its caption in another style.
    Paraphrase {
        query: CaptionStyle,
        candidates: CaptionStyle,
    },
    /// The centre's canonical image asks for its caption.
    ImageToCaption { candidates: CaptionStyle },
    /// The centre's canonical image asks for its alternative rendering (so the positive is not the query's own
    /// file).
    ImageToImage,
    /// A near miss's canonical image and the instruction that undoes its edit ask for the centre's image.
    Edit { source: usize, instruction: String },
}

impl Wording {
    fn sample<R: Rng>(task: Task, family: &Family, rng: &mut R) -> Wording {
        match task {
            Task::TextToImage => Wording::CaptionToImage {
                query: CaptionStyle::sample(rng),
            },
            Task::TextToText => {
                let query = CaptionStyle::sample(rng);
                Wording::Paraphrase {
                    query,
                    candidates: query.paraphrase(rng),
                }
            }
            Task::ImageToText => Wording::ImageToCaption {
                candidates: CaptionStyle::sample(rng),
            },
            Task::ImageToImage => Wording::ImageToImage,
            Task::EditToImage => {
                // Every size has near misses, so the range is never empty.
                let near = &family.near_misses[rng.random_range(0..family.near_misses.len())];
                let template = rng.random_range(0..INSTRUCTION_TEMPLATES);
                Wording::Edit {
                    source: near.scene,
                    instruction: instruction(&near.edit.inverse(), template),
                }
            }
        }
    }

    fn candidate_text(&self, member: &PlacedScene) -> Option<String> {
        match self {
            Wording::Paraphrase { candidates, .. } | Wording::ImageToCaption { candidates } => {
                Some(caption(&member.scene, candidates))
            }
            Wording::CaptionToImage { .. } | Wording::ImageToImage | Wording::Edit { .. } => None,
        }
    }

    fn candidate_image(&self, member: &PlacedScene) -> Option<usize> {
        match self {
            Wording::CaptionToImage { .. } | Wording::Edit { .. } => Some(member.canonical_image),
            Wording::ImageToImage => Some(member.alternative_image),
            Wording::Paraphrase { .. } | Wording::ImageToCaption { .. } => None,
        }
    }

    /// The query's text, image and scene.
    fn query(
        &self,
        family: &Family,
        scenes: &[PlacedScene],
    ) -> (Option<String>, Option<usize>, usize) {
        let centre = &scenes[family.centre];
        match self {
            Wording::CaptionToImage { query } | Wording::Paraphrase { query, .. } => {
                (Some(caption(&centre.scene, query)), None, family.centre)
            }
            Wording::ImageToCaption { .. } | Wording::ImageToImage => {
                (None, Some(centre.canonical_image), family.centre)
            }
            Wording::Edit {
                source,
                instruction,
            } => (
                Some(instruction.clone()),
                Some(scenes[*source].canonical_image),
                *source,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::{plan, WorldConfig};
    use std::collections::HashSet;

    #[test]
    fn tasks_have_distinct_ids_and_names() {
        let ids: HashSet<u32> = Task::ALL.iter().map(|t| t.dataset_id()).collect();
        let names: HashSet<&str> = Task::ALL.iter().map(|t| t.name()).collect();
        assert_eq!((ids.len(), names.len()), (Task::ALL.len(), Task::ALL.len()));
        assert_eq!(Task::EditToImage.task_id(), 7);
        assert_eq!(
            serde_json::to_string(&Modality::ImageText).unwrap(),
            "\"image,text\""
        );
    }

    #[test]
    fn positives_sit_anywhere_in_their_family_block() {
        let world = plan(&WorldConfig::default()).unwrap();
        let per_family = 1 + world.config.size.near_misses();
        let offsets: HashSet<usize> = world
            .datasets
            .iter()
            .flat_map(|d| d.queries.iter().map(|q| q.positives[0] % per_family))
            .collect();
        assert_eq!(offsets.len(), per_family);
    }

    #[test]
    fn edit_queries_show_a_near_miss_and_ask_for_the_centre() {
        let world = plan(&WorldConfig::default()).unwrap();
        let dataset = &world.datasets[4];
        assert_eq!(dataset.task, Task::EditToImage);
        for query in &dataset.queries {
            let family = &world.families[query.family];
            let near = family
                .near_misses
                .iter()
                .find(|n| n.scene == query.scene)
                .unwrap();
            assert_eq!(query.image, Some(world.scenes[near.scene].canonical_image));
            let positive = &dataset.pool[query.positives[0]];
            assert_eq!(positive.scene, family.centre);
            let text = query.text.as_deref().unwrap();
            let undo = near.edit.inverse();
            assert!((0..INSTRUCTION_TEMPLATES).any(|t| instruction(&undo, t) == text));
        }
    }
}
