//! Families: a centre scene and its near misses, drawn so that no scene appears twice in a world.
//!
//! Uniqueness is what makes the labels true. If a near miss of one family happened to equal another family's
//! centre, the pool would hold an unlabelled copy of that centre's positive, and every retriever that found it
//! would be marked wrong.

use std::collections::HashSet;

use rand::seq::SliceRandom;
use rand::Rng;

use super::config::{Split, WorldSize};
use super::error::WorldError;
use super::scene::{Attribute, Edit, Scene};

/// Draws per family before giving up; a world uses a few thousand of the ~2.5 million possible scenes, so a draw is
/// almost never rejected and this bound is only reached by a bug.
const MAX_DRAWS: usize = 10_000;

/// A near miss of a family's centre: the scene, and the edit that turns the centre into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NearMiss {
    /// Index into the world's scenes.
    pub scene: usize,
    pub edit: Edit,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Family {
    pub split: Split,
    /// Index into the world's scenes.
    pub centre: usize,
    pub near_misses: Vec<NearMiss>,
}

impl Family {
    /// The centre, then the near misses: the order in which a family's candidates enter every pool.
    pub fn members(&self) -> impl Iterator<Item = usize> + '_ {
        std::iter::once(self.centre).chain(self.near_misses.iter().map(|n| n.scene))
    }
}

/// All scenes of a world and the families that own them, split by split (train, val, test), each family's
/// scenes stored contiguously: centre first, then its near misses.
pub fn sample_families<R: Rng>(
    size: WorldSize,
    rng: &mut R,
) -> Result<(Vec<Scene>, Vec<Family>), WorldError> {
    let mut scenes = Vec::new();
    let mut used = HashSet::new();
    let mut families = Vec::new();
    for split in Split::ALL {
        for _ in 0..size.families(split) {
            let (centre, near) = draw_family(size.near_misses(), &used, rng).ok_or(
                WorldError::SceneSpaceExhausted {
                    split: split.name(),
                    attempts: MAX_DRAWS,
                },
            )?;
            let centre_index = scenes.len();
            used.insert(centre.clone());
            scenes.push(centre);
            let mut near_misses = Vec::with_capacity(near.len());
            for (edit, scene) in near {
                near_misses.push(NearMiss {
                    scene: scenes.len(),
                    edit,
                });
                used.insert(scene.clone());
                scenes.push(scene);
            }
            families.push(Family {
                split,
                centre: centre_index,
                near_misses,
            });
        }
    }
    Ok((scenes, families))
}

/// A fresh centre and `count` fresh near misses of it, or `None` after [`MAX_DRAWS`] rejected draws.
fn draw_family<R: Rng>(
    count: usize,
    used: &HashSet<Scene>,
    rng: &mut R,
) -> Option<(Scene, Vec<(Edit, Scene)>)> {
    (0..MAX_DRAWS).find_map(|_| {
        let centre = Scene::sample(rng);
        if used.contains(&centre) {
            return None;
        }
        let near = pick_near_misses(&centre, count, used, rng)?;
        Some((centre, near))
    })
}

/// `count` unused neighbours of `centre`, spread over the attributes: the k-th pick changes the k-th attribute of
/// a shuffled attribute order when such a neighbour is left, so that hard negatives test colour, shape, size and
/// position alike rather than mostly colour (which has the most alternatives).
fn pick_near_misses<R: Rng>(
    centre: &Scene,
    count: usize,
    used: &HashSet<Scene>,
    rng: &mut R,
) -> Option<Vec<(Edit, Scene)>> {
    let mut fresh: Vec<(Edit, Scene)> = centre
        .neighbours()
        .into_iter()
        .filter(|(_, scene)| !used.contains(scene))
        .collect();
    if fresh.len() < count {
        return None;
    }
    let mut attributes = Attribute::ALL;
    attributes.shuffle(rng);
    let mut picked = Vec::with_capacity(count);
    for k in 0..count {
        let wanted = attributes[k % attributes.len()];
        let matching: Vec<usize> = (0..fresh.len())
            .filter(|&i| fresh[i].0.change.attribute() == wanted)
            .collect();
        let index = if matching.is_empty() {
            rng.random_range(0..fresh.len())
        } else {
            matching[rng.random_range(0..matching.len())]
        };
        picked.push(fresh.remove(index));
    }
    Some(picked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn families_follow_the_size_and_never_repeat_a_scene() {
        let mut rng = ChaCha8Rng::seed_from_u64(11);
        let size = WorldSize::Small;
        let (scenes, families) = sample_families(size, &mut rng).unwrap();
        let total: usize = Split::ALL.iter().map(|&s| size.families(s)).sum();
        assert_eq!(families.len(), total);
        assert_eq!(scenes.len(), total * (1 + size.near_misses()));
        assert_eq!(scenes.iter().collect::<HashSet<_>>().len(), scenes.len());
        let members: Vec<usize> = families.iter().flat_map(|f| f.members()).collect();
        assert_eq!(members, (0..scenes.len()).collect::<Vec<_>>());
        for family in &families {
            let centre = &scenes[family.centre];
            for near in &family.near_misses {
                assert_eq!(centre.apply(&near.edit).as_ref(), Some(&scenes[near.scene]));
            }
        }
    }

    #[test]
    fn near_misses_cover_distinct_attributes_when_they_can() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let (_, families) = sample_families(WorldSize::Small, &mut rng).unwrap();
        for family in &families {
            let attributes: HashSet<Attribute> = family
                .near_misses
                .iter()
                .map(|n| n.edit.change.attribute())
                .collect();
            assert_eq!(attributes.len(), family.near_misses.len());
        }
    }

    #[test]
    fn a_crowded_scene_space_is_reported_not_looped_on() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let centre = Scene::sample(&mut rng);
        let used: HashSet<Scene> = centre.neighbours().into_iter().map(|(_, s)| s).collect();
        assert_eq!(pick_near_misses(&centre, 1, &used, &mut rng), None);
    }
}
