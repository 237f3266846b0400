//! The shared-prefix layout of a micro-batch: the tokens a group's prompts have in common run once, and every
//! prompt's remaining suffix attends to them (see [`crate::models::layers::shared_prefix`] for the attention).
//!
//! Every prompt of a group starts with the same system turn, instruction and query (docs/method.md#prompt-layout), so
//! the shared part is the longest common prefix of the group's token ids, with two limits:
//!
//! - every suffix keeps at least one token, the scored last token (two documents may render identically);
//! - an image's placeholders are shared only when the image itself is the same in every prompt: the ids of two
//!   different images' placeholders are equal, their embeddings are not. The prefix therefore ends before the
//!   first image that is not the same (by image id) across the group, or that the common ids cut. In practice a
//!   query image is shared and a document image is not.
//!
//! Positions are those of the whole prompts, taken from the plain packed layout and gathered: prefix tokens from
//! the group's first prompt, each suffix from its own. That is exact for M-RoPE too: Qwen2-VL's position of a
//! token depends only on the tokens and images before it, and those are the same in every prompt of the group up
//! to the end of the shared prefix. So text-only decoders and Qwen2-VL / Qwen2.5-VL with images in the query, the
//! document or both all take this layout, and the logits equal the plain path's.
//!
//! LoRA dropout draws one mask per token run through the model, so with dropout on, a shared prefix gets one
//! draw for the whole group where the plain path draws one per prompt: the same training distribution, another
//! sample. With dropout off (or at evaluation) the two layouts give the same numbers.

use crate::models::layers::shared_prefix::PrefixGroup;

use super::encode::Sequence;

/// What a group's prompts share: the first `tokens` ids, holding the first `images` images of every prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedPart {
    pub tokens: usize,
    pub images: usize,
}

/// The shared prefix of one group's prompts; `image_token` is the image placeholder id of a model with a vision
/// tower.
pub fn shared_part(group: &[Sequence], image_token: Option<u32>) -> SharedPart {
    let Some(first) = group.first() else {
        return SharedPart {
            tokens: 0,
            images: 0,
        };
    };
    let shortest = group.iter().map(|s| s.ids.len()).min().unwrap_or(0);
    let common = (0..shortest.saturating_sub(1))
        .take_while(|&t| group.iter().all(|s| s.ids[t] == first.ids[t]))
        .count();
    let Some(pad) = image_token else {
        return SharedPart {
            tokens: common,
            images: 0,
        };
    };
    let (mut token, mut images) = (0, 0);
    while token < common {
        if first.ids[token] != pad {
            token += 1;
            continue;
        }
        let end = token
            + first.ids[token..]
                .iter()
                .take_while(|&&id| id == pad)
                .count();
        let same = group.iter().all(|s| {
            s.images.get(images).is_some() && s.images.get(images) == first.images.get(images)
        });
        if end > common || !same {
            return SharedPart {
                tokens: token,
                images,
            };
        }
        images += 1;
        token = end;
    }
    SharedPart {
        tokens: common,
        images,
    }
}

/// A micro-batch as one row: group after group, the shared prefix, then each prompt's suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedRow {
    ids: Vec<u32>,
    /// For each row token, its index in the prompts concatenated (the plain packed layout).
    source: Vec<u32>,
    /// For each row token, its position in its prompt.
    positions: Vec<u32>,
    groups: Vec<PrefixGroup>,
    /// Row index of each prompt's last token, in prompt order.
    last: Vec<usize>,
    /// The images in the row's placeholder order, as indexes into the prompts' images concatenated.
    images: Vec<usize>,
}

impl SharedRow {
    /// Lays out `sequences` (whole groups of `per_group`, as the forward pass checks) with each group's
    /// [`shared_part`].
    pub fn new(sequences: &[Sequence], per_group: usize, image_token: Option<u32>) -> Self {
        let mut row = Self {
            ids: Vec::new(),
            source: Vec::new(),
            positions: Vec::new(),
            groups: Vec::new(),
            last: Vec::with_capacity(sequences.len()),
            images: Vec::new(),
        };
        let (mut token_base, mut image_base) = (0, 0);
        for group in sequences.chunks(per_group.max(1)) {
            let shared = shared_part(group, image_token);
            let prefix_start = row.ids.len();
            row.push(&group[0], token_base, 0..shared.tokens);
            row.images.extend(image_base..image_base + shared.images);
            let prefix = prefix_start..row.ids.len();
            let mut suffixes = Vec::with_capacity(group.len());
            for sequence in group {
                let start = row.ids.len();
                row.push(sequence, token_base, shared.tokens..sequence.ids.len());
                row.last.push(row.ids.len() - 1);
                row.images
                    .extend(image_base + shared.images..image_base + sequence.images.len());
                suffixes.push(start..row.ids.len());
                token_base += sequence.ids.len();
                image_base += sequence.images.len();
            }
            row.groups.push(PrefixGroup { prefix, suffixes });
        }
        row
    }

    /// Appends `tokens` of `sequence`, which starts at `base` in the prompts concatenated.
    fn push(&mut self, sequence: &Sequence, base: usize, tokens: std::ops::Range<usize>) {
        for t in tokens {
            self.ids.push(sequence.ids[t]);
            self.source.push((base + t) as u32);
            self.positions.push(t as u32);
        }
    }

    pub fn ids(&self) -> &[u32] {
        &self.ids
    }

    /// Where each row token comes from in the prompts concatenated, to gather per-token values of the plain
    /// packed layout (M-RoPE positions).
    pub fn source(&self) -> &[u32] {
        &self.source
    }

    /// 1-D positions: each token's position in its prompt.
    pub fn positions(&self) -> &[u32] {
        &self.positions
    }

    pub fn groups(&self) -> &[PrefixGroup] {
        &self.groups
    }

    pub fn last(&self) -> &[usize] {
        &self.last
    }

    pub fn images(&self) -> &[usize] {
        &self.images
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAD: u32 = 9;

    fn sequence(ids: &[u32], images: &[&str]) -> Sequence {
        Sequence {
            ids: ids.to_vec(),
            images: images.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn the_prefix_is_the_common_ids_but_the_last_token() {
        let group = [
            sequence(&[1, 2, 3, 4, 5], &[]),
            sequence(&[1, 2, 3, 7, 5], &[]),
        ];
        assert_eq!(shared_part(&group, None).tokens, 3);
        let same = [sequence(&[1, 2, 3], &[]), sequence(&[1, 2, 3], &[])];
        assert_eq!(shared_part(&same, None).tokens, 2);
    }

    #[test]
    fn a_query_image_is_shared_and_a_document_image_is_not() {
        // [1, start(8), pad, pad, 2 | document: start(8), pad, pad, 3]
        let a = sequence(&[1, 8, PAD, PAD, 2, 8, PAD, PAD, 3], &["q", "a"]);
        let b = sequence(&[1, 8, PAD, PAD, 2, 8, PAD, PAD, 3], &["q", "b"]);
        assert_eq!(
            shared_part(&[a.clone(), b.clone()], Some(PAD)),
            SharedPart {
                tokens: 6,
                images: 1
            }
        );
        // Without the vision rule the different document images would be shared by their equal ids.
        assert_eq!(shared_part(&[a.clone(), b], None).tokens, 8);
        // Different query images: nothing after the first placeholder is shared.
        let c = sequence(&[1, 8, PAD, PAD, 2, 8, PAD, PAD, 3], &["other", "a"]);
        assert_eq!(
            shared_part(&[a.clone(), c], Some(PAD)),
            SharedPart {
                tokens: 2,
                images: 0
            }
        );
        // The same document image everywhere is shared whole; a cut through an image is not.
        assert_eq!(shared_part(&[a.clone(), a.clone()], Some(PAD)).images, 2);
        let longer = sequence(&[1, 8, PAD, PAD, PAD, PAD, 3], &["big"]);
        let shorter = sequence(&[1, 8, PAD, PAD, 4], &["big"]);
        assert_eq!(shared_part(&[longer, shorter], Some(PAD)).tokens, 2);
    }

    #[test]
    fn the_row_holds_each_prefix_once_and_every_suffix() {
        let group = [
            sequence(&[1, 2, 8, PAD, 4], &["q"]),
            sequence(&[1, 2, 8, PAD, 5, 6], &["q"]),
        ];
        let other = [sequence(&[3, 4], &[]), sequence(&[3, 5], &[])];
        let sequences: Vec<_> = group.iter().chain(&other).cloned().collect();
        let row = SharedRow::new(&sequences, 2, Some(PAD));
        assert_eq!(row.ids(), [1, 2, 8, PAD, 4, 5, 6, 3, 4, 5]);
        assert_eq!(row.source(), [0, 1, 2, 3, 4, 9, 10, 11, 12, 14]);
        assert_eq!(row.positions(), [0, 1, 2, 3, 4, 4, 5, 0, 1, 1]);
        assert_eq!(row.last(), [4, 6, 8, 9]);
        assert_eq!(row.images(), [0]);
        assert_eq!(
            row.groups(),
            [
                PrefixGroup {
                    prefix: 0..4,
                    suffixes: vec![4..5, 5..7]
                },
                PrefixGroup {
                    prefix: 7..8,
                    suffixes: vec![8..9, 9..10]
                }
            ]
        );
    }
}
