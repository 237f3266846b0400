//! Cutting the ordered groups into size-bounded shards.
//!
//! A group is never split: its sft rows stay contiguous in one file, and its cl row sits in the shard of the same
//! number, so sft shard i and cl shard i hold exactly the same groups. A shard is closed before the group that
//! would take it past a bound; a single group larger than a bound gets a shard of its own.

use std::ops::Range;

/// Bounds on one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most sft rows per shard (the cl shard has one row per group, so fewer).
    pub max_rows: u64,
    /// Most bytes of values per shard file, uncompressed (the Parquet file is smaller once zstd has run).
    pub max_bytes: u64,
}

/// What one group adds to its shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GroupSize {
    pub sft_rows: u64,
    pub sft_bytes: u64,
    pub cl_bytes: u64,
}

/// The group ranges of the shards, in order; no groups still give one (empty) shard, so the datasets exist.
pub fn plan(sizes: &[GroupSize], limits: Limits) -> Vec<Range<usize>> {
    let mut shards = Vec::new();
    let mut start = 0;
    let mut used = GroupSize::default();
    for (i, size) in sizes.iter().enumerate() {
        let over = used.sft_rows + size.sft_rows > limits.max_rows
            || used.sft_bytes + size.sft_bytes > limits.max_bytes
            || used.cl_bytes + size.cl_bytes > limits.max_bytes;
        if over && i > start {
            shards.push(start..i);
            start = i;
            used = GroupSize::default();
        }
        used.sft_rows += size.sft_rows;
        used.sft_bytes += size.sft_bytes;
        used.cl_bytes += size.cl_bytes;
    }
    if start < sizes.len() || shards.is_empty() {
        shards.push(start..sizes.len());
    }
    shards
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(n: u64) -> GroupSize {
        GroupSize {
            sft_rows: n,
            sft_bytes: 10 * n,
            cl_bytes: 5,
        }
    }

    #[test]
    fn shards_fill_up_to_the_row_bound_without_splitting_groups() {
        let sizes = [rows(3), rows(3), rows(3), rows(1), rows(5)];
        let limits = Limits {
            max_rows: 7,
            max_bytes: u64::MAX,
        };
        assert_eq!(plan(&sizes, limits), vec![0..2, 2..4, 4..5]);
    }

    #[test]
    fn byte_bounds_apply_to_both_datasets_and_big_groups_stand_alone() {
        let sizes = [rows(3), rows(20), rows(1)];
        let limits = Limits {
            max_rows: u64::MAX,
            max_bytes: 100,
        };
        assert_eq!(plan(&sizes, limits), vec![0..1, 1..2, 2..3]);
        let cl_heavy = [GroupSize {
            sft_rows: 1,
            sft_bytes: 1,
            cl_bytes: 60,
        }; 3];
        assert_eq!(plan(&cl_heavy, limits), vec![0..1, 1..2, 2..3]);
    }

    #[test]
    fn nothing_gives_one_empty_shard_and_everything_fits_in_one() {
        let limits = Limits {
            max_rows: 10,
            max_bytes: 1000,
        };
        assert_eq!(plan(&[], limits), vec![0..0]);
        assert_eq!(plan(&[rows(2), rows(2)], limits), vec![0..2]);
    }
}
