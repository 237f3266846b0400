//! The tie order between documents: trec_eval's convention (docs/evaluation.md#tie-breaking) breaks equal scores by
//! document id descending as a string. Mining uses the same order so that its top-k lists are exactly the lists an
//! evaluation of the same scores would rank, and so that every way of splitting the work yields the same result.

use super::error::MineError;

/// Each document's position among all document ids sorted as strings. Hits compare by score, then by this rank
/// (higher rank wins a tie), so the order is total: no two documents share a rank.
#[derive(Debug, Clone)]
pub struct DocOrder {
    rank_of: Vec<u32>,
    doc_at: Vec<u32>,
}

impl DocOrder {
    /// Ranks the documents `0..ids.len()` by their ids. Duplicate ids make the order ambiguous and are an error.
    pub fn from_ids<S: AsRef<str>>(ids: &[S]) -> Result<Self, MineError> {
        if u32::try_from(ids.len()).is_err() {
            return Err(MineError::TooManyDocuments { count: ids.len() });
        }
        let mut doc_at: Vec<u32> = (0..ids.len() as u32).collect();
        doc_at.sort_unstable_by(|&a, &b| ids[a as usize].as_ref().cmp(ids[b as usize].as_ref()));
        if let Some(pair) = doc_at
            .windows(2)
            .find(|pair| ids[pair[0] as usize].as_ref() == ids[pair[1] as usize].as_ref())
        {
            let (first, second) = (pair[0].min(pair[1]) as usize, pair[0].max(pair[1]) as usize);
            return Err(MineError::DuplicateDocId {
                id: ids[first].as_ref().to_owned(),
                first,
                second,
            });
        }
        let mut rank_of = vec![0u32; ids.len()];
        for (rank, &doc) in doc_at.iter().enumerate() {
            rank_of[doc as usize] = rank as u32;
        }
        Ok(Self { rank_of, doc_at })
    }

    /// Number of documents ordered.
    pub fn len(&self) -> usize {
        self.rank_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rank_of.is_empty()
    }

    /// The position of `doc`'s id in ascending string order.
    pub fn rank(&self, doc: u32) -> u32 {
        self.rank_of[doc as usize]
    }

    /// The document whose id is `rank`-th in ascending string order.
    pub fn doc_at(&self, rank: u32) -> u32 {
        self.doc_at[rank as usize]
    }

    /// Fails unless `doc` is one of the ordered documents; `context` names where it came from.
    pub(crate) fn check(
        &self,
        doc: u32,
        context: impl FnOnce() -> String,
    ) -> Result<(), MineError> {
        if (doc as usize) < self.len() {
            Ok(())
        } else {
            Err(MineError::DocOutOfRange {
                context: context(),
                doc,
                known: self.len(),
            })
        }
    }
}
