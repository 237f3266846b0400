//! Image files for the formats that reference images by path: each image the shards use, written once, unchanged,
//! as `images/<image_id>.<ext>` beside the export.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

use arrow::array::{Array, LargeBinaryArray};

use super::ExportError;
use crate::dataset::Dataset;
use crate::shards::columns::strings;
use crate::shards::index::write_atomically;

/// Folder of the image files, beside the export.
pub const IMAGES_DIR: &str = "images";

/// image id -> path relative to the export's directory.
#[derive(Debug, Default)]
pub struct ImageFiles {
    paths: BTreeMap<String, String>,
}

impl ImageFiles {
    pub fn path(&self, image_id: &str) -> Option<&str> {
        self.paths.get(image_id).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.paths.len()
    }
}

/// Streams the images dataset at `dataset` and writes each image in `wanted` under `out_dir/images/`. Every wanted
/// image must be found.
pub fn write_images(
    dataset: &Path,
    wanted: &BTreeSet<String>,
    out_dir: &Path,
) -> Result<ImageFiles, ExportError> {
    let mut files = ImageFiles::default();
    if wanted.is_empty() {
        return Ok(files);
    }
    let folder = out_dir.join(IMAGES_DIR);
    fs::create_dir_all(&folder).map_err(ExportError::io(&folder))?;
    let images = Dataset::open(dataset)?;
    for batch in images.batches()? {
        let batch = batch?;
        let ids = strings(&batch, dataset, "image_id")?;
        let formats = strings(&batch, dataset, "format")?;
        let bytes = batch
            .column_by_name("bytes")
            .and_then(|c| c.as_any().downcast_ref::<LargeBinaryArray>())
            .ok_or_else(|| ExportError::Malformed {
                path: dataset.to_path_buf(),
                message: "column `bytes` is missing or not large_binary".into(),
            })?;
        for i in 0..batch.num_rows() {
            let id = ids.value(i);
            if !wanted.contains(id) || files.paths.contains_key(id) || bytes.is_null(i) {
                continue;
            }
            let name = file_name(id, formats.value(i)).ok_or_else(|| ExportError::Malformed {
                path: dataset.to_path_buf(),
                message: format!("image id `{id}` is not a hex digest"),
            })?;
            write_atomically(&folder.join(&name), bytes.value(i)).map_err(ExportError::from)?;
            files
                .paths
                .insert(id.to_string(), format!("{IMAGES_DIR}/{name}"));
        }
    }
    let missing: Vec<&String> = wanted
        .iter()
        .filter(|id| !files.paths.contains_key(*id))
        .collect();
    if let Some(first) = missing.first() {
        return Err(ExportError::MissingImages {
            path: dataset.to_path_buf(),
            count: missing.len(),
            first: first.to_string(),
        });
    }
    Ok(files)
}

/// `<id>.<ext>`, or `None` when the id could not be a safe file name (ids are lowercase hex sha256).
fn file_name(image_id: &str, format: &str) -> Option<String> {
    let hex = !image_id.is_empty()
        && image_id
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !hex {
        return None;
    }
    let ext = match format {
        "jpeg" => "jpg",
        f if !f.is_empty() && f.bytes().all(|b| b.is_ascii_alphanumeric()) => f,
        _ => "img",
    };
    Some(format!("{image_id}.{ext}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_refuse_ids_that_could_escape_the_folder() {
        assert_eq!(file_name("ab01", "jpeg").as_deref(), Some("ab01.jpg"));
        assert_eq!(file_name("ab01", "png").as_deref(), Some("ab01.png"));
        assert_eq!(file_name("../x", "png"), None);
        assert_eq!(file_name("", "png"), None);
        assert_eq!(file_name("ab", "p/g").as_deref(), Some("ab.img"));
    }
}
