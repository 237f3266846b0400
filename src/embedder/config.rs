//! The `[embedder]` table: which data, what model shape, how long and how fast to train.

use serde::{Deserialize, Serialize};

use super::error::DualEncoderError;

/// The size of the CLIP-architecture model trained from scratch. Both towers share width, depth and heads; the
/// defaults train on the demo world in about a minute on two cores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Architecture {
    /// Hidden width of both transformers.
    pub width: usize,
    /// Encoder layers per tower.
    pub layers: usize,
    /// Attention heads; must divide `width`.
    pub heads: usize,
    /// Width of the shared embedding space (the vectors mining ranks with).
    pub projection_dim: usize,
    /// Side of the square the images are resized and centre-cropped to.
    pub image_size: usize,
    /// Side of a vision patch; must not exceed `image_size`.
    pub patch_size: usize,
    /// Longest text in tokens, end-of-text included; longer texts are truncated.
    pub max_text_tokens: usize,
}

impl Default for Architecture {
    fn default() -> Self {
        Self {
            width: 64,
            layers: 2,
            heads: 4,
            projection_dim: 64,
            image_size: 56,
            patch_size: 8,
            max_text_tokens: 64,
        }
    }
}

/// The stage's configuration. The seed is the pipeline's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DualEncoderConfig {
    /// The ingest stage whose queries, corpus, qrels and images are learned from.
    pub from: String,
    /// The split whose (query, positive) pairs are trained on.
    #[serde(default = "defaults::split")]
    pub split: String,
    /// A held-out split whose recall@1 is logged after every epoch; none to skip.
    #[serde(default = "defaults::val_split")]
    pub val_split: Option<String>,
    #[serde(default)]
    pub architecture: Architecture,
    #[serde(default = "defaults::epochs")]
    pub epochs: usize,
    /// Pairs per step; every other pair of the batch is a negative.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Peak learning rate (AdamW), reached after warmup and decayed to zero on a cosine.
    #[serde(default = "defaults::lr")]
    pub lr: f64,
    /// Share of the steps spent warming up.
    #[serde(default = "defaults::warmup_ratio")]
    pub warmup_ratio: f64,
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
}

mod defaults {
    pub fn split() -> String {
        "train".into()
    }
    pub fn val_split() -> Option<String> {
        Some("val".into())
    }
    pub fn epochs() -> usize {
        30
    }
    pub fn batch_size() -> usize {
        64
    }
    pub fn lr() -> f64 {
        2e-3
    }
    pub fn warmup_ratio() -> f64 {
        0.1
    }
    pub fn weight_decay() -> f64 {
        0.05
    }
}

impl DualEncoderConfig {
    /// Trains on `from`'s train split with every other setting at its default.
    pub fn new(from: &str) -> Self {
        Self {
            from: from.into(),
            split: defaults::split(),
            val_split: defaults::val_split(),
            architecture: Architecture::default(),
            epochs: defaults::epochs(),
            batch_size: defaults::batch_size(),
            lr: defaults::lr(),
            warmup_ratio: defaults::warmup_ratio(),
            weight_decay: defaults::weight_decay(),
        }
    }

    /// Rejects settings that cannot train, naming the field.
    pub fn check(&self) -> Result<(), DualEncoderError> {
        let problem = |field, problem: &str| {
            Err(DualEncoderError::Config {
                field,
                problem: problem.into(),
            })
        };
        let a = &self.architecture;
        if a.width == 0 || a.layers == 0 || a.projection_dim == 0 {
            return problem(
                "architecture",
                "width, layers and projection_dim must be positive",
            );
        }
        if a.heads == 0 || a.width % a.heads != 0 {
            return problem("architecture.heads", "must divide architecture.width");
        }
        if a.patch_size == 0 || a.patch_size > a.image_size {
            return problem(
                "architecture.patch_size",
                "must be positive and at most architecture.image_size",
            );
        }
        if a.max_text_tokens < 2 {
            return problem(
                "architecture.max_text_tokens",
                "must leave room for a word and the end-of-text token",
            );
        }
        if self.epochs == 0 {
            return problem("epochs", "must be positive");
        }
        if self.batch_size < 2 {
            return problem(
                "batch_size",
                "must be at least 2: the other pairs of a batch are the negatives",
            );
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return problem("lr", "must be a positive number");
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return problem("warmup_ratio", "must be in [0, 1)");
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return problem("weight_decay", "must be a non-negative number");
        }
        Ok(())
    }
}
