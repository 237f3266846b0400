//! Which keys each query may attend to, described per query row instead of as a `(q_len, kv_len)` matrix.
//!
//! Every layout umrank uses lets a query see at most two contiguous runs of keys, optionally thinned by a per-key
//! validity flag: causal (`0..=offset + i`), packed rows (the query's own sequence, causally or whole), shared
//! prefix (the group's prefix, then the query's own suffix causally) and padded batches (all keys, or causally,
//! minus padding). Stored this way a mask costs `O(rows + keys)` memory, and a blocked kernel can tell from the
//! spans alone which key blocks a query block needs, so it skips the rest without looking at them.
//!
//! The rule of [`crate::models::layers::mask`] for queries that may attend to no key (they attend to every key instead) is
//! applied once, at construction: such a row's spans become all keys, with validity ignored.

use crate::models::layers::layer_error::LayerError;
use std::ops::Range;

/// A half-open run of key positions, `start..end`; empty when `start >= end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    pub fn new(range: Range<usize>) -> Self {
        Self {
            start: range.start as u32,
            end: range.end as u32,
        }
    }

    fn contains(self, key: u32) -> bool {
        self.start <= key && key < self.end
    }

    fn is_empty(self) -> bool {
        self.start >= self.end
    }
}

/// The keys one query row may see: the union of two spans, restricted to the valid keys unless the row fell
/// under the attends-to-nothing rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowKeys {
    spans: [Span; 2],
    ignores_validity: bool,
}

impl RowKeys {
    /// The spans, in the order they were given (either may be empty).
    pub fn spans(&self) -> [Span; 2] {
        self.spans
    }

    /// Whether `key` is visible to this row, given the per-key validity of its batch row.
    pub fn allows(&self, key: u32, valid: Option<&[bool]>) -> bool {
        let in_spans = self.spans[0].contains(key) || self.spans[1].contains(key);
        in_spans && (self.ignores_validity || valid.is_none_or(|valid| valid[key as usize]))
    }
}

/// A structured attention mask: one [`RowKeys`] per `(batch row, query)`, either table dimension possibly 1 and
/// then broadcast, and optionally a `(batch, kv_len)` key validity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpans {
    batch: usize,
    queries: usize,
    kv_len: usize,
    rows: Vec<RowKeys>,
    key_valid: Option<Vec<bool>>,
}

impl KeySpans {
    /// `spans` holds `batch * queries` rows, batch-major. `key_valid`, if given, holds `batch * kv_len` flags.
    /// Spans reaching past `kv_len` are clipped to it.
    pub fn new(
        batch: usize,
        queries: usize,
        kv_len: usize,
        spans: Vec<[Span; 2]>,
        key_valid: Option<Vec<bool>>,
    ) -> Result<Self, LayerError> {
        let invalid = |reason: String| LayerError::KeySpans { reason };
        if batch == 0 || queries == 0 || kv_len == 0 || kv_len > u32::MAX as usize {
            return Err(invalid(format!(
                "batch {batch}, queries {queries} and kv_len {kv_len} must be positive and fit u32"
            )));
        }
        if spans.len() != batch * queries {
            return Err(invalid(format!(
                "{} rows of spans for batch {batch} x queries {queries}",
                spans.len()
            )));
        }
        if let Some(valid) = &key_valid {
            if valid.len() != batch * kv_len {
                return Err(invalid(format!(
                    "{} key flags for batch {batch} x kv_len {kv_len}",
                    valid.len()
                )));
            }
        }
        let clip = |s: Span| Span {
            start: s.start,
            end: s.end.min(kv_len as u32),
        };
        let valid_before = key_valid
            .as_ref()
            .map(|valid| valid_prefix_counts(valid, kv_len));
        let rows = spans
            .into_iter()
            .enumerate()
            .map(|(row, spans)| {
                let spans = spans.map(clip);
                let counts = valid_before
                    .as_ref()
                    .map(|c| &c[row / queries * (kv_len + 1)..][..kv_len + 1]);
                resolve_row(spans, counts, kv_len)
            })
            .collect();
        Ok(Self {
            batch,
            queries,
            kv_len,
            rows,
            key_valid,
        })
    }

    /// Every query sees every key.
    pub fn full(kv_len: usize) -> Result<Self, LayerError> {
        Self::new(
            1,
            1,
            kv_len,
            vec![[Span::new(0..kv_len), Span::default()]],
            None,
        )
    }

    /// Batch rows in the table: 1 (broadcast) or the batch size.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Query rows in the table: 1 (broadcast) or the number of queries.
    pub fn queries(&self) -> usize {
        self.queries
    }

    pub fn kv_len(&self) -> usize {
        self.kv_len
    }

    /// The keys query `query` of batch row `batch` may see.
    pub fn row(&self, batch: usize, query: usize) -> RowKeys {
        let b = if self.batch == 1 { 0 } else { batch };
        let q = if self.queries == 1 { 0 } else { query };
        self.rows[b * self.queries + q]
    }

    /// The validity flags of batch row `batch`'s keys, if the mask has any.
    pub fn key_valid(&self, batch: usize) -> Option<&[bool]> {
        let b = if self.batch == 1 { 0 } else { batch };
        self.key_valid
            .as_ref()
            .map(|valid| &valid[b * self.kv_len..][..self.kv_len])
    }

    /// The key blocks, `block` keys wide (the last one possibly shorter), that at least one of queries
    /// `queries` of batch row `batch` may see, in key order. A blocked kernel visits only these.
    pub fn key_blocks(
        &self,
        batch: usize,
        queries: Range<usize>,
        block: usize,
    ) -> Vec<Range<usize>> {
        let count = self.kv_len.div_ceil(block);
        let mut needed = vec![false; count];
        for query in queries {
            for span in self.row(batch, query).spans() {
                if !span.is_empty() {
                    let (first, last) =
                        (span.start as usize / block, (span.end as usize - 1) / block);
                    needed[first..=last].iter_mut().for_each(|n| *n = true);
                }
            }
        }
        (0..count)
            .filter(|&b| needed[b])
            .map(|b| b * block..((b + 1) * block).min(self.kv_len))
            .collect()
    }

    /// Checks that the mask applies to attention of `batch` rows of `q_len` queries over `kv_len` keys.
    pub fn check_fits(&self, batch: usize, q_len: usize, kv_len: usize) -> Result<(), LayerError> {
        let fits = |table: usize, target: usize| table == target || table == 1;
        if fits(self.batch, batch) && fits(self.queries, q_len) && self.kv_len == kv_len {
            return Ok(());
        }
        Err(LayerError::KeySpans {
            reason: format!(
                "a table of {} x {} rows over {} keys does not fit {batch} x {q_len} queries over {kv_len} keys",
                self.batch, self.queries, self.kv_len
            ),
        })
    }
}

/// `counts[b * (kv_len + 1) + j]`: valid keys before key `j` in batch row `b`.
fn valid_prefix_counts(valid: &[bool], kv_len: usize) -> Vec<u32> {
    valid
        .chunks(kv_len)
        .flat_map(|row| {
            std::iter::once(0).chain(row.iter().scan(0u32, |seen, &v| {
                *seen += u32::from(v);
                Some(*seen)
            }))
        })
        .collect()
}

/// Applies the "attends to nothing means attends to everything" rule to one row.
fn resolve_row(spans: [Span; 2], valid_before: Option<&[u32]>, kv_len: usize) -> RowKeys {
    let visible = |s: Span| -> u32 {
        if s.is_empty() {
            return 0;
        }
        match valid_before {
            Some(counts) => counts[s.end as usize] - counts[s.start as usize],
            None => s.end - s.start,
        }
    };
    if visible(spans[0]) + visible(spans[1]) == 0 {
        RowKeys {
            spans: [Span::new(0..kv_len), Span::default()],
            ignores_validity: true,
        }
    } else {
        RowKeys {
            spans,
            ignores_validity: false,
        }
    }
}
