//! What the caller chooses about a world: seed, size, image side; and the exact counts each size implies.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::error::WorldError;

/// The smallest image side: below it a small object is under 5 px across.
pub const MIN_IMAGE_SIDE: u32 = 28;
/// The largest image side: the demo's point is tiny images; this only stops absurd allocations.
pub const MAX_IMAGE_SIDE: u32 = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorldConfig {
    /// Seeds the single ChaCha8 stream every random choice is drawn from.
    pub seed: u64,
    pub size: WorldSize,
    /// Width and height of every image, in pixels. A multiple of 28 gives Qwen2-VL-style models whole patches.
    pub image_side: u32,
}

impl Default for WorldConfig {
    fn default() -> WorldConfig {
        WorldConfig {
            seed: 0,
            size: WorldSize::Small,
            image_side: 56,
        }
    }
}

impl WorldConfig {
    pub fn validate(&self) -> Result<(), WorldError> {
        if !(MIN_IMAGE_SIDE..=MAX_IMAGE_SIDE).contains(&self.image_side) {
            return Err(WorldError::InvalidConfig {
                field: "image_side",
                reason: format!(
                    "must be between {MIN_IMAGE_SIDE} and {MAX_IMAGE_SIDE} pixels, got {}",
                    self.image_side
                ),
            });
        }
        Ok(())
    }
}

/// How big a world is. Every count is an exact function of the size:
///
/// | | Small | Full | Large |
/// |---|---|---|---|
/// | families (centre scenes) train / val / test | 8 / 3 / 4 | 320 / 40 / 80 | 1280 / 40 / 80 |
/// | near misses per centre | 3 | 4 | 4 |
/// | queries per task and split (= qrels, one positive each) | 8 / 3 / 4 | 320 / 40 / 80 | 1280 / 40 / 80 |
/// | candidates per task pool: families x (1 + near misses) | 60 | 2200 | 7000 |
/// | images: 2 x families x (1 + near misses) | 120 | 4400 | 14000 |
///
/// Over the five tasks, Full has 1600 train, 200 val and 400 test queries; Large four times the training queries
/// with the same val and test sizes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WorldSize {
    /// For tests: ingests in well under a second.
    Small,
    /// For the demo: enough to train a tiny embedder and reranker on a CPU in minutes.
    Full,
    /// Four times Full's training queries: for rerankers trained from scratch, which need many queries seen once.
    Large,
}

impl WorldSize {
    /// Families in `split`. A family is a centre scene and its near misses; each task asks one query per family.
    pub fn families(self, split: Split) -> usize {
        match (self, split) {
            (WorldSize::Small, Split::Train) => 8,
            (WorldSize::Small, Split::Val) => 3,
            (WorldSize::Small, Split::Test) => 4,
            (WorldSize::Full, Split::Train) => 320,
            (WorldSize::Full, Split::Val) => 40,
            (WorldSize::Full, Split::Test) => 80,
            (WorldSize::Large, Split::Train) => 1280,
            (WorldSize::Large, Split::Val) => 40,
            (WorldSize::Large, Split::Test) => 80,
        }
    }

    /// Near misses per centre scene: the hard negatives of every query.
    pub fn near_misses(self) -> usize {
        match self {
            WorldSize::Small => 3,
            WorldSize::Full | WorldSize::Large => 4,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            WorldSize::Small => "small",
            WorldSize::Full => "full",
            WorldSize::Large => "large",
        }
    }
}

impl fmt::Display for WorldSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for WorldSize {
    type Err = WorldError;

    fn from_str(text: &str) -> Result<WorldSize, WorldError> {
        match text {
            "small" => Ok(WorldSize::Small),
            "full" => Ok(WorldSize::Full),
            "large" => Ok(WorldSize::Large),
            other => Err(WorldError::InvalidConfig {
                field: "size",
                reason: format!("expected \"small\", \"full\" or \"large\", got {other:?}"),
            }),
        }
    }
}

/// The M-BEIR splits. Each holds its own families, so no scene appears in two splits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    Train,
    Val,
    Test,
}

impl Split {
    pub const ALL: [Split; 3] = [Split::Train, Split::Val, Split::Test];

    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }
}

/// One value per split, serialised as `{"train": .., "val": .., "test": ..}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PerSplit<T> {
    pub train: T,
    pub val: T,
    pub test: T,
}

impl<T> PerSplit<T> {
    pub fn from_fn(mut f: impl FnMut(Split) -> T) -> PerSplit<T> {
        PerSplit {
            train: f(Split::Train),
            val: f(Split::Val),
            test: f(Split::Test),
        }
    }

    pub fn get(&self, split: Split) -> &T {
        match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
            Split::Test => &self.test,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_and_print() {
        for size in [WorldSize::Small, WorldSize::Full] {
            assert_eq!(size.to_string().parse::<WorldSize>().unwrap(), size);
        }
        let err = "huge".parse::<WorldSize>().unwrap_err().to_string();
        assert!(err.contains("huge") && err.contains("size"), "{err}");
    }

    #[test]
    fn image_side_is_bounded() {
        let mut config = WorldConfig::default();
        assert!(config.validate().is_ok());
        config.image_side = 27;
        let err = config.validate().unwrap_err().to_string();
        assert!(err.contains("image_side") && err.contains("27"), "{err}");
        config.image_side = MAX_IMAGE_SIDE + 1;
        assert!(config.validate().is_err());
    }

    #[test]
    fn every_size_matches_its_documented_counts() {
        let total = |size: WorldSize| Split::ALL.iter().map(|&s| size.families(s)).sum::<usize>();
        assert_eq!(
            total(WorldSize::Small) * (1 + WorldSize::Small.near_misses()),
            60
        );
        assert_eq!(
            total(WorldSize::Full) * (1 + WorldSize::Full.near_misses()),
            2200
        );
        assert_eq!(WorldSize::Full.families(Split::Train) * 5, 1600);
        assert_eq!(
            total(WorldSize::Large) * (1 + WorldSize::Large.near_misses()),
            7000
        );
        assert_eq!(WorldSize::Large.families(Split::Train) * 5, 6400);
        for size in [WorldSize::Small, WorldSize::Full, WorldSize::Large] {
            assert_eq!(size.name().parse::<WorldSize>().unwrap(), size);
        }
    }
}
