//! The built-in stage kinds, as pipeline files name them.

use crate::embed::EmbedStage;
use crate::ingest::IngestStage;
use crate::pipeline::StageRegistry;
use crate::release::ReleaseStage;
use crate::shards::ShardsStage;
use crate::world::stage::WorldStage;

/// Every stage kind umrank ships.
pub fn registry() -> StageRegistry {
    let mut registry = StageRegistry::new();
    registry.register("world", WorldStage::new);
    registry.register("ingest", IngestStage::new);
    registry.register("release", ReleaseStage::new);
    registry.register("embed", EmbedStage::new);
    registry.register("shards", ShardsStage::new);
    registry
}
