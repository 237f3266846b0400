use std::collections::HashSet;

use super::groups::{build_groups, shuffle};
use super::index::{
    relative_to, FileEntry, ShardEntry, ShardIndex, INDEX, INDEX_FORMAT, PROMPT_PARTS,
};
use super::inputs::{read_docs, read_negatives, read_queries};
use super::plan::{plan, Limits};
use super::write::{group_size, write_shard, Parts};
use super::{ShardsConfig, ShardsError, CL, SFT};
use crate::pipeline::{Input, Output, PipelineError, Stage, StageContext, StageError};
use crate::shard::Shard;

/// Turns mined negatives into shuffled, size-bounded sft and cl shards with an index.
pub struct ShardsStage {
    config: ShardsConfig,
}

impl ShardsStage {
    pub fn new(config: ShardsConfig) -> Result<Self, PipelineError> {
        config.validate().map_err(|e| PipelineError::Config {
            path: Default::default(),
            message: e.to_string(),
        })?;
        Ok(Self { config })
    }
}

impl Stage for ShardsStage {
    fn name(&self) -> &'static str {
        "shards"
    }

    fn config(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(&self.config)
    }

    fn inputs(&self) -> Vec<Input> {
        let mut inputs = vec![Input::Stage(self.config.ingest.clone())];
        if self.config.mine != self.config.ingest {
            inputs.push(Input::Stage(self.config.mine.clone()));
        }
        inputs
    }

    /// Trees, not datasets: the number of shard files depends on the data, and the global shuffle means the
    /// stage cannot be split with `--shard`.
    fn outputs(&self) -> Vec<Output> {
        vec![Output::tree(SFT), Output::tree(CL), Output::tree(INDEX)]
    }

    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        Ok(self.write(ctx)?)
    }
}

impl ShardsStage {
    fn write(&self, ctx: &mut StageContext) -> Result<(), ShardsError> {
        let rows = read_negatives(&ctx.open_upstream(&self.config.mine, "negatives")?)?;
        ctx.add_records(rows.len() as u64);
        let (queries, docs) = {
            let qids: HashSet<&str> = rows.iter().map(|r| r.qid.as_str()).collect();
            let dids: HashSet<&str> = rows
                .iter()
                .flat_map(|r| {
                    r.positives
                        .iter()
                        .chain(r.negatives.iter().map(|(did, _)| did))
                })
                .map(String::as_str)
                .collect();
            let queries = read_queries(&ctx.open_upstream(&self.config.ingest, "queries")?, &qids)?;
            let docs = read_docs(&ctx.open_upstream(&self.config.ingest, "corpus")?, &dids)?;
            (queries, docs)
        };
        let (mut groups, rejects) = build_groups(&rows, &queries, &docs)?;
        drop(rows);
        for reject in rejects {
            ctx.reject(reject)?;
        }
        if self.config.shuffle {
            shuffle(&mut groups, ctx.seed());
        }

        let parts = Parts {
            queries: &queries,
            docs: &docs,
        };
        let sizes: Vec<_> = groups.iter().map(|g| group_size(g, parts)).collect();
        let ranges = plan(
            &sizes,
            Limits {
                max_rows: self.config.max_rows_per_shard,
                max_bytes: self.config.max_bytes_per_shard,
            },
        );
        let dir = ctx.dir().to_path_buf();
        let count = ranges.len() as u32;
        let bar = ctx.progress(groups.len() as u64, "groups");
        let mut shards = Vec::with_capacity(ranges.len());
        for (index, range) in ranges.into_iter().enumerate() {
            let shard = Shard {
                index: index as u32,
                count,
            };
            let (sft, cl) = write_shard(&dir, shard, &groups[range.clone()], parts)?;
            shards.push(ShardEntry {
                groups: range.len() as u64,
                sft: FileEntry::of(&dir, &sft),
                cl: FileEntry::of(&dir, &cl),
            });
            bar.inc(range.len() as u64);
        }
        bar.finish_and_clear();

        let ingest = ctx.upstream_dir(&self.config.ingest)?.to_path_buf();
        let negatives = groups.iter().map(|g| g.negatives.len() as u64);
        let index = ShardIndex {
            format: INDEX_FORMAT,
            prompt: PROMPT_PARTS.to_string(),
            seed: ctx.seed(),
            shuffled: self.config.shuffle,
            groups: groups.len() as u64,
            sft_rows: sizes.iter().map(|s| s.sft_rows).sum(),
            cl_rows: groups.len() as u64,
            min_negatives: negatives.clone().min().unwrap_or(0),
            max_negatives: negatives.max().unwrap_or(0),
            max_rows_per_shard: self.config.max_rows_per_shard,
            max_bytes_per_shard: self.config.max_bytes_per_shard,
            corpus: relative_to(&dir, &ingest.join("corpus"))?,
            images: relative_to(&dir, &ingest.join("images"))?,
            shards,
        };
        index.write(&dir)?;
        tracing::info!(
            "{}: {} groups, {} sft rows in {} shard(s)",
            ctx.name(),
            index.groups,
            index.sft_rows,
            index.shards.len()
        );
        Ok(())
    }
}
