//! The whole world in memory, before anything is written: scenes, families, images and the five datasets.
//!
//! Planning draws every random choice from one ChaCha8 stream in a fixed order, and rendering draws none, so the
//! plan (and hence every output byte) is a function of the config alone.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::config::{Split, WorldConfig};
use super::error::WorldError;
use super::family::{sample_families, Family};
use super::render::{RenderStyle, ALTERNATIVE_BACKGROUNDS, MAX_JITTER_PER_MILLE, OUTLINES};
use super::scene::Scene;
use super::tasks::{build_dataset, Dataset, Task};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct World {
    pub config: WorldConfig,
    /// Indexed by scene id; no two are equal.
    pub scenes: Vec<PlacedScene>,
    pub families: Vec<Family>,
    /// Indexed by image id; each is written once, however many datasets use it.
    pub images: Vec<ImageSpec>,
    /// One per task, in [`Task::ALL`] order.
    pub datasets: Vec<Dataset>,
}

/// A scene with where it lives in the world.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PlacedScene {
    pub scene: Scene,
    pub split: Split,
    /// Index into the world's families.
    pub family: usize,
    /// Index into the world's images: the scene drawn in [`RenderStyle::canonical`].
    pub canonical_image: usize,
    /// Index into the world's images: the scene drawn in its family's alternative style.
    pub alternative_image: usize,
}

/// An image to render: which scene, in which style, and where it goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageSpec {
    pub scene: usize,
    pub style: RenderStyle,
    /// Relative to the world's root, with `/` separators (as M-BEIR records paths).
    pub path: String,
}

/// Plans the world `config` describes.
pub fn plan(config: &WorldConfig) -> Result<World, WorldError> {
    config.validate()?;
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    let (scenes, families) = sample_families(config.size, &mut rng)?;
    let (scenes, images) = place_scenes(scenes, &families, &mut rng);
    let datasets = Task::ALL
        .iter()
        .map(|&task| build_dataset(task, &scenes, &families, &mut rng))
        .collect();
    Ok(World {
        config: config.clone(),
        scenes,
        families,
        images,
        datasets,
    })
}

/// Gives every scene its split, family and two images. A family shares one alternative style, so its near misses
/// differ from its centre in the alternative rendering exactly as in the canonical one.
fn place_scenes<R: Rng>(
    scenes: Vec<Scene>,
    families: &[Family],
    rng: &mut R,
) -> (Vec<PlacedScene>, Vec<ImageSpec>) {
    let mut owner = vec![0; scenes.len()];
    let mut styles = Vec::with_capacity(families.len());
    for (index, family) in families.iter().enumerate() {
        for member in family.members() {
            owner[member] = index;
        }
        styles.push(alternative_style(rng));
    }
    let mut images = Vec::with_capacity(2 * scenes.len());
    let placed = scenes
        .into_iter()
        .enumerate()
        .map(|(id, scene)| {
            let family = owner[id];
            let split = families[family].split;
            let canonical_image = images.len();
            images.push(ImageSpec {
                scene: id,
                style: RenderStyle::canonical(),
                path: format!("images/{}/scene-{id:05}.png", split.name()),
            });
            let alternative_image = images.len();
            images.push(ImageSpec {
                scene: id,
                style: styles[family].clone(),
                path: format!("images/{}/scene-{id:05}-alt.png", split.name()),
            });
            PlacedScene {
                scene,
                split,
                family,
                canonical_image,
                alternative_image,
            }
        })
        .collect();
    (placed, images)
}

/// Another background, an outline and a small shift per position: what an image-to-image query must see past.
fn alternative_style<R: Rng>(rng: &mut R) -> RenderStyle {
    let background = ALTERNATIVE_BACKGROUNDS[rng.random_range(0..ALTERNATIVE_BACKGROUNDS.len())];
    let outline = OUTLINES[rng.random_range(0..OUTLINES.len())];
    let mut jitter = [[0; 2]; 5];
    for offset in jitter.iter_mut().flatten() {
        *offset = rng.random_range(-MAX_JITTER_PER_MILLE..=MAX_JITTER_PER_MILLE);
    }
    RenderStyle {
        background,
        outline: Some(outline),
        jitter,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::config::WorldSize;

    #[test]
    fn plans_are_a_function_of_the_config() {
        let config = WorldConfig::default();
        let world = plan(&config).unwrap();
        assert_eq!(world, plan(&config).unwrap());
        let other = WorldConfig {
            seed: 1,
            ..config.clone()
        };
        assert_ne!(world.scenes, plan(&other).unwrap().scenes);
    }

    #[test]
    fn every_scene_has_two_images_in_its_split() {
        let world = plan(&WorldConfig::default()).unwrap();
        assert_eq!(world.images.len(), 2 * world.scenes.len());
        for (id, placed) in world.scenes.iter().enumerate() {
            assert_eq!(world.families[placed.family].split, placed.split);
            for image in [placed.canonical_image, placed.alternative_image] {
                assert_eq!(world.images[image].scene, id);
                assert!(world.images[image]
                    .path
                    .starts_with(&format!("images/{}/", placed.split.name())));
            }
            assert_ne!(
                world.images[placed.alternative_image].style,
                RenderStyle::canonical()
            );
        }
    }

    #[test]
    fn datasets_hold_one_query_per_family_in_split_order() {
        let config = WorldConfig {
            size: WorldSize::Small,
            ..WorldConfig::default()
        };
        let world = plan(&config).unwrap();
        assert_eq!(world.datasets.len(), Task::ALL.len());
        for dataset in &world.datasets {
            assert_eq!(dataset.queries.len(), world.families.len());
            let splits: Vec<Split> = dataset.queries.iter().map(|q| q.split).collect();
            let mut sorted = splits.clone();
            sorted.sort();
            assert_eq!(splits, sorted);
            assert_eq!(
                dataset.pool.len(),
                world.families.len() * (1 + config.size.near_misses())
            );
        }
    }
}
