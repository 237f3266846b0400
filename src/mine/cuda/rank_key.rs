//! The 64-bit rank keys that the CUDA selection kernel (`topk.cu`) compares, stores and hands back.
//!
//! A key packs a hit's score and its document's tie rank (its position in id order, see
//! [`DocOrder`](crate::mine::DocOrder)) so that plain unsigned order on keys is the CPU miner's ranking order:
//! score descending, then tie rank descending. The kernel then needs one integer comparison per candidate and a
//! radix descent over key bits finds the k-th best hit without sorting a chunk. Keys of one query are distinct
//! (tie ranks are), so "the k best" is a set with no ties to settle. The kernel builds keys with the same
//! formula as [`encode`]; the host only decodes.

/// The key of no hit: an empty slot of a running list. [`encode`] never returns it for a finite score.
pub const EMPTY: u64 = 0;

/// The key of `score` for the document with tie rank `tie`. The score's bits are mapped so that unsigned order is
/// numeric order (sign bit set for non-negative values, all bits flipped for negative ones), after folding -0
/// into +0 so that the two tie as they do in the CPU miner.
pub fn encode(score: f32, tie: u32) -> u64 {
    let bits = if score == 0.0 { 0 } else { score.to_bits() };
    let ordered = if bits & 0x8000_0000 != 0 {
        !bits
    } else {
        bits | 0x8000_0000
    };
    (u64::from(ordered) << 32) | u64::from(tie)
}

/// The score and tie rank a key was built from, or `None` for [`EMPTY`].
pub fn decode(key: u64) -> Option<(f32, u32)> {
    if key == EMPTY {
        return None;
    }
    let ordered = (key >> 32) as u32;
    let bits = if ordered & 0x8000_0000 != 0 {
        ordered & 0x7fff_ffff
    } else {
        !ordered
    };
    Some((f32::from_bits(bits), key as u32))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mine::select::Ranked;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    fn ranked(score: f32, tie: u32) -> Ranked {
        Ranked {
            score,
            tie,
            doc: tie,
        }
    }

    /// Scores that stress the mapping: both zeros, subnormals, the extremes, neighbours of 1.
    fn special_scores() -> Vec<f32> {
        vec![
            0.0,
            -0.0,
            f32::MIN_POSITIVE,
            -f32::MIN_POSITIVE,
            f32::from_bits(1),
            -f32::from_bits(1),
            f32::MAX,
            f32::MIN,
            1.0,
            -1.0,
            f32::from_bits(1.0f32.to_bits() + 1),
            f32::from_bits(1.0f32.to_bits() - 1),
        ]
    }

    #[test]
    fn key_order_is_the_cpu_ranking_order() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut hits: Vec<(f32, u32)> = special_scores()
            .into_iter()
            .flat_map(|score| [(score, 0), (score, 1), (score, u32::MAX)])
            .collect();
        hits.extend((0..2000).map(|_| {
            let score = if rng.random_bool(0.3) {
                f32::from(rng.random_range(-3i8..=3))
            } else {
                rng.random_range(-2.0f32..2.0)
            };
            (score, rng.random_range(0..8u32))
        }));
        for &(a_score, a_tie) in &hits {
            for &(b_score, b_tie) in hits.iter().step_by(7) {
                assert_eq!(
                    encode(a_score, a_tie).cmp(&encode(b_score, b_tie)),
                    ranked(a_score, a_tie).cmp(&ranked(b_score, b_tie)),
                    "({a_score}, {a_tie}) vs ({b_score}, {b_tie})"
                );
            }
        }
    }

    #[test]
    fn decoding_inverts_encoding_and_no_finite_score_is_empty() {
        for score in special_scores() {
            for tie in [0, 5, u32::MAX] {
                let key = encode(score, tie);
                assert_ne!(key, EMPTY);
                let (decoded, decoded_tie) = decode(key).unwrap();
                assert_eq!(decoded_tie, tie);
                // -0 comes back as +0: the two are one score to the ranking.
                assert_eq!(decoded.to_bits(), (score + 0.0).to_bits(), "{score}");
            }
        }
        assert_eq!(decode(EMPTY), None);
    }
}
