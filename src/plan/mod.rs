//! The memory plan: how much device memory a stage will need at its peak, estimated from its config and its
//! model's `config.json` alone, before any weight is read (or downloaded).
//!
//! A plan is a sum of parts: weights, what the optimiser keeps per trainable weight (gradients and their
//! accumulated sum, AdamW's moments and master copies), activations at the peak of the backward pass (with and
//! without layer recomputation), the attention kernel's buffers, the vision cache and the images of a batch.
//! Each part is counted from the code that allocates it ([`footprint`] for the per-token counts) at the largest
//! batch the config allows. `umrank run --plan` prints the plans; `umrank run` refuses to start a stage whose plan
//! does not fit the device and names the setting that would make it fit.

pub mod bytes;
pub mod device;
pub mod footprint;
pub mod inference;
pub mod shape;
pub mod train;

use std::path::PathBuf;

use serde_json::{json, Map, Value};

use crate::train::config::Recompute;

pub use bytes::{format_bytes, parse_bytes};
pub use shape::ModelShape;
pub use train::Target;

/// Why a stage cannot be planned.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("{0}")]
    Unplannable(String),
}

/// Each planned stage's name and its plan checked against the device, or why it could not be planned.
pub type StagePlans = Vec<(String, Result<Verdict, PlanError>)>;

/// One part of a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub name: &'static str,
    pub bytes: u64,
}

impl Part {
    pub fn new(name: &'static str, bytes: u64) -> Self {
        Self { name, bytes }
    }
}

/// A stage's estimated peak device memory, part by part.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct MemoryPlan {
    /// The parts, which sum to the peak.
    pub parts: Vec<Part>,
    /// A training stage's activations under each recomputation setting; the one its config uses is a part.
    pub activations: Option<[(Recompute, u64); 2]>,
    /// Assumptions the estimate rests on.
    pub notes: Vec<String>,
}

impl MemoryPlan {
    pub fn new(parts: Vec<Part>) -> Self {
        Self {
            parts,
            ..Self::default()
        }
    }

    pub fn add(&mut self, part: Part) {
        self.parts.push(part);
    }

    pub fn peak_bytes(&self) -> u64 {
        self.parts.iter().map(|p| p.bytes).sum()
    }

    /// Whether the peak fits `device` bytes; `None` when the device's memory is unknown.
    pub fn fits(&self, device: Option<u64>) -> Option<bool> {
        device.map(|bytes| self.peak_bytes() <= bytes)
    }
}

/// A stage's plan checked against the device.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub plan: MemoryPlan,
    pub device_bytes: Option<u64>,
    /// When the plan does not fit: the setting that would make it fit, with the peak it would have.
    pub fix: Option<String>,
}

impl Verdict {
    /// Checks `plan` against `device_bytes`; when it does not fit, the first of `alternatives` (each a change
    /// of settings and the plan it gives) that fits names the fix.
    pub fn new(
        plan: MemoryPlan,
        device_bytes: Option<u64>,
        alternatives: impl IntoIterator<Item = (String, MemoryPlan)>,
    ) -> Self {
        let fix = match plan.fits(device_bytes) {
            Some(false) => Some(
                alternatives
                    .into_iter()
                    .find(|(_, alternative)| alternative.fits(device_bytes) == Some(true))
                    .map(|(change, alternative)| {
                        format!("{change} (peak {})", format_bytes(alternative.peak_bytes()))
                    })
                    .unwrap_or_else(|| "no single setting makes it fit".into()),
            ),
            _ => None,
        };
        Self {
            plan,
            device_bytes,
            fix,
        }
    }

    pub fn fits(&self) -> Option<bool> {
        self.plan.fits(self.device_bytes)
    }

    /// `{"peak_bytes", "device_bytes", "fits", "parts", ...}` for `--plan --json`.
    pub fn to_json(&self) -> Value {
        let parts: Map<String, Value> = self
            .plan
            .parts
            .iter()
            .map(|p| (p.name.to_string(), json!(p.bytes)))
            .collect();
        let mut out = json!({
            "peak_bytes": self.plan.peak_bytes(),
            "device_bytes": self.device_bytes,
            "fits": self.fits(),
            "parts": parts,
        });
        if let Some(by_setting) = &self.plan.activations {
            out["activations_by_recompute"] = by_setting
                .iter()
                .map(|(setting, bytes)| (recompute_name(*setting).to_string(), json!(bytes)))
                .collect::<Map<_, _>>()
                .into();
        }
        if let Some(fix) = &self.fix {
            out["fix"] = json!(fix);
        }
        if !self.plan.notes.is_empty() {
            out["notes"] = json!(self.plan.notes);
        }
        out
    }

    /// The plan as lines of text, for `--plan`.
    pub fn render(&self) -> Vec<String> {
        let mut lines: Vec<String> = self
            .plan
            .parts
            .iter()
            .map(|p| format!("  {:<22}{:>12}", p.name, format_bytes(p.bytes)))
            .collect();
        if let Some(by_setting) = &self.plan.activations {
            let shown: Vec<String> = by_setting
                .iter()
                .map(|(setting, bytes)| {
                    format!(
                        "recompute = {}: {}",
                        recompute_name(*setting),
                        format_bytes(*bytes)
                    )
                })
                .collect();
            lines.push(format!("  (activations with {})", shown.join(", with ")));
        }
        lines.push(format!(
            "  {:<22}{:>12}",
            "peak",
            format_bytes(self.plan.peak_bytes())
        ));
        let device = self
            .device_bytes
            .map_or_else(|| "unknown".to_string(), format_bytes);
        let verdict = match self.fits() {
            Some(true) => "fits".to_string(),
            Some(false) => format!(
                "does NOT fit; {}",
                self.fix.as_deref().unwrap_or("no fix found")
            ),
            None => "unknown (give --device-memory)".to_string(),
        };
        lines.push(format!("  device memory {device}: {verdict}"));
        lines.extend(self.plan.notes.iter().map(|n| format!("  note: {n}")));
        lines
    }
}

fn recompute_name(setting: Recompute) -> &'static str {
    match setting {
        Recompute::None => "none",
        Recompute::Layers => "layers",
    }
}

/// What planning a stage needs besides its config.
pub struct PlanContext<'a> {
    pub target: Target,
    /// The device's memory, when known.
    pub device_bytes: Option<u64>,
    /// Where a pipeline stage's outputs are, for a model that another stage writes.
    pub stage_dir: &'a dyn Fn(&str) -> PathBuf,
}

/// The settings a search for a fix tries, from the current value down: halvings of `current` while at least
/// `floor`.
pub(crate) fn halvings(current: u64, floor: u64) -> impl Iterator<Item = u64> {
    std::iter::successors(Some(current / 2), |v| Some(v / 2))
        .take_while(move |&v| v >= floor && v > 0)
}
