//! The positive-aware false-negative filter (NV-Retriever's TopK-PercPos, docs/mining.md#false-negative-filter).
//!
//! A retrieved document that scores close to (or above) the query's positives is more likely an unlabelled
//! positive than a negative; training on it as a negative teaches the model the wrong thing. The filter keeps a
//! candidate only below a ceiling derived from the weakest positive, and only inside a rank window.

use serde::{Deserialize, Serialize};

use super::error::MineError;
use super::select::{score_cmp, Hit};

/// Which rule a candidate failed. When several apply, the first in this order is recorded (the order of the
/// variants), so the drop counts add up to the number of dropped candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilterKind {
    /// Outside `[min_rank, max_rank]`.
    RankWindow,
    /// At or above `max_score`.
    MaxScore,
    /// At or above the weakest positive less the relative margin.
    RelativeMargin,
    /// At or above the weakest positive less the absolute margin.
    AbsoluteMargin,
}

impl FilterKind {
    pub const ALL: [FilterKind; 4] = [
        FilterKind::RankWindow,
        FilterKind::MaxScore,
        FilterKind::RelativeMargin,
        FilterKind::AbsoluteMargin,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FilterKind::RankWindow => "rank window",
            FilterKind::MaxScore => "max score",
            FilterKind::RelativeMargin => "relative margin",
            FilterKind::AbsoluteMargin => "absolute margin",
        }
    }
}

/// The filter's settings; `None` switches a rule off (in a pipeline file, which has no null: `false` or `"off"`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterConfig {
    /// Keep only scores below `min_pos - |min_pos| x relative_margin`: `min_pos x (1 - margin)` for the usual
    /// positive scores (TopK-PercPos, 0.05 in the paper), and still below the positive when it scores negative.
    #[serde(deserialize_with = "number_or_off")]
    pub relative_margin: Option<f32>,
    /// Keep only scores below `min_pos - absolute_margin`.
    #[serde(deserialize_with = "number_or_off")]
    pub absolute_margin: Option<f32>,
    /// Keep only scores below this.
    #[serde(deserialize_with = "number_or_off")]
    pub max_score: Option<f32>,
    /// First rank kept (1-based, in the query's candidate list, which excludes its positives).
    pub min_rank: u32,
    /// Last rank kept.
    pub max_rank: Option<u32>,
}

/// A rule's setting as a pipeline file can write it: a number, or `false` / `"off"` (or null, in JSON) for none.
fn number_or_off<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<f32>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Setting {
        Number(f32),
        Flag(bool),
        Word(String),
    }
    match Option::<Setting>::deserialize(deserializer)? {
        None | Some(Setting::Flag(false)) => Ok(None),
        Some(Setting::Number(value)) => Ok(Some(value)),
        Some(Setting::Word(word)) if word == "off" => Ok(None),
        Some(Setting::Flag(true)) | Some(Setting::Word(_)) => Err(serde::de::Error::custom(
            "expected a number, or false / \"off\" to switch the rule off",
        )),
    }
}

impl Default for FilterConfig {
    fn default() -> Self {
        Self {
            relative_margin: Some(0.05),
            absolute_margin: None,
            max_score: None,
            min_rank: 1,
            max_rank: None,
        }
    }
}

impl FilterConfig {
    pub fn validate(&self) -> Result<(), MineError> {
        let invalid = |field, value: String, reason| MineError::FilterConfig {
            field,
            value,
            reason,
        };
        if let Some(margin) = self.relative_margin {
            if !(0.0..1.0).contains(&margin) {
                return Err(invalid(
                    "relative_margin",
                    margin.to_string(),
                    "must be in [0, 1)",
                ));
            }
        }
        if let Some(margin) = self.absolute_margin {
            if !(margin >= 0.0 && margin.is_finite()) {
                return Err(invalid(
                    "absolute_margin",
                    margin.to_string(),
                    "must be finite and >= 0",
                ));
            }
        }
        if let Some(max) = self.max_score {
            if !max.is_finite() {
                return Err(invalid("max_score", max.to_string(), "must be finite"));
            }
        }
        if self.min_rank == 0 {
            return Err(invalid("min_rank", "0".into(), "ranks start at 1"));
        }
        if let Some(max_rank) = self.max_rank {
            if max_rank < self.min_rank {
                return Err(invalid(
                    "max_rank",
                    max_rank.to_string(),
                    "must be >= min_rank",
                ));
            }
        }
        Ok(())
    }

    /// The score ceiling of each score rule for a query whose weakest positive scores `min_positive` (`None` for
    /// a query without positives, where the positive-aware rules cannot apply).
    fn ceilings(&self, min_positive: Option<f32>) -> [(FilterKind, Option<f32>); 3] {
        [
            (FilterKind::MaxScore, self.max_score),
            (
                FilterKind::RelativeMargin,
                self.relative_margin
                    .zip(min_positive)
                    .map(|(margin, min)| min - min.abs() * margin),
            ),
            (
                FilterKind::AbsoluteMargin,
                self.absolute_margin
                    .zip(min_positive)
                    .map(|(margin, min)| min - margin),
            ),
        ]
    }
}

/// A retrieved document with its 1-based rank in the query's candidate list.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Candidate {
    pub doc: u32,
    pub score: f32,
    pub rank: u32,
}

/// One query's candidates split by the filter.
#[derive(Debug, Clone, PartialEq)]
pub struct Filtered {
    /// Kept candidates, in rank order.
    pub eligible: Vec<Candidate>,
    /// Dropped candidates with the rule that dropped them, in rank order.
    pub dropped: Vec<(Candidate, FilterKind)>,
    /// The weakest positive's score, if the query has positives.
    pub min_positive: Option<f32>,
    /// The effective score ceiling (the lowest of the active rules'), if any rule set one: provenance for the
    /// negatives sampled from `eligible`.
    pub ceiling: Option<f32>,
    /// The settings that produced this split.
    pub config: FilterConfig,
}

/// Splits a query's ranked candidates (best first, as [`exact_top_k`](super::exact_top_k) returns them, without
/// the query's positives) into eligible and dropped. `positive_scores` are the scores of the query's positives
/// against it. `query` names the query in errors.
pub fn filter_candidates(
    query: &str,
    candidates: &[Hit],
    positive_scores: &[f32],
    config: &FilterConfig,
) -> Result<Filtered, MineError> {
    config.validate()?;
    check_scores(query, candidates, positive_scores)?;
    let min_positive = positive_scores
        .iter()
        .copied()
        .min_by(|a, b| score_cmp(*a, *b));
    let ceilings = config.ceilings(min_positive);
    let ceiling = ceilings
        .iter()
        .filter_map(|(_, ceiling)| *ceiling)
        .min_by(|a, b| score_cmp(*a, *b));
    let mut filtered = Filtered {
        eligible: Vec::new(),
        dropped: Vec::new(),
        min_positive,
        ceiling,
        config: *config,
    };
    for (position, hit) in candidates.iter().enumerate() {
        let candidate = Candidate {
            doc: hit.doc,
            score: hit.score,
            rank: position as u32 + 1,
        };
        match verdict(&candidate, &ceilings, config) {
            None => filtered.eligible.push(candidate),
            Some(kind) => filtered.dropped.push((candidate, kind)),
        }
    }
    Ok(filtered)
}

/// The first rule (in [`FilterKind`] order) that drops `candidate`, or `None` to keep it.
fn verdict(
    candidate: &Candidate,
    ceilings: &[(FilterKind, Option<f32>); 3],
    config: &FilterConfig,
) -> Option<FilterKind> {
    let in_window = candidate.rank >= config.min_rank
        && config.max_rank.is_none_or(|max| candidate.rank <= max);
    if !in_window {
        return Some(FilterKind::RankWindow);
    }
    ceilings.iter().find_map(|&(kind, ceiling)| {
        ceiling
            .is_some_and(|ceiling| score_cmp(candidate.score, ceiling).is_ge())
            .then_some(kind)
    })
}

/// Scores must be finite and candidates in rank order (scores non-increasing): the rank window relies on it.
fn check_scores(query: &str, candidates: &[Hit], positive_scores: &[f32]) -> Result<(), MineError> {
    let non_finite = |what, value| MineError::NonFiniteScore {
        query: query.to_owned(),
        what,
        value,
    };
    if let Some(&score) = positive_scores.iter().find(|score| !score.is_finite()) {
        return Err(non_finite("a positive", score));
    }
    if let Some(hit) = candidates.iter().find(|hit| !hit.score.is_finite()) {
        return Err(non_finite("a candidate", hit.score));
    }
    if let Some(position) = candidates
        .windows(2)
        .position(|pair| score_cmp(pair[0].score, pair[1].score).is_lt())
    {
        return Err(MineError::UnrankedCandidates {
            query: query.to_owned(),
            position: position + 1,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_margin_stays_below_a_negative_positive() {
        let config = FilterConfig::default();
        let ceilings = config.ceilings(Some(-0.2));
        assert_eq!(
            ceilings[1],
            (FilterKind::RelativeMargin, Some(-0.2 - 0.2 * 0.05))
        );
        let ceilings = config.ceilings(None);
        assert!(ceilings.iter().all(|(_, ceiling)| ceiling.is_none()));
    }

    #[test]
    fn invalid_configs_are_rejected() {
        let bad = [
            FilterConfig {
                relative_margin: Some(1.0),
                ..FilterConfig::default()
            },
            FilterConfig {
                absolute_margin: Some(-0.1),
                ..FilterConfig::default()
            },
            FilterConfig {
                max_score: Some(f32::NAN),
                ..FilterConfig::default()
            },
            FilterConfig {
                min_rank: 0,
                ..FilterConfig::default()
            },
            FilterConfig {
                min_rank: 5,
                max_rank: Some(4),
                ..FilterConfig::default()
            },
        ];
        for config in bad {
            assert!(
                matches!(config.validate(), Err(MineError::FilterConfig { .. })),
                "{config:?}"
            );
        }
        assert!(FilterConfig::default().validate().is_ok());
    }
}
