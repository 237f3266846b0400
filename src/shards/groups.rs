//! Training groups: one per (query, positive), each with every negative of its query's row, and their order.
//!
//! A `negatives` row whose ids do not add up (an unknown query or document, a negative that is also a positive,
//! a repeated id) is rejected whole, with the reason, rather than trained on in part.

use std::collections::{HashMap, HashSet};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use sha2::{Digest, Sha256};

use super::inputs::{DocParts, NegativesRow, QueryParts, Table};
use super::ShardsError;
use crate::pipeline::Reject;
use crate::schema::NegativeKind;
use crate::shard::stable_hash;

/// One positive and its query's negatives, as indices into the query and document tables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    pub group_id: u64,
    pub query: u32,
    pub positive: u32,
    /// In the row's order: hard negatives (rank order), then random ones.
    pub negatives: Vec<(u32, NegativeKind)>,
}

/// The id of the group of `positive` under query `qid`: [`stable_hash`] of `qid`, the byte 0x1F, and the did.
/// It depends on nothing else (not the seed, the order, or the other groups), so the same group keeps its id
/// across reruns, reshuffles and datasets, and joins between sft, cl and anything a trainer logs are exact.
pub fn group_id(qid: &str, positive: &str) -> u64 {
    let mut key = Vec::with_capacity(qid.len() + 1 + positive.len());
    key.extend_from_slice(qid.as_bytes());
    key.push(0x1f);
    key.extend_from_slice(positive.as_bytes());
    stable_hash(&key)
}

/// The groups of every usable row, in row order and, within a row, in the order its positives are listed; and
/// one reject per unusable row.
pub fn build_groups(
    rows: &[NegativesRow],
    queries: &Table<QueryParts>,
    docs: &Table<DocParts>,
) -> Result<(Vec<Group>, Vec<Reject>), ShardsError> {
    let mut groups = Vec::new();
    let mut rejects = Vec::new();
    let mut seen_qids = HashSet::new();
    let mut owners: HashMap<u64, (String, String)> = HashMap::new();
    for row in rows {
        let first_time = seen_qids.insert(row.qid.as_str());
        let checked = if first_time {
            check_row(row, queries, docs)
        } else {
            Err((
                "duplicate_qid",
                format!(
                    "qid `{}` has an earlier negatives row; that one is used",
                    row.qid
                ),
            ))
        };
        let (query, positives, negatives) = match checked {
            Ok(resolved) => resolved,
            Err((reason, detail)) => {
                let reject = Reject::new(row.source.clone(), reason, detail)
                    .at_line(row.row)
                    .with_id(row.qid.clone());
                rejects.push(reject);
                continue;
            }
        };
        for (positive, did) in positives.into_iter().zip(&row.positives) {
            let id = group_id(&row.qid, did);
            if let Some((first_qid, first_did)) = owners.insert(id, (row.qid.clone(), did.clone()))
            {
                return Err(ShardsError::GroupIdCollision {
                    id,
                    first_qid,
                    first_did,
                    second_qid: row.qid.clone(),
                    second_did: did.clone(),
                });
            }
            groups.push(Group {
                group_id: id,
                query,
                positive,
                negatives: negatives.clone(),
            });
        }
    }
    Ok((groups, rejects))
}

type Resolved = (u32, Vec<u32>, Vec<(u32, NegativeKind)>);

/// Resolves a row's ids, or says why the row cannot be used.
fn check_row(
    row: &NegativesRow,
    queries: &Table<QueryParts>,
    docs: &Table<DocParts>,
) -> Result<Resolved, (&'static str, String)> {
    if row.positives.is_empty() {
        return Err((
            "no_positives",
            format!("query `{}` lists no positive", row.qid),
        ));
    }
    let query = queries.get(&row.qid).ok_or_else(|| {
        (
            "unknown_qid",
            format!("qid `{}` is not in the queries dataset", row.qid),
        )
    })?;
    let doc = |did: &str| {
        docs.get(did).ok_or_else(|| {
            (
                "unknown_did",
                format!("did `{did}` is not in the corpus dataset"),
            )
        })
    };
    let positives = row
        .positives
        .iter()
        .map(|did| doc(did))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some(did) = first_repeat(row.positives.iter()) {
        return Err((
            "duplicate_positive",
            format!("positive `{did}` is listed twice"),
        ));
    }
    let negatives = row
        .negatives
        .iter()
        .map(|(did, kind)| Ok((doc(did)?, *kind)))
        .collect::<Result<Vec<_>, _>>()?;
    if let Some((did, _)) = row
        .negatives
        .iter()
        .find(|(did, _)| row.positives.contains(did))
    {
        return Err((
            "negative_is_positive",
            format!("`{did}` is listed both as a positive and as a negative"),
        ));
    }
    if let Some(did) = first_repeat(row.negatives.iter().map(|(did, _)| did)) {
        return Err((
            "duplicate_negative",
            format!("negative `{did}` is listed twice"),
        ));
    }
    Ok((query, positives, negatives))
}

fn first_repeat<'a>(mut ids: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    let mut seen = HashSet::new();
    ids.find(|id| !seen.insert(id.as_str()))
}

/// Puts the groups in training order: a uniform permutation drawn from `seed`. The groups are first sorted by
/// group id, so the order depends on the set of groups and the seed only, not on how the negatives dataset was
/// partitioned or ordered.
pub fn shuffle(groups: &mut [Group], seed: u64) {
    groups.sort_unstable_by_key(|g| g.group_id);
    let mut hasher = Sha256::new();
    hasher.update(b"umrank/shards/shuffle\0");
    hasher.update(seed.to_le_bytes());
    let mut rng = ChaCha8Rng::from_seed(hasher.finalize().into());
    for i in (1..groups.len()).rev() {
        let j = rng.random_range(0..=i as u64) as usize;
        groups.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(id: u64) -> Group {
        Group {
            group_id: id,
            query: 0,
            positive: 0,
            negatives: Vec::new(),
        }
    }

    #[test]
    fn group_ids_separate_qid_and_did() {
        assert_ne!(group_id("q1", "0:d"), group_id("q1:0", "d"));
        assert_eq!(group_id("q", "d"), stable_hash(b"q\x1fd"));
    }

    #[test]
    fn shuffle_depends_on_the_set_and_the_seed_only() {
        let mut a: Vec<Group> = (0..50).map(group).collect();
        let mut b: Vec<Group> = (0..50).rev().map(group).collect();
        shuffle(&mut a, 3);
        shuffle(&mut b, 3);
        assert_eq!(a, b);
        let ids: Vec<u64> = a.iter().map(|g| g.group_id).collect();
        assert_ne!(
            ids,
            (0..50).collect::<Vec<_>>(),
            "a permutation, not the sort"
        );
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        let mut c: Vec<Group> = (0..50).map(group).collect();
        shuffle(&mut c, 4);
        assert_ne!(a, c);
    }

    #[test]
    fn every_position_is_reachable() {
        // Over many seeds, the first group lands in every slot: the permutation is not a fixed rotation.
        let mut landed = HashSet::new();
        for seed in 0..200 {
            let mut g: Vec<Group> = (0..5).map(group).collect();
            shuffle(&mut g, seed);
            landed.insert(g.iter().position(|x| x.group_id == 0));
        }
        assert_eq!(landed.len(), 5);
    }
}
