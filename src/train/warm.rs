//! Warm start: a LoRA run that begins from a previous adapter (`init_adapter`) instead of a fresh one, so a
//! scheduled retraining continues from the release it replaces.
//!
//! `init_adapter` names a release (its directory, or the release stage's directory holding `model/`), or a plain
//! PEFT adapter directory (a train stage's `adapter/`, or the train stage's directory). A release records the
//! sha256 of its base model's config.json and weight files; the run's `model` must hash the same, or the adapter
//! would be applied to weights it was not trained on and its loss would mean nothing. A plain adapter directory
//! records no base, so it is loaded as it is (PEFT's loader still refuses any shape or module mismatch).
//!
//! The adapter's rank, alpha, targets and dropout must equal the run's `lora_*` keys: the run's config then says
//! what is trained, and a warm start never silently changes the adapter's shape or scaling.

use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use super::config::{ModelSource, TrainConfig};
use super::TrainRunError;
use crate::digest::sha256_file;
use crate::models::adapters::lora::LoraConfig;
use crate::models::adapters::peft::ADAPTER_CONFIG;
use crate::schema::outputs;

/// The adapter directory `init_adapter` names, after checking a release's base hashes against the run's model.
pub fn resolve(path: &Path, config: &TrainConfig) -> Result<PathBuf, TrainRunError> {
    let candidates = [
        path.to_path_buf(),
        path.join(outputs::release::MODEL),
        path.join(outputs::train::ADAPTER),
    ];
    let Some(dir) = candidates
        .iter()
        .find(|dir| dir.join(ADAPTER_CONFIG).is_file())
    else {
        return Err(TrainRunError::Data {
            path: path.to_path_buf(),
            message: format!(
                "`init_adapter`: no {ADAPTER_CONFIG} here, in {}/ (a release stage) or in {}/ (a train stage)",
                outputs::release::MODEL,
                outputs::train::ADAPTER
            ),
        });
    };
    if dir.join(outputs::release::MANIFEST).is_file() {
        check_base(dir, config)?;
    }
    Ok(dir.clone())
}

/// The part of a release's release.json a warm start reads: the base model's files and their hashes. Read here
/// rather than through [`crate::release`], which comes after training in the data flow.
#[derive(Deserialize)]
struct ReleaseBase {
    base_model: Option<BaseRecord>,
}

#[derive(Deserialize)]
struct BaseRecord {
    path: PathBuf,
    files: Vec<BaseFile>,
}

#[derive(Deserialize)]
struct BaseFile {
    path: String,
    sha256: String,
}

/// Refuses a release whose recorded base files do not hash as the run's `model` directory's do.
fn check_base(release: &Path, config: &TrainConfig) -> Result<(), TrainRunError> {
    let refuse = |message: String| TrainRunError::Data {
        path: release.to_path_buf(),
        message,
    };
    let manifest_path = release.join(outputs::release::MANIFEST);
    let text =
        std::fs::read_to_string(&manifest_path).map_err(TrainRunError::io(&manifest_path))?;
    let manifest: ReleaseBase = serde_json::from_str(&text)
        .map_err(|e| refuse(format!("`init_adapter`: not a release manifest: {e}")))?;
    let Some(base) = manifest.base_model else {
        return Err(refuse(
            "`init_adapter`: the release is not an adapter release (it records no base model)"
                .into(),
        ));
    };
    let model = match config.model_source()? {
        ModelSource::Pretrained(dir) => dir,
        _ => {
            return Err(refuse(format!(
                "`init_adapter`: the release's adapter applies to the base model {}; set `model` to it instead of \
                 `init`",
                base.path.display()
            )))
        }
    };
    for file in &base.files {
        let plain = Path::new(&file.path)
            .components()
            .all(|c| matches!(c, Component::Normal(_)));
        if !plain {
            return Err(refuse(format!(
                "`init_adapter`: listed base file `{}` is not a plain relative path",
                file.path
            )));
        }
        let path = model.join(&file.path);
        let found = sha256_file(&path).map_err(TrainRunError::io(&path))?;
        if found != file.sha256 {
            return Err(refuse(format!(
                "`init_adapter`: the release's adapter was trained on a base whose {} has sha256 {}, but {} has \
                 sha256 {found}: not the same base model",
                file.path,
                file.sha256,
                path.display()
            )));
        }
    }
    Ok(())
}

/// Refuses an adapter whose rank, alpha, targets or dropout differ from the run's `lora_*` keys.
pub fn check_shape(
    dir: &Path,
    loaded: &LoraConfig,
    wanted: &LoraConfig,
) -> Result<(), TrainRunError> {
    let sorted = |targets: &[String]| {
        let mut targets = targets.to_vec();
        targets.sort();
        targets
    };
    let same = loaded.r == wanted.r
        && loaded.alpha == wanted.alpha
        && loaded.dropout == wanted.dropout
        && loaded.use_rslora == wanted.use_rslora
        && sorted(&loaded.target_modules) == sorted(&wanted.target_modules);
    if same {
        return Ok(());
    }
    Err(TrainRunError::Data {
        path: dir.to_path_buf(),
        message: format!(
            "`init_adapter`: the adapter has r {}, alpha {}, dropout {}, rslora {}, targets {:?}, but the run's \
             lora_r, lora_alpha, lora_dropout and lora_targets say r {}, alpha {}, dropout {}, rslora {}, targets \
             {:?}; set them to the adapter's",
            loaded.r,
            loaded.alpha,
            loaded.dropout,
            loaded.use_rslora,
            sorted(&loaded.target_modules),
            wanted.r,
            wanted.alpha,
            wanted.dropout,
            wanted.use_rslora,
            sorted(&wanted.target_modules),
        ),
    })
}
