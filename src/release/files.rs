//! The base model's non-weight files that a release carries: configuration, tokenizer, chat template and image
//! processor, so that the release directory loads with transformers' `from_pretrained` like the base does. Its
//! license files come along too, since a derivative is bound by them.

use std::fs;
use std::path::Path;

use serde_json::json;

use super::ReleaseError;
use crate::media::preprocess::{ImageBackend, PreprocessorConfig, ProcessorKind};
use crate::models::formats::weights::{INDEX_FILE, SINGLE_FILE};
use crate::models::qwen2_vl::{Qwen2VlModel, VisionConfig};
use crate::models::text::prompt_format::PROMPT_FILE;

/// Files of a Hugging Face model directory that describe the model without being its weights. config.json and
/// tokenizer.json are required; the others are copied when the base has them.
pub const MODEL_FILES: [&str; 14] = [
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "merges.txt",
    "tokenizer.model",
    "chat_template.json",
    "chat_template.jinja",
    PreprocessorConfig::FILE_NAME,
    "video_preprocessor_config.json",
    "processor_config.json",
];

const REQUIRED_FILES: [&str; 2] = ["config.json", "tokenizer.json"];

/// License texts a model directory may carry.
pub const LICENSE_FILES: [&str; 5] = ["LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "NOTICE"];

/// The inference bounds on image size of docs/method.md#image-bounds, in merged tokens: `min_pixels = 4 * f^2`,
/// `max_pixels = 1280 * f^2` for `f = patch_size * merge_size` (28 for the released checkpoints).
const MIN_MERGED_TOKENS: usize = 4;
const MAX_MERGED_TOKENS: usize = 1280;

/// What [`copy_model_files`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopiedFiles {
    /// Names copied from the base, in [`MODEL_FILES`] then [`LICENSE_FILES`] order.
    pub copied: Vec<String>,
    /// Whether preprocessor_config.json was written by umrank because the base had none.
    pub generated_preprocessor: bool,
}

/// Copies the prompt record training wrote beside its adapter or model into `out`, so that the release scores
/// with the prompt it was trained with (a run from before prompt formats has none and scores with `paper`).
pub fn copy_prompt_record(trained: &Path, out: &Path) -> Result<(), ReleaseError> {
    let from = trained.join(PROMPT_FILE);
    if from.is_file() {
        let to = out.join(PROMPT_FILE);
        fs::copy(&from, &to).map_err(ReleaseError::io(&from))?;
    }
    Ok(())
}

/// Copies the base's model and license files into `out`. A vision-language base without an image processor
/// config gets one written from its vision config, so that the release can be loaded with its processor, and the
/// config names the image processor backend the model was trained with (see [`name_image_backend`]).
pub fn copy_model_files(
    base: &Path,
    out: &Path,
    backend: ImageBackend,
) -> Result<CopiedFiles, ReleaseError> {
    fs::create_dir_all(out).map_err(ReleaseError::io(out))?;
    for required in REQUIRED_FILES {
        let path = base.join(required);
        if !path.is_file() {
            return Err(ReleaseError::Io {
                path,
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "a release needs the base model's config and tokenizer",
                ),
            });
        }
    }
    let mut result = CopiedFiles {
        copied: copy_present(base, out, &MODEL_FILES)?,
        generated_preprocessor: false,
    };
    result.copied.extend(copy_license_files(base, out)?);
    if Qwen2VlModel::is_vl_dir(base) && !base.join(PreprocessorConfig::FILE_NAME).is_file() {
        write_preprocessor_config(
            &base.join("config.json"),
            &out.join(PreprocessorConfig::FILE_NAME),
        )?;
        result.generated_preprocessor = true;
    }
    name_image_backend(&out.join(PreprocessorConfig::FILE_NAME), backend)?;
    Ok(result)
}

/// Sets a Qwen2-VL image processor config's `image_processor_type` to the class of `backend` in transformers 5
/// (`Qwen2VLImageProcessor` for torchvision, `Qwen2VLImageProcessorPil` for PIL), which is how umrank reads the
/// backend back when it scores the release; other processors' configs and absent files are left as they are.
fn name_image_backend(path: &Path, backend: ImageBackend) -> Result<(), ReleaseError> {
    if !path.is_file() {
        return Ok(());
    }
    let parsed = PreprocessorConfig::from_file(path)
        .map_err(|e| ReleaseError::invalid(path, e.to_string()))?;
    let named = parsed.image_processor_type.is_some() || parsed.feature_extractor_type.is_some();
    if named && parsed.kind().ok() != Some(ProcessorKind::Qwen2Vl) {
        return Ok(());
    }
    let text = fs::read_to_string(path).map_err(ReleaseError::io(path))?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ReleaseError::invalid(path, e.to_string()))?;
    let class = match backend {
        ImageBackend::Torchvision => "Qwen2VLImageProcessor",
        ImageBackend::Pil => "Qwen2VLImageProcessorPil",
    };
    json["image_processor_type"] = json!(class);
    let text = serde_json::to_string_pretty(&json)
        .map_err(|e| ReleaseError::invalid(path, e.to_string()))?;
    fs::write(path, text + "\n").map_err(ReleaseError::io(path))
}

/// Copies the license texts `from` has into `out`; returns their names.
pub fn copy_license_files(from: &Path, out: &Path) -> Result<Vec<String>, ReleaseError> {
    copy_present(from, out, &LICENSE_FILES)
}

/// Copies each of `names` that is a file in `from`; returns the names copied, in order.
fn copy_present(from: &Path, out: &Path, names: &[&str]) -> Result<Vec<String>, ReleaseError> {
    let mut copied = Vec::new();
    for name in names {
        let source = from.join(name);
        if source.is_file() {
            let to = out.join(name);
            fs::copy(&source, &to).map_err(ReleaseError::io(&to))?;
            copied.push(name.to_string());
        }
    }
    Ok(copied)
}

/// A Qwen2-VL image processor config matching the model's vision tower, with the pixel bounds of
/// docs/method.md#image-bounds.
fn write_preprocessor_config(model_config: &Path, out: &Path) -> Result<(), ReleaseError> {
    let text = fs::read_to_string(model_config).map_err(ReleaseError::io(model_config))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ReleaseError::invalid(model_config, e.to_string()))?;
    let vision = VisionConfig::from_model_config(&json)
        .map_err(|e| ReleaseError::invalid(model_config, e.to_string()))?;
    let factor = vision.patch_size * vision.spatial_merge_size;
    let (min_pixels, max_pixels) = (
        MIN_MERGED_TOKENS * factor * factor,
        MAX_MERGED_TOKENS * factor * factor,
    );
    let processor_class = match json.get("model_type").and_then(|t| t.as_str()) {
        Some("qwen2_5_vl") => "Qwen2_5_VLProcessor",
        _ => "Qwen2VLProcessor",
    };
    let config = json!({
        "do_convert_rgb": true,
        "do_normalize": true,
        "do_rescale": true,
        "do_resize": true,
        "image_mean": [0.48145466, 0.4578275, 0.40821073],
        "image_processor_type": "Qwen2VLImageProcessor",
        "image_std": [0.26862954, 0.26130258, 0.27577711],
        "max_pixels": max_pixels,
        "merge_size": vision.spatial_merge_size,
        "min_pixels": min_pixels,
        "patch_size": vision.patch_size,
        "processor_class": processor_class,
        "resample": 3,
        "rescale_factor": 1.0 / 255.0,
        "size": {"longest_edge": max_pixels, "shortest_edge": min_pixels},
        "temporal_patch_size": vision.temporal_patch_size,
    });
    let text = serde_json::to_string_pretty(&config)
        .map_err(|e| ReleaseError::invalid(out, e.to_string()))?;
    fs::write(out, text + "\n").map_err(ReleaseError::io(out))
}

/// The weight files of a model directory: the shards its index names (and the index), or model.safetensors.
pub fn weight_files(dir: &Path) -> Result<Vec<String>, ReleaseError> {
    let index = dir.join(INDEX_FILE);
    if index.is_file() {
        let mut files = shard_names(&index)?;
        files.push(INDEX_FILE.to_string());
        return Ok(files);
    }
    if dir.join(SINGLE_FILE).is_file() {
        return Ok(vec![SINGLE_FILE.to_string()]);
    }
    Err(ReleaseError::Io {
        path: dir.join(SINGLE_FILE),
        source: std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("no weights ({SINGLE_FILE} or {INDEX_FILE})"),
        ),
    })
}

/// The distinct shard files a `model.safetensors.index.json` maps tensors to, sorted; each must be a plain file
/// name next to the index.
pub fn shard_names(index: &Path) -> Result<Vec<String>, ReleaseError> {
    let text = fs::read_to_string(index).map_err(ReleaseError::io(index))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ReleaseError::invalid(index, e.to_string()))?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ReleaseError::invalid(index, "no `weight_map` object"))?;
    let mut names = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .filter(|f| !f.is_empty() && !f.contains(['/', '\\']) && *f != "..")
            .ok_or_else(|| {
                ReleaseError::invalid(index, format!("`weight_map.{tensor}` is not a file name"))
            })?;
        names.push(file.to_string());
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// The license named in the base's README.md front matter (`license: ...`), if any.
pub fn base_license(base: &Path) -> Option<String> {
    let text = fs::read_to_string(base.join("README.md")).ok()?;
    front_matter(&text)?.lines().find_map(|line| {
        let value = line
            .strip_prefix("license:")?
            .trim()
            .trim_matches(['"', '\'']);
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// The YAML between a leading `---` line and the next `---` line.
fn front_matter(text: &str) -> Option<&str> {
    let rest = text.strip_prefix("---\n")?;
    let end = rest.find("\n---")?;
    Some(&rest[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn license_comes_from_the_front_matter_only() {
        let dir = tempfile::tempdir().unwrap();
        let readme = dir.path().join("README.md");
        fs::write(
            &readme,
            "---\nlanguage: en\nlicense: apache-2.0\n---\nlicense: mit\n",
        )
        .unwrap();
        assert_eq!(base_license(dir.path()).as_deref(), Some("apache-2.0"));
        fs::write(&readme, "# A model\nlicense: mit\n").unwrap();
        assert_eq!(base_license(dir.path()), None);
    }

    #[test]
    fn release_configs_name_the_trained_image_backend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(PreprocessorConfig::FILE_NAME);
        let qwen = r#"{"image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 3136}"#;
        for (backend, class) in [
            (ImageBackend::Pil, "Qwen2VLImageProcessorPil"),
            (ImageBackend::Torchvision, "Qwen2VLImageProcessor"),
        ] {
            fs::write(&path, qwen).unwrap();
            name_image_backend(&path, backend).unwrap();
            let config = PreprocessorConfig::from_file(&path).unwrap();
            assert_eq!(config.backend(), backend);
            assert_eq!(config.image_processor_type.as_deref(), Some(class));
            assert_eq!(config.min_pixels, Some(3136));
        }
        let clip = r#"{"image_processor_type": "CLIPImageProcessor"}"#;
        fs::write(&path, clip).unwrap();
        name_image_backend(&path, ImageBackend::Pil).unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), clip);
        let absent = dir.path().join("absent.json");
        name_image_backend(&absent, ImageBackend::Pil).unwrap();
        assert!(!absent.exists());
    }

    #[test]
    fn shard_names_refuse_paths() {
        let dir = tempfile::tempdir().unwrap();
        let index = dir.path().join(INDEX_FILE);
        fs::write(
            &index,
            r#"{"weight_map": {"a": "m-2.safetensors", "b": "m-1.safetensors", "c": "m-1.safetensors"}}"#,
        )
        .unwrap();
        assert_eq!(
            shard_names(&index).unwrap(),
            ["m-1.safetensors", "m-2.safetensors"]
        );
        fs::write(&index, r#"{"weight_map": {"a": "../x.safetensors"}}"#).unwrap();
        let err = shard_names(&index).unwrap_err().to_string();
        assert!(err.contains("weight_map.a"), "{err}");
    }
}
