//! The training loop: shuffled batches of pairs, the symmetric contrastive loss, AdamW on a warmup-cosine
//! schedule, and held-out recall after every epoch.

use std::collections::{BTreeMap, HashMap};

use candle_core::{Device, Tensor, Var, D};
use candle_nn::VarMap;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use tokenizers::Tokenizer;

use super::config::DualEncoderConfig;
use super::data::{Pair, PairSet, Pixels, Record};
use super::error::DualEncoderError;
use super::loss::symmetric_info_nce;
use super::vocab::{END_OF_TEXT_ID, PAD_ID};
use crate::models::embedders::clip::ClipModel;
use crate::models::embedders::clip_towers::l2_normalise;
use crate::optim::{AdamW, AdamWConfig};
use crate::optim::{Decay, Schedule};

/// What one epoch did, as the training log records it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochLog {
    pub epoch: usize,
    /// Optimizer steps taken by the end of the epoch.
    pub step: u64,
    /// Mean loss over the epoch's steps.
    pub loss: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Mean global gradient norm before clipping.
    pub grad_norm: f64,
    /// The learned inverse temperature, `exp(logit_scale)`.
    pub temperature_inverse: f64,
    /// Share of held-out queries whose top document, among all held-out positives, is one of theirs.
    pub val_recall_at_1: Option<f64>,
}

#[derive(Debug, Clone, Default)]
pub struct FitReport {
    pub epochs: Vec<EpochLog>,
    pub steps: u64,
}

/// Turns records into the model's inputs: token ids (truncated, end-of-text kept) and preprocessed pixels.
pub struct Inputs<'a> {
    tokens: HashMap<&'a str, Vec<u32>>,
    pixels: &'a Pixels,
    image_size: usize,
    device: Device,
}

impl<'a> Inputs<'a> {
    /// Tokenizes every text of `pairs` once.
    pub fn new(
        pairs: &'a PairSet,
        tokenizer: &Tokenizer,
        max_tokens: usize,
        pixels: &'a Pixels,
        image_size: usize,
        device: &Device,
    ) -> Result<Self, DualEncoderError> {
        let mut tokens = HashMap::new();
        for record in pairs
            .train
            .iter()
            .chain(&pairs.val)
            .flat_map(|p| [&p.query, &p.doc])
        {
            if let Some(text) = record.text.as_deref() {
                if !tokens.contains_key(text) {
                    tokens.insert(text, encode(tokenizer, text, max_tokens)?);
                }
            }
        }
        Ok(Self {
            tokens,
            pixels,
            image_size,
            device: device.clone(),
        })
    }

    /// Row-normalised embeddings `(records, P)` of `records`, computed as the embed stage computes them: text
    /// and image features normalised, summed when a record has both, and normalised again.
    pub fn embed(&self, model: &ClipModel, records: &[&Record]) -> candle_core::Result<Tensor> {
        let mut texts: Vec<&[u32]> = Vec::new();
        let mut images: Vec<&[f32]> = Vec::new();
        let mut rows: Vec<(Option<usize>, Option<usize>)> = Vec::with_capacity(records.len());
        for record in records {
            let text = record.text.as_deref().map(|t| {
                texts.push(self.tokens.get(t).map_or(&[][..], Vec::as_slice));
                texts.len() - 1
            });
            let image = match record.image_id.as_deref() {
                Some(id) => {
                    let Some(values) = self.pixels.get(id) else {
                        candle_core::bail!("image `{id}` was not preprocessed")
                    };
                    images.push(values);
                    Some(images.len() - 1)
                }
                None => None,
            };
            rows.push((text, image));
        }
        let mut parts = Vec::new();
        if !texts.is_empty() {
            parts.push(l2_normalise(&self.text_features(model, &texts)?)?);
        }
        if !images.is_empty() {
            parts.push(l2_normalise(&self.image_features(model, &images)?)?);
        }
        let Some(first) = parts.first() else {
            candle_core::bail!("no records to embed")
        };
        let dim = first.dim(1)?;
        parts.push(Tensor::zeros((1, dim), first.dtype(), &self.device)?);
        let table = Tensor::cat(&parts, 0)?;
        let zero_row = (texts.len() + images.len()) as u32;
        let pick = |index: Vec<u32>| -> candle_core::Result<Tensor> {
            table.index_select(&Tensor::new(index, &self.device)?, 0)
        };
        let text_rows = rows.iter().map(|(t, _)| t.map_or(zero_row, |t| t as u32));
        let image_rows = rows
            .iter()
            .map(|(_, i)| i.map_or(zero_row, |i| (texts.len() + i) as u32));
        l2_normalise(&(pick(text_rows.collect())? + pick(image_rows.collect())?)?)
    }

    fn text_features(&self, model: &ClipModel, texts: &[&[u32]]) -> candle_core::Result<Tensor> {
        let len = texts.iter().map(|t| t.len()).max().unwrap_or(1);
        let mut ids = Vec::with_capacity(texts.len() * len);
        let mut positions = Vec::with_capacity(texts.len());
        for text in texts {
            ids.extend_from_slice(text);
            ids.extend(std::iter::repeat_n(PAD_ID, len - text.len()));
            positions.push(text.len().saturating_sub(1));
        }
        let ids = Tensor::from_vec(ids, (texts.len(), len), &self.device)?;
        model.text_features(&ids, &positions)
    }

    fn image_features(&self, model: &ClipModel, images: &[&[f32]]) -> candle_core::Result<Tensor> {
        let side = self.image_size;
        let values: Vec<f32> = images.iter().flat_map(|v| v.iter().copied()).collect();
        let pixels = Tensor::from_vec(values, (images.len(), 3, side, side), &self.device)?;
        model.image_features(&pixels)
    }
}

/// The token ids of `text` ending in end-of-text, at most `max_tokens` of them.
fn encode(
    tokenizer: &Tokenizer,
    text: &str,
    max_tokens: usize,
) -> Result<Vec<u32>, DualEncoderError> {
    let encoding = tokenizer
        .encode(text, true)
        .map_err(|e| DualEncoderError::Tokenizer(format!("{text:?}: {e}")))?;
    let mut ids = encoding.get_ids().to_vec();
    if ids.len() > max_tokens {
        ids.truncate(max_tokens - 1);
        ids.push(END_OF_TEXT_ID);
    }
    Ok(ids)
}

/// The model's variables in name order, so that optimizer sums run in the same order on every run.
fn sorted_vars(varmap: &VarMap) -> Result<Vec<Var>, DualEncoderError> {
    let data = varmap.data().lock().map_err(|_| DualEncoderError::Config {
        field: "model",
        problem: "the variable map's lock is poisoned".into(),
    })?;
    let sorted: BTreeMap<&String, &Var> = data.iter().collect();
    Ok(sorted.into_values().cloned().collect())
}

/// The batches of one epoch: a seeded permutation of the pairs cut into `batch_size` chunks; a last chunk of one
/// pair has no negative and is dropped.
fn epoch_batches(pairs: usize, batch_size: usize, seed: u64, epoch: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..pairs).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed.wrapping_add(epoch as u64));
    order.shuffle(&mut rng);
    order
        .chunks(batch_size)
        .filter(|c| c.len() >= 2)
        .map(<[usize]>::to_vec)
        .collect()
}

/// Which pairs of a batch share their query or their document.
fn duplicates(batch: &[&Pair]) -> Vec<bool> {
    let mut same = Vec::with_capacity(batch.len() * batch.len());
    for a in batch {
        for b in batch {
            same.push(a.query == b.query || a.doc == b.doc);
        }
    }
    same
}

/// Steps in an epoch of `pairs` pairs: full batches, and the remainder unless it is a single pair.
pub fn steps_per_epoch(pairs: usize, batch_size: usize) -> u64 {
    (pairs / batch_size + usize::from(pairs % batch_size >= 2)) as u64
}

/// Trains `model` (whose variables are `varmap`'s) on `pairs.train`, calling `on_step` after every step.
pub fn fit(
    model: &ClipModel,
    varmap: &VarMap,
    inputs: &Inputs<'_>,
    pairs: &PairSet,
    config: &DualEncoderConfig,
    seed: u64,
    mut on_step: impl FnMut(u64, f64),
) -> Result<FitReport, DualEncoderError> {
    let total_steps = steps_per_epoch(pairs.train.len(), config.batch_size) * config.epochs as u64;
    let schedule = Schedule {
        peak_lr: config.lr,
        warmup_steps: (total_steps as f64 * config.warmup_ratio) as u64,
        total_steps,
        decay: Decay::Cosine,
        min_lr_ratio: 0.0,
    };
    schedule.check()?;
    let mut optimizer = AdamW::new(
        sorted_vars(varmap)?,
        AdamWConfig {
            weight_decay: config.weight_decay,
            ..AdamWConfig::default()
        },
    )?;
    let mut report = FitReport::default();
    for epoch in 0..config.epochs {
        let (mut loss_sum, mut norm_sum, mut lr, mut steps) = (0.0, 0.0, 0.0, 0u64);
        for batch in epoch_batches(pairs.train.len(), config.batch_size, seed, epoch) {
            let batch: Vec<&Pair> = batch.iter().map(|&i| &pairs.train[i]).collect();
            let loss = batch_loss(model, inputs, &batch)?;
            let grads = loss
                .backward()
                .map_err(DualEncoderError::compute("backward"))?;
            lr = schedule.lr(report.steps);
            let step = optimizer.step(&grads, lr)?;
            let value = loss
                .to_scalar::<f32>()
                .map_err(DualEncoderError::compute("loss"))? as f64;
            report.steps += 1;
            steps += 1;
            loss_sum += value;
            norm_sum += step.grad_norm;
            on_step(report.steps, value);
        }
        let val_recall_at_1 = match pairs.val.is_empty() {
            true => None,
            false => Some(recall_at_1(model, inputs, &pairs.val)?),
        };
        let temperature_inverse = model
            .logit_scale()
            .exp()
            .and_then(|t| t.to_scalar::<f32>())
            .map_err(DualEncoderError::compute("logit scale"))?
            as f64;
        let log = EpochLog {
            epoch: epoch + 1,
            step: report.steps,
            loss: loss_sum / steps.max(1) as f64,
            lr,
            grad_norm: norm_sum / steps.max(1) as f64,
            temperature_inverse,
            val_recall_at_1,
        };
        tracing::info!(
            "embedder: epoch {}/{}: loss {:.4}, held-out recall@1 {}",
            log.epoch,
            config.epochs,
            log.loss,
            log.val_recall_at_1
                .map_or("-".to_string(), |r| format!("{r:.3}"))
        );
        report.epochs.push(log);
    }
    Ok(report)
}

fn batch_loss(
    model: &ClipModel,
    inputs: &Inputs<'_>,
    batch: &[&Pair],
) -> Result<Tensor, DualEncoderError> {
    let records: Vec<&Record> = batch
        .iter()
        .map(|p| &p.query)
        .chain(batch.iter().map(|p| &p.doc))
        .collect();
    let compute = DualEncoderError::compute("forward");
    let embedded = inputs.embed(model, &records).map_err(compute)?;
    let n = batch.len();
    let loss = embedded
        .narrow(0, 0, n)
        .and_then(|q| Ok((q, embedded.narrow(0, n, n)?)))
        .and_then(|(q, d)| symmetric_info_nce(&q, &d, model.logit_scale(), &duplicates(batch)))
        .map_err(DualEncoderError::compute("loss"))?;
    Ok(loss)
}

/// Records embedded per forward pass when evaluating: bounds memory, not results.
const EVAL_CHUNK: usize = 256;

/// The share of held-out queries whose best-scoring document, among every held-out pair's document, is one of
/// their positives.
pub fn recall_at_1(
    model: &ClipModel,
    inputs: &Inputs<'_>,
    pairs: &[Pair],
) -> Result<f64, DualEncoderError> {
    let mut queries: BTreeMap<&str, (&Record, Vec<usize>)> = BTreeMap::new();
    let mut docs: Vec<&Record> = Vec::new();
    let mut doc_index: HashMap<&Record, usize> = HashMap::new();
    for pair in pairs {
        let next = docs.len();
        let d = *doc_index.entry(&pair.doc).or_insert(next);
        if d == next {
            docs.push(&pair.doc);
        }
        queries
            .entry(&pair.qid)
            .or_insert((&pair.query, Vec::new()))
            .1
            .push(d);
    }
    let query_records: Vec<&Record> = queries.values().map(|(q, _)| *q).collect();
    let q = embed_all(model, inputs, &query_records)?;
    let d = embed_all(model, inputs, &docs)?;
    let best = q
        .matmul(&d.t().map_err(DualEncoderError::compute("scores"))?)
        .and_then(|s| s.argmax(D::Minus1))
        .and_then(|b| b.to_vec1::<u32>())
        .map_err(DualEncoderError::compute("scores"))?;
    let hits = queries
        .values()
        .zip(&best)
        .filter(|((_, positives), best)| positives.contains(&(**best as usize)))
        .count();
    Ok(hits as f64 / queries.len() as f64)
}

fn embed_all(
    model: &ClipModel,
    inputs: &Inputs<'_>,
    records: &[&Record],
) -> Result<Tensor, DualEncoderError> {
    let chunks = records
        .chunks(EVAL_CHUNK)
        .map(|chunk| inputs.embed(model, chunk).map(|t| t.detach()))
        .collect::<candle_core::Result<Vec<_>>>()
        .map_err(DualEncoderError::compute("evaluation forward"))?;
    Tensor::cat(&chunks, 0).map_err(DualEncoderError::compute("evaluation forward"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epochs_are_seeded_permutations_without_single_pair_batches() {
        let a = epoch_batches(9, 4, 7, 0);
        assert_eq!(a, epoch_batches(9, 4, 7, 0));
        assert_ne!(a, epoch_batches(9, 4, 7, 1));
        assert_eq!(a.len(), 2, "the ninth pair alone would have no negative");
        assert_eq!(steps_per_epoch(9, 4), 2);
        assert_eq!(steps_per_epoch(10, 4), 3);
        let mut seen: Vec<usize> = a.concat();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 8);
    }
}
