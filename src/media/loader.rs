//! Turning a batch of image references into validated image records or reject reasons.
//!
//! Ingest hands over the image references of a batch of dataset rows and gets back, per reference and in the same
//! order, either an [`ImageRecord`] or an [`ImageReject`] naming the reference and the cause. Local files and
//! archive members are read and validated on a rayon pool; URLs are downloaded by the [`Fetcher`] meanwhile and
//! validated on the pool when they arrive. A reference repeated in the batch is loaded once.
//!
//! Memory: the records of a whole batch are held at once, so ingest should size batches in images, not rows of
//! the whole dataset. Archives are opened once per batch; batches that follow the archive order of the data read
//! each archive about once.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use reqwest::Url;

use super::archive::{read_members, ArchiveMember};
use super::fetch::{FetchConfig, Fetcher, FetcherError, DEFAULT_MAX_BYTES};
use super::local::read_file;
use super::locator::{DatasetRoot, Locator};
use super::record::ImageRecord;
use super::reject::ImageReject;
use super::validate::{validate, DEFAULT_MAX_PIXELS};

/// Limits and resources for loading images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOptions {
    /// Largest width x height accepted (decompression-bomb guard).
    pub max_pixels: u64,
    /// Largest local file or archive member accepted; downloads use `fetch.max_bytes`.
    pub max_bytes: u64,
    /// Threads reading and validating; 0 lets rayon choose (one per core).
    pub threads: usize,
    pub fetch: FetchConfig,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            max_pixels: DEFAULT_MAX_PIXELS,
            max_bytes: DEFAULT_MAX_BYTES,
            threads: 0,
            fetch: FetchConfig::default(),
        }
    }
}

/// Why an [`ImageLoader`] could not be set up; problems with single images are rejects, not errors.
#[derive(Debug, thiserror::Error)]
pub enum LoaderError {
    #[error("dataset root {} is not usable: {source}", path.display())]
    Root {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot build the image loading thread pool: {0}")]
    ThreadPool(#[from] rayon::ThreadPoolBuildError),
    #[error(transparent)]
    Fetcher(#[from] FetcherError),
}

/// Loads images for one dataset root; keep one for a whole ingest so its threads and connections are reused.
pub struct ImageLoader {
    root: DatasetRoot,
    max_pixels: u64,
    max_bytes: u64,
    pool: rayon::ThreadPool,
    fetcher: Fetcher,
}

/// The outcome for one distinct reference of a batch.
type Outcome = Result<ImageRecord, ImageReject>;

impl ImageLoader {
    pub fn new(root: &Path, options: LoadOptions) -> Result<Self, LoaderError> {
        let root = DatasetRoot::new(root).map_err(|source| LoaderError::Root {
            path: root.to_path_buf(),
            source,
        })?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.threads)
            .thread_name(|i| format!("umrank-images-{i}"))
            .build()?;
        Ok(ImageLoader {
            root,
            max_pixels: options.max_pixels,
            max_bytes: options.max_bytes,
            pool,
            fetcher: Fetcher::new(options.fetch)?,
        })
    }

    /// The dataset root, with symlinks resolved.
    pub fn root(&self) -> &Path {
        self.root.path()
    }

    /// Loads every reference, returning one outcome per reference in input order.
    pub fn load<S: AsRef<str> + Sync>(
        &self,
        references: &[S],
    ) -> Vec<Result<ImageRecord, ImageReject>> {
        let (distinct, slot_of) = deduplicate(references);
        let located: Vec<Result<Locator, ImageReject>> = self
            .pool
            .install(|| distinct.par_iter().map(|r| self.root.locate(r)).collect());
        let mut outcomes = self.load_located(located);
        for (outcome, reference) in outcomes.iter_mut().zip(&distinct) {
            if let Err(reject) = outcome {
                *reject = reject.clone().for_reference(reference);
            }
        }
        slot_of
            .into_iter()
            .map(|slot| outcomes[slot].clone())
            .collect()
    }

    /// Reads and validates located references, in order, overlapping downloads with local work.
    fn load_located(&self, located: Vec<Result<Locator, ImageReject>>) -> Vec<Outcome> {
        let sources = Sources::split(located);
        let mut finished: Vec<(usize, Outcome)> = sources
            .refused
            .into_iter()
            .map(|(slot, reject)| (slot, Err(reject)))
            .collect();
        std::thread::scope(|scope| {
            let downloads = scope.spawn(|| self.fetcher.fetch_all(&sources.urls));
            let local = self.pool.install(|| {
                let files = sources
                    .files
                    .par_iter()
                    .map(|path| self.to_record(read_file(path, self.max_bytes)));
                let members = read_members(&sources.members, self.max_bytes)
                    .into_par_iter()
                    .map(|bytes| self.to_record(bytes));
                let mut local: Vec<Outcome> = files.collect();
                local.par_extend(members);
                local
            });
            let local_slots = sources.file_slots.iter().chain(&sources.member_slots);
            finished.extend(local_slots.copied().zip(local));
            let downloaded = downloads
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
            let remote: Vec<Outcome> = self.pool.install(|| {
                downloaded
                    .into_par_iter()
                    .map(|bytes| self.to_record(bytes))
                    .collect()
            });
            finished.extend(sources.url_slots.iter().copied().zip(remote));
        });
        // Each slot was produced exactly once, so sorting by it restores input order one to one.
        finished.sort_unstable_by_key(|(slot, _)| *slot);
        finished.into_iter().map(|(_, outcome)| outcome).collect()
    }

    fn to_record(&self, bytes: Result<Vec<u8>, ImageReject>) -> Outcome {
        let bytes = bytes?;
        let info = validate(&bytes, self.max_pixels)?;
        Ok(ImageRecord::new(bytes, info))
    }
}

/// A batch's located references split by how their bytes are obtained; each `*_slots` vector holds the batch
/// positions of the items beside it.
#[derive(Default)]
struct Sources {
    refused: Vec<(usize, ImageReject)>,
    file_slots: Vec<usize>,
    files: Vec<PathBuf>,
    member_slots: Vec<usize>,
    members: Vec<ArchiveMember>,
    url_slots: Vec<usize>,
    urls: Vec<Url>,
}

impl Sources {
    fn split(located: Vec<Result<Locator, ImageReject>>) -> Self {
        let mut sources = Sources::default();
        for (slot, locator) in located.into_iter().enumerate() {
            match locator {
                Err(reject) => sources.refused.push((slot, reject)),
                Ok(Locator::File(path)) => {
                    sources.file_slots.push(slot);
                    sources.files.push(path);
                }
                Ok(Locator::Member(member)) => {
                    sources.member_slots.push(slot);
                    sources.members.push(member);
                }
                Ok(Locator::Url(url)) => {
                    sources.url_slots.push(slot);
                    sources.urls.push(url);
                }
            }
        }
        sources
    }
}

/// The distinct references in first-seen order, and for each input position the index of its distinct reference.
fn deduplicate<S: AsRef<str>>(references: &[S]) -> (Vec<&str>, Vec<usize>) {
    let mut first_seen: HashMap<&str, usize> = HashMap::new();
    let mut distinct = Vec::new();
    let slots = references
        .iter()
        .map(|reference| {
            let reference = reference.as_ref();
            *first_seen.entry(reference).or_insert_with(|| {
                distinct.push(reference);
                distinct.len() - 1
            })
        })
        .collect();
    (distinct, slots)
}
