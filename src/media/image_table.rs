//! The images dataset read by id, a few at a time. A corpus's images can outnumber any memory (M-BEIR has
//! millions), so a stage notes where each image it needs is (reading only the small id and size columns), then
//! reads the encoded bytes of a batch's images when the batch needs them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;

use arrow::array::{Array, LargeBinaryArray, RecordBatch, StringArray, UInt32Array};

use crate::dataset::{Dataset, DatasetError, RowGroupAt};
use crate::media::preprocess::{ImageTokenCounts, Qwen2VlProcessor};

/// Why the images dataset could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ImageTableError {
    #[error(transparent)]
    Dataset(#[from] DatasetError),
    #[error("{path}: column `{column}` is missing or of the wrong type")]
    Column { path: PathBuf, column: &'static str },
}

/// Where one image is, and its size in pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Located {
    at: RowGroupAt,
    row: usize,
    pub width: u32,
    pub height: u32,
}

/// The images of one dataset that a stage asked for, by id.
#[derive(Debug, Clone)]
pub struct ImageTable {
    dataset: Dataset,
    located: HashMap<String, Located>,
}

impl ImageTable {
    /// Notes where the images in `wanted` are. Ids the dataset lacks are absent from the table; the first row of
    /// an id that appears twice wins.
    pub fn locate(dataset: &Dataset, wanted: &HashSet<&str>) -> Result<Self, ImageTableError> {
        let mut located = HashMap::with_capacity(wanted.len());
        if !wanted.is_empty() {
            for group in dataset.row_groups(&["image_id", "width", "height"]) {
                let (at, batch) = group?;
                let ids: &StringArray = column(dataset, &batch, "image_id")?;
                let widths: &UInt32Array = column(dataset, &batch, "width")?;
                let heights: &UInt32Array = column(dataset, &batch, "height")?;
                for row in 0..batch.num_rows() {
                    let id = ids.value(row);
                    if wanted.contains(id) && !located.contains_key(id) {
                        let place = Located {
                            at,
                            row,
                            width: widths.value(row),
                            height: heights.value(row),
                        };
                        located.insert(id.to_string(), place);
                    }
                }
            }
        }
        Ok(Self {
            dataset: dataset.clone(),
            located,
        })
    }

    pub fn get(&self, id: &str) -> Option<&Located> {
        self.located.get(id)
    }

    /// How many vision tokens `processor` makes of the table's images, from their stored sizes alone (images
    /// whose size it refuses left out); `None` for an empty table.
    pub fn token_counts(&self, processor: &Qwen2VlProcessor) -> Option<ImageTokenCounts> {
        let counts = self
            .located
            .values()
            .filter_map(|place| processor.num_vision_tokens(place.height, place.width).ok())
            .collect();
        ImageTokenCounts::of(counts)
    }

    /// The ids in the table, in no particular order.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.located.keys().map(String::as_str)
    }

    /// The encoded bytes of those of `ids` that are in the table (one read per row group they are in); an id the
    /// table lacks is left out, for the caller to report.
    pub fn read<'a>(
        &self,
        ids: impl IntoIterator<Item = &'a str>,
    ) -> Result<HashMap<String, Vec<u8>>, ImageTableError> {
        let mut by_group: BTreeMap<RowGroupAt, Vec<(usize, &str)>> = BTreeMap::new();
        for id in ids {
            if let Some(place) = self.located.get(id) {
                by_group.entry(place.at).or_default().push((place.row, id));
            }
        }
        let mut out = HashMap::new();
        for (at, mut rows) in by_group {
            rows.sort_unstable();
            rows.dedup();
            let indexes: Vec<usize> = rows.iter().map(|(row, _)| *row).collect();
            let batch = self.dataset.read_rows(at, &indexes, &["bytes"])?;
            let bytes: &LargeBinaryArray = column(&self.dataset, &batch, "bytes")?;
            for (i, (_, id)) in rows.iter().enumerate() {
                let value = if bytes.is_null(i) {
                    &[][..]
                } else {
                    bytes.value(i)
                };
                out.insert(id.to_string(), value.to_vec());
            }
        }
        Ok(out)
    }
}

fn column<'b, T: 'static>(
    dataset: &Dataset,
    batch: &'b RecordBatch,
    name: &'static str,
) -> Result<&'b T, ImageTableError> {
    batch
        .column_by_name(name)
        .and_then(|column| column.as_any().downcast_ref::<T>())
        .ok_or_else(|| ImageTableError::Column {
            path: dataset.path().to_path_buf(),
            column: name,
        })
}
