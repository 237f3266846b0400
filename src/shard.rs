//! Deterministic slicing of work for job arrays (`--shard I/N`).
//!
//! A record belongs to shard `hash(key) mod N`, with a hash that does not depend on the platform, the process or
//! the crate version, so the N jobs of an array agree without talking to each other and the union of their
//! outputs is exactly the unsharded output.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One slice `index` of `count` (0-based index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole input as one slice.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    pub fn new(index: u32, count: u32) -> Result<Self, String> {
        if count == 0 {
            return Err("shard count must be at least 1".into());
        }
        if index >= count {
            return Err(format!(
                "shard index {index} is out of range for {count} shards (0..{count})"
            ));
        }
        Ok(Self { index, count })
    }

    pub fn is_all(&self) -> bool {
        self.count == 1
    }

    /// Whether the record with this key belongs to this shard.
    pub fn owns(&self, key: &str) -> bool {
        self.count == 1
            || (stable_hash(key.as_bytes()) % u64::from(self.count)) as u32 == self.index
    }

    /// The file-name form, `part-00002-of-00008`.
    pub fn part_name(&self) -> String {
        format!("part-{:05}-of-{:05}", self.index, self.count)
    }

    /// Parses the file-name form back (`part-00002-of-00008` plus any extension).
    pub fn from_part_name(name: &str) -> Option<Self> {
        let rest = name.strip_prefix("part-")?;
        let (index, rest) = rest.split_once("-of-")?;
        let count = rest.split('.').next()?;
        Shard::new(index.parse().ok()?, count.parse().ok()?).ok()
    }
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;

    /// Parses `I/N`, as given on the command line.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("expected I/N (e.g. 0/4), got `{s}`"))?;
        let index = i
            .trim()
            .parse()
            .map_err(|_| format!("shard index `{i}` is not a number"))?;
        let count = n
            .trim()
            .parse()
            .map_err(|_| format!("shard count `{n}` is not a number"))?;
        Shard::new(index, count)
    }
}

/// FNV-1a, 64 bit, followed by a final avalanche so that keys differing only in their last characters (qid
/// "9:10", "9:11", ...) still spread evenly over the shards.
pub fn stable_hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_formats() {
        let s: Shard = "2/8".parse().unwrap();
        assert_eq!(s, Shard { index: 2, count: 8 });
        assert_eq!(s.part_name(), "part-00002-of-00008");
        assert_eq!(
            Shard::from_part_name("part-00002-of-00008.parquet"),
            Some(s)
        );
        assert!("8/8".parse::<Shard>().is_err());
        assert!("1/0".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().is_err());
    }

    #[test]
    fn every_key_has_exactly_one_owner_and_shards_are_balanced() {
        let count = 4;
        let shards: Vec<Shard> = (0..count).map(|i| Shard::new(i, count).unwrap()).collect();
        let mut sizes = [0usize; 4];
        for n in 0..4000 {
            let key = format!("9:{n}");
            let owners: Vec<_> = shards.iter().filter(|s| s.owns(&key)).collect();
            assert_eq!(owners.len(), 1);
            sizes[owners[0].index as usize] += 1;
        }
        assert!(sizes.iter().all(|&s| (800..1200).contains(&s)), "{sizes:?}");
    }

    #[test]
    fn hash_is_pinned_so_job_arrays_agree_across_versions() {
        // Values from an independent implementation of the same function (Python, arbitrary precision ints).
        assert_eq!(stable_hash(b"9:1"), 0xe8d8_1f4c_41ff_54ef);
        assert_eq!(stable_hash(b""), 0xefd0_1f60_ba99_2926);
    }
}
