//! The order groups are trained in: a stream of epochs, each a permutation of all groups drawn from the seed.
//!
//! Group `k` of the stream is group `perm_e[k mod n]` of epoch `e = k div n`, with `perm_e` a Fisher-Yates
//! shuffle by a ChaCha8 generator keyed by (seed, e). The order is therefore a pure function of the seed and the
//! position: a resumed run needs only the number of groups it has consumed. Micro-batches take consecutive
//! groups of the stream and may straddle an epoch boundary, so every epoch is seen whole and none is cut short.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The stream of group indexes for `n` groups and a seed.
#[derive(Debug, Clone)]
pub struct DataOrder {
    n: usize,
    seed: u64,
    /// The permutation of the epoch last asked for.
    epoch: Option<(u64, Vec<usize>)>,
}

impl DataOrder {
    pub fn new(n: usize, seed: u64) -> Self {
        Self {
            n,
            seed,
            epoch: None,
        }
    }

    /// The permutation of epoch `e`.
    pub fn permutation(n: usize, seed: u64, e: u64) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(e);
        let mut order: Vec<usize> = (0..n).collect();
        order.shuffle(&mut rng);
        order
    }

    /// The groups at stream positions `start..start + count`. Empty when there are no groups.
    pub fn take(&mut self, start: u64, count: usize) -> Vec<usize> {
        if self.n == 0 {
            return Vec::new();
        }
        (start..start + count as u64)
            .map(|k| {
                let e = k / self.n as u64;
                let at = (k % self.n as u64) as usize;
                if self.epoch.as_ref().map(|(current, _)| *current) != Some(e) {
                    self.epoch = Some((e, Self::permutation(self.n, self.seed, e)));
                }
                self.epoch.as_ref().map_or(at, |(_, perm)| perm[at])
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_epoch_is_a_permutation_and_depends_on_the_seed() {
        let mut order = DataOrder::new(10, 3);
        let first = order.take(0, 10);
        let second = order.take(10, 10);
        for epoch in [&first, &second] {
            let mut sorted = epoch.clone();
            sorted.sort();
            assert_eq!(sorted, (0..10).collect::<Vec<_>>());
        }
        assert_ne!(first, second);
        assert_ne!(first, DataOrder::new(10, 4).take(0, 10));
    }

    #[test]
    fn positions_are_independent_of_how_the_stream_is_read() {
        let whole = DataOrder::new(7, 1).take(0, 30);
        let mut pieces = DataOrder::new(7, 1);
        let mut read = Vec::new();
        for start in (0..30).step_by(4) {
            read.extend(pieces.take(start, 4.min(30 - start as usize)));
        }
        assert_eq!(whole, read);
        assert_eq!(DataOrder::new(7, 1).take(12, 5), whole[12..17].to_vec());
    }
}
