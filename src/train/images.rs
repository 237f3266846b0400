//! The images a run uses, and their vision-tower outputs.
//!
//! The encoded bytes of every image the groups name are read once from the ingest stage's `images` dataset. The
//! number of image tokens of an image follows from its stored size alone, so prompts are built without decoding
//! anything. Pixels are decoded and patched when a batch needs them.
//!
//! A frozen tower gives the same output for an image every time it appears, and in a reranker corpus an image
//! appears in many groups (as a query, as a positive, as somebody's negative). With the cache on, the tower runs
//! once per distinct image for the whole run and its (detached) output is reused; off, it runs for every
//! occurrence, which is the plain path the benchmark compares against. A tower being trained is never cached.

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, LargeBinaryArray, StringArray, UInt32Array};
use candle_core::{Device, Tensor};

use super::failure::TrainRunError;
use crate::dataset::Dataset;
use crate::media::preprocess::{ImagePreprocessor, Qwen2VlParams, Qwen2VlProcessor};
use crate::models::qwen2_vl::{ImageGrid, VisionConfig, VisionTransformer};
use crate::models::recompute::RecomputeTape;

/// One stored image.
struct Stored {
    bytes: Vec<u8>,
    width: u32,
    height: u32,
}

/// The run's images by id, the processor that patches them, and the cache of tower outputs.
pub struct ImageBank {
    images: HashMap<String, Stored>,
    processor: Qwen2VlProcessor,
    patch_dim: usize,
    merge: usize,
    cache: Option<HashMap<String, Tensor>>,
    device: Device,
}

impl ImageBank {
    /// Reads the images in `wanted` from `dataset` and prepares a processor for `vision` within the pixel
    /// bounds. Ids that the dataset lacks are simply absent: [`Self::tokens`] reports them.
    pub fn load(
        dataset: &Dataset,
        wanted: &HashSet<&str>,
        vision: &VisionConfig,
        (min_pixels, max_pixels): (u64, u64),
        cache: bool,
        device: &Device,
    ) -> Result<Self, TrainRunError> {
        let mut images = HashMap::with_capacity(wanted.len());
        if !wanted.is_empty() {
            for batch in dataset.batches()? {
                let batch = batch?;
                let bad = |name: &str| TrainRunError::Data {
                    path: dataset.path().to_path_buf(),
                    message: format!("column `{name}` is missing or of the wrong type"),
                };
                let column = |name: &str| batch.column_by_name(name).ok_or_else(|| bad(name));
                let ids = column("image_id")?
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| bad("image_id"))?;
                let bytes = column("bytes")?
                    .as_any()
                    .downcast_ref::<LargeBinaryArray>()
                    .ok_or_else(|| bad("bytes"))?;
                let widths = column("width")?
                    .as_any()
                    .downcast_ref::<UInt32Array>()
                    .ok_or_else(|| bad("width"))?;
                let heights = column("height")?
                    .as_any()
                    .downcast_ref::<UInt32Array>()
                    .ok_or_else(|| bad("height"))?;
                for i in 0..batch.num_rows() {
                    let id = ids.value(i);
                    if wanted.contains(id) && !images.contains_key(id) && !bytes.is_null(i) {
                        images.insert(
                            id.to_string(),
                            Stored {
                                bytes: bytes.value(i).to_vec(),
                                width: widths.value(i),
                                height: heights.value(i),
                            },
                        );
                    }
                }
            }
        }
        let params = Qwen2VlParams {
            min_pixels,
            max_pixels,
            patch_size: vision.patch_size as u32,
            merge_size: vision.spatial_merge_size as u32,
            temporal_patch_size: vision.temporal_patch_size as u32,
            ..Qwen2VlParams::default()
        };
        let processor = Qwen2VlProcessor::new(params).map_err(TrainRunError::model)?;
        Ok(Self {
            images,
            processor,
            patch_dim: vision.patch_dim(),
            merge: vision.spatial_merge_size,
            cache: cache.then(HashMap::new),
            device: device.clone(),
        })
    }

    /// The patch grid `id` is processed at; `Err` says why the image cannot be used.
    pub fn grid(&self, id: &str) -> Result<ImageGrid, String> {
        let stored = self
            .images
            .get(id)
            .ok_or_else(|| format!("image `{id}` is not in the images dataset"))?;
        let [t, h, w] = self
            .processor
            .grid_thw(stored.height, stored.width)
            .map_err(|e| format!("image `{id}`: {e}"))?;
        Ok(ImageGrid::new(t, h, w))
    }

    /// The number of image tokens `id` becomes in a prompt.
    pub fn tokens(&self, id: &str) -> Result<usize, String> {
        Ok(self.grid(id)?.merged_tokens(self.merge))
    }

    /// How many distinct images the tower has embedded and kept.
    pub fn cached(&self) -> usize {
        self.cache.as_ref().map_or(0, HashMap::len)
    }

    /// The tower's output for `ids` (in order, repeats allowed), `(sum of tokens, hidden)`. With `frozen`, the
    /// output is detached and, with the cache on, computed once per distinct image. A tower that trains runs its
    /// blocks as segments of `tape` when one is given.
    pub fn embed<'a>(
        &mut self,
        tower: &'a VisionTransformer,
        ids: &[&str],
        frozen: bool,
        tape: Option<&RecomputeTape<'a>>,
    ) -> Result<Tensor, TrainRunError> {
        match (&self.cache, frozen) {
            (Some(_), true) => self.embed_cached(tower, ids),
            (_, true) => Ok(self.run_tower(tower, ids, None)?.detach()),
            (_, false) => self.run_tower(tower, ids, tape),
        }
    }

    fn embed_cached(
        &mut self,
        tower: &VisionTransformer,
        ids: &[&str],
    ) -> Result<Tensor, TrainRunError> {
        let missing: Vec<&str> = {
            let cache = self
                .cache
                .as_ref()
                .ok_or_else(|| TrainRunError::model("the image cache is off"))?;
            let mut seen = HashSet::new();
            ids.iter()
                .copied()
                .filter(|id| !cache.contains_key(*id) && seen.insert(*id))
                .collect()
        };
        // One image per tower pass: a batched pass may round differently with its batch-mates, and a cached
        // value must not depend on which batch first needed it (a resumed run meets images in other batches).
        let mut fresh = Vec::with_capacity(missing.len());
        for id in missing {
            fresh.push((id.to_string(), self.run_tower(tower, &[id], None)?.detach()));
        }
        if let Some(cache) = &mut self.cache {
            cache.extend(fresh);
        }
        let cache = self
            .cache
            .as_ref()
            .ok_or_else(|| TrainRunError::model("the image cache is off"))?;
        let parts = ids
            .iter()
            .map(|id| {
                cache.get(*id).cloned().ok_or_else(|| {
                    TrainRunError::model(format!("image `{id}` is missing from the cache"))
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// Decodes and patches `ids` and runs the tower over all of them at once.
    fn run_tower<'a>(
        &self,
        tower: &'a VisionTransformer,
        ids: &[&str],
        tape: Option<&RecomputeTape<'a>>,
    ) -> Result<Tensor, TrainRunError> {
        let mut pixels = Vec::with_capacity(ids.len());
        let mut grids = Vec::with_capacity(ids.len());
        for id in ids {
            let stored = self.images.get(*id).ok_or_else(|| {
                TrainRunError::model(format!("image `{id}` is not in the images dataset"))
            })?;
            let patched = self
                .processor
                .preprocess_bytes(&stored.bytes)
                .map_err(|e| TrainRunError::model(format!("image `{id}`: {e}")))?;
            let [t, h, w] = patched.grid_thw;
            let grid = ImageGrid::new(t, h, w);
            pixels.push(Tensor::from_vec(
                patched.patches,
                (grid.patches(), self.patch_dim),
                &self.device,
            )?);
            grids.push(grid);
        }
        let pixels = Tensor::cat(&pixels, 0)?;
        Ok(tower.forward_on(&pixels, &grids, tape)?)
    }
}
