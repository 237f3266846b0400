//! Scoring prompts that begin alike with their common head run once (inference).
//!
//! Eval and `umrank score` score lists of pairs whose prompts share a long head: the system turn, the instruction
//! and the query come before the document (docs/method.md#prompt-layout), so a query's top-k prompts differ only in
//! their tails. In a causal decoder a head's hidden states do not depend on what follows it, so a batch runs as one
//! row: each group of prompts lays out its common head once and every prompt's own tail after it, the tail
//! attending to the head and causally to itself, with the positions the whole prompt would give it. This is the
//! training's shared-prefix attention ([`crate::models::layers::shared_prefix`]) without the backward pass. The
//! scores equal the padded batch's up to float rounding, and no token is spent on padding.
//!
//! Prompts with images keep the padded batch: two images' placeholder ids are equal while their embeddings are
//! not, and the vision tower's positions depend on the images.

use candle_core::{Result, Tensor};

use super::decoder::{AttentionLayout, Decoder};
use super::layers::shared_prefix::PrefixGroup;
use super::qwen2_vl::score::{last_token_scores, PairScore};
use super::text::tokenizer::AnswerIds;

/// A batch of prompts as one row of groups: each group's common head, then each prompt's tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrefixRow {
    ids: Vec<u32>,
    /// Each row token's position in its own prompt.
    positions: Vec<u32>,
    groups: Vec<PrefixGroup>,
    /// Row index of each prompt's last token, in prompt order.
    last: Vec<usize>,
}

impl PrefixRow {
    /// Splits `prompts` (in order) into consecutive groups so that the row is as short as it can be: a group of
    /// `n` prompts whose common head is `h` tokens saves `(n - 1) * h`. The split is the best one (a dynamic
    /// programme over the split points), so a batch that holds the end of one query's list and the start of the
    /// next groups them by query, whatever the batch size. An empty prompt is an error: it has no token to score.
    pub fn new(prompts: &[&[u32]]) -> Result<Self> {
        if let Some(index) = prompts.iter().position(|p| p.is_empty()) {
            candle_core::bail!("prompt {index} is empty");
        }
        let ends = best_split(prompts);
        let mut row = Self {
            ids: Vec::new(),
            positions: Vec::new(),
            groups: Vec::with_capacity(ends.len()),
            last: Vec::with_capacity(prompts.len()),
        };
        let mut start = 0;
        for end in ends {
            row.push_group(&prompts[start..end]);
            start = end;
        }
        Ok(row)
    }

    fn push_group(&mut self, group: &[&[u32]]) {
        let head = common_head(group);
        let prefix_start = self.ids.len();
        self.push(group[0], 0..head);
        let prefix = prefix_start..self.ids.len();
        let mut suffixes = Vec::with_capacity(group.len());
        for prompt in group {
            let start = self.ids.len();
            self.push(prompt, head..prompt.len());
            self.last.push(self.ids.len() - 1);
            suffixes.push(start..self.ids.len());
        }
        self.groups.push(PrefixGroup { prefix, suffixes });
    }

    fn push(&mut self, prompt: &[u32], tokens: std::ops::Range<usize>) {
        for t in tokens {
            self.ids.push(prompt[t]);
            self.positions.push(t as u32);
        }
    }

    /// Tokens in the row: what the decoder runs.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    pub fn groups(&self) -> &[PrefixGroup] {
        &self.groups
    }

    /// The row's scores in prompt order (no dropout).
    fn score(&self, decoder: &Decoder, answers: AnswerIds) -> Result<Vec<PairScore>> {
        let device = decoder.device();
        let tokens = self.ids.len();
        let ids = Tensor::from_slice(&self.ids, (1, tokens), device)?;
        // 1-D positions also for an M-RoPE decoder: text-only, its three axes would all carry them.
        let positions = Tensor::from_slice(&self.positions, (1, tokens), device)?;
        let layout = AttentionLayout::shared_prefix(&self.groups, decoder.dtype(), device)?;
        let hidden = decoder.forward(&ids, &positions, &layout, false)?;
        let last: Vec<(usize, usize)> = self.last.iter().map(|&t| (0, t)).collect();
        last_token_scores(decoder, &hidden, &last, answers)?.to_vec()
    }
}

/// Scores text-only prompts, `batch_size` at a time, each batch as one [`PrefixRow`]; in input order.
pub fn score_text(
    decoder: &Decoder,
    prompts: &[&[u32]],
    answers: AnswerIds,
    batch_size: usize,
) -> Result<Vec<PairScore>> {
    let mut scores = Vec::with_capacity(prompts.len());
    for (batch, chunk) in prompts.chunks(batch_size.max(1)).enumerate() {
        let row = PrefixRow::new(chunk).map_err(|e| e.context(format!("batch {batch}")))?;
        scores.extend(row.score(decoder, answers)?);
    }
    Ok(scores)
}

/// The head every prompt of `group` shares, leaving each prompt at least its last token (the scored one; two
/// documents may render alike).
fn common_head(group: &[&[u32]]) -> usize {
    let shortest = group.iter().map(|p| p.len()).min().unwrap_or(0);
    group
        .windows(2)
        .map(|pair| common_ids(pair[0], pair[1]))
        .fold(shortest.saturating_sub(1), usize::min)
}

/// The end index of each group in the split of `prompts` that saves the most tokens (ties take the longer last
/// group). A group's head is the smallest of its prompts' lengths less one and of the common ids of neighbours,
/// which is the common head of all of them, so it is kept up to date as a group grows to the left.
fn best_split(prompts: &[&[u32]]) -> Vec<usize> {
    let n = prompts.len();
    // saved[i]: the most tokens saved over the first i prompts; from[i]: where its last group starts.
    let mut saved = vec![0usize; n + 1];
    let mut from = vec![0usize; n + 1];
    for end in 1..=n {
        let mut head = usize::MAX;
        for start in (0..end).rev() {
            head = head.min(prompts[start].len().saturating_sub(1));
            if start + 1 < end {
                head = head.min(common_ids(prompts[start], prompts[start + 1]));
            }
            let total = saved[start] + (end - start - 1) * head;
            if start + 1 == end || total >= saved[end] {
                saved[end] = total;
                from[end] = start;
            }
        }
    }
    let mut ends = Vec::new();
    let mut end = n;
    while end > 0 {
        ends.push(end);
        end = from[end];
    }
    ends.reverse();
    ends
}

/// How many ids `a` and `b` begin with in common.
fn common_ids(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
