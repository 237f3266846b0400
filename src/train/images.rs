//! The images a run uses, and their vision-tower outputs.
//!
//! Where each image the groups name is in the ingest stage's `images` dataset, and its stored size, are read once
//! (the small columns only); an image's encoded bytes are read when a batch needs its pixels, so the run's host
//! memory does not grow with the corpus's images (M-BEIR's are tens of GB). The number of image tokens of an image
//! follows from its stored size and the pixel bounds alone, so prompts are built without decoding anything.
//!
//! A frozen tower gives the same output for an image every time it appears, and in a reranker corpus an image
//! appears in many groups (as a query, as a positive, as somebody's negative). With the cache on, the tower's
//! (detached) output for an image is kept in host memory and reused, within a byte budget beyond which the outputs
//! used least recently are dropped (and computed again if their image comes back); off, the tower runs for every
//! occurrence, which is the plain path the benchmark compares against. A tower being trained is never cached.

use std::collections::{BTreeMap, HashMap, HashSet};

use candle_core::{Device, Tensor};

use super::failure::TrainRunError;
use crate::dataset::Dataset;
use crate::media::image_table::ImageTable;
use crate::media::preprocess::{
    ImageBackend, ImagePreprocessor, ImageTokenCounts, Qwen2VlParams, Qwen2VlProcessor,
};
use crate::models::layers::recompute::RecomputeTape;
use crate::models::qwen2_vl::{ImageGrid, VisionConfig, VisionTransformer};

/// The run's images by id, the processor that patches them, and the cache of tower outputs.
pub struct ImageBank {
    images: ImageTable,
    processor: Qwen2VlProcessor,
    patch_dim: usize,
    merge: usize,
    cache: Option<VisionCache>,
    device: Device,
}

/// Tower outputs by image id, in host memory within a byte budget: storing one beyond it drops the outputs used least recently.
/// A corpus's images can outnumber any memory (M-BEIR has millions), while the images a run meets again soon
/// (a query's image in each of its groups, a popular document) are the ones worth keeping.
struct VisionCache {
    budget: u64,
    bytes: u64,
    clock: u64,
    entries: HashMap<String, Cached>,
    /// Image ids by last use, oldest first.
    by_use: BTreeMap<u64, String>,
}

struct Cached {
    output: Tensor,
    bytes: u64,
    used: u64,
}

impl VisionCache {
    fn new(budget: u64) -> Self {
        Self {
            budget,
            bytes: 0,
            clock: 0,
            entries: HashMap::new(),
            by_use: BTreeMap::new(),
        }
    }

    fn len(&self) -> usize {
        self.entries.len()
    }

    /// The output of `id`, now the most recently used.
    fn get(&mut self, id: &str) -> Option<Tensor> {
        self.clock += 1;
        let entry = self.entries.get_mut(id)?;
        self.by_use.remove(&entry.used);
        entry.used = self.clock;
        self.by_use.insert(self.clock, id.to_string());
        Some(entry.output.clone())
    }

    /// Stores the output of `id`, then drops the least recently used outputs while the cache is over budget.
    fn insert(&mut self, id: &str, output: Tensor) {
        self.clock += 1;
        let bytes = (output.elem_count() * output.dtype().size_in_bytes()) as u64;
        if let Some(old) = self.entries.insert(
            id.to_string(),
            Cached {
                output,
                bytes,
                used: self.clock,
            },
        ) {
            self.by_use.remove(&old.used);
            self.bytes -= old.bytes;
        }
        self.by_use.insert(self.clock, id.to_string());
        self.bytes += bytes;
        while self.bytes > self.budget {
            let Some((_, oldest)) = self.by_use.pop_first() else {
                break;
            };
            if let Some(dropped) = self.entries.remove(&oldest) {
                self.bytes -= dropped.bytes;
            }
        }
    }
}

impl ImageBank {
    /// Notes where the images in `wanted` are in `dataset` and prepares a processor for `vision` within the
    /// pixel bounds. Ids that the dataset lacks are simply absent: [`Self::tokens`] reports them. `cache_budget`
    /// turns the cache of a frozen tower's outputs on, holding at most that many bytes.
    pub fn load(
        dataset: &Dataset,
        wanted: &HashSet<&str>,
        vision: &VisionConfig,
        (min_pixels, max_pixels): (u64, u64),
        backend: ImageBackend,
        cache_budget: Option<u64>,
        device: &Device,
    ) -> Result<Self, TrainRunError> {
        let images = ImageTable::locate(dataset, wanted).map_err(|e| TrainRunError::Data {
            path: dataset.path().to_path_buf(),
            message: e.to_string(),
        })?;
        let params = Qwen2VlParams {
            min_pixels,
            max_pixels,
            backend,
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
            cache: cache_budget.map(VisionCache::new),
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

    /// The token counts of the run's images within its pixel bounds (images that cannot be used left out);
    /// `None` without images.
    pub fn token_counts(&self) -> Option<ImageTokenCounts> {
        ImageTokenCounts::of(
            self.images
                .ids()
                .filter_map(|id| self.tokens(id).ok())
                .collect(),
        )
    }

    /// How many distinct images' tower outputs the cache holds.
    pub fn cached(&self) -> usize {
        self.cache.as_ref().map_or(0, VisionCache::len)
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
        let mut batch: HashMap<&str, Tensor> = HashMap::new();
        for &id in ids {
            if batch.contains_key(id) {
                continue;
            }
            let cached = self.cache.as_mut().and_then(|cache| cache.get(id));
            let output = match cached {
                Some(output) => output.to_device(&self.device)?,
                // One image per tower pass: a batched pass may round differently with its batch-mates, and a
                // cached value must not depend on which batch first needed it (a resumed run meets images in
                // other batches).
                None => {
                    let output = self.run_tower(tower, &[id], None)?.detach();
                    if let Some(cache) = &mut self.cache {
                        cache.insert(id, output.to_device(&Device::Cpu)?);
                    }
                    output
                }
            };
            batch.insert(id, output);
        }
        let parts: Vec<Tensor> = ids.iter().map(|id| batch[id].clone()).collect();
        Ok(Tensor::cat(&parts, 0)?)
    }

    /// The encoded bytes of `ids`, read from the images dataset (one read per row group they are in).
    fn read_bytes(&self, ids: &[&str]) -> Result<HashMap<String, Vec<u8>>, TrainRunError> {
        let bytes = self
            .images
            .read(ids.iter().copied())
            .map_err(TrainRunError::model)?;
        match ids.iter().find(|id| !bytes.contains_key(**id)) {
            Some(missing) => Err(TrainRunError::model(format!(
                "image `{missing}` is not in the images dataset"
            ))),
            None => Ok(bytes),
        }
    }

    /// Reads, decodes and patches `ids` and runs the tower over all of them at once.
    fn run_tower<'a>(
        &self,
        tower: &'a VisionTransformer,
        ids: &[&str],
        tape: Option<&RecomputeTape<'a>>,
    ) -> Result<Tensor, TrainRunError> {
        let bytes = self.read_bytes(ids)?;
        let mut pixels = Vec::with_capacity(ids.len());
        let mut grids = Vec::with_capacity(ids.len());
        for id in ids {
            let patched = self
                .processor
                .preprocess_bytes(&bytes[*id])
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

#[cfg(test)]
mod tests {
    use super::*;

    fn output(values: usize) -> Tensor {
        Tensor::zeros(values, candle_core::DType::F32, &Device::Cpu).unwrap()
    }

    #[test]
    fn the_vision_cache_keeps_the_recently_used_outputs_within_its_budget() {
        let mut cache = VisionCache::new(3 * 16);
        for id in ["a", "b", "c"] {
            cache.insert(id, output(4));
        }
        assert_eq!((cache.len(), cache.bytes), (3, 48));
        assert!(cache.get("a").is_some());
        cache.insert("d", output(4));
        assert!(
            cache.get("b").is_none(),
            "the least recently used goes first"
        );
        assert!(cache.get("a").is_some() && cache.get("c").is_some() && cache.get("d").is_some());
        cache.insert("big", output(8));
        assert_eq!(cache.bytes, 48);
        assert!(cache.get("big").is_some());
        assert_eq!(cache.len(), 2);
        cache.insert("huge", output(100));
        assert_eq!(
            (cache.len(), cache.bytes),
            (0, 0),
            "an output over the budget is not kept"
        );
    }
}
