//! The built-in stage kinds, as pipeline files name them.

use crate::embed::EmbedStage;
use crate::embedder::DualEncoderStage;
use crate::eval::EvalStage;
use crate::ingest::IngestStage;
use crate::mine::MineStage;
use crate::pipeline::StageRegistry;
use crate::release::ReleaseStage;
use crate::report::ReportStage;
use crate::shards::ShardsStage;
use crate::train::TrainStage;
use crate::world::stage::WorldStage;

/// Every stage kind umrank ships.
pub fn registry() -> StageRegistry {
    let mut registry = StageRegistry::new();
    registry.register("world", WorldStage::new);
    registry.register("ingest", IngestStage::new);
    registry.register("embedder", DualEncoderStage::new);
    registry.register("embed", EmbedStage::new);
    registry.register("mine", MineStage::new);
    registry.register("shards", ShardsStage::new);
    registry.register("train", TrainStage::new);
    registry.register("eval", EvalStage::new);
    registry.register("report", ReportStage::new);
    registry.register("release", ReleaseStage::new);
    registry
}
