//! The data-parallel group of this process, when it was launched as one rank of several (`--data-parallel`).
//!
//! The command line installs it once, before the pipeline runs; the `train` stage finds it here and trains as
//! rank 0 of the group instead of alone. A global rather than a parameter because stages are built from the
//! pipeline's config, which says what to train, not how the process was launched (that must not change the
//! stage's fingerprint: a run resumes with any number of ranks).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};

use super::collective::Collective;
use super::error::DistributedError;
use super::store::Store;

/// This process's rank among the others, and the store they share.
pub struct ProcessGroup {
    pub collective: Box<dyn Collective + Send + Sync>,
    pub store: Arc<dyn Store>,
    /// The number of the next training job rank 0 hands out.
    next_job: AtomicU64,
    /// Held while a training runs: the ranks run one training at a time, in the order rank 0 handed them out.
    training: Mutex<()>,
}

impl ProcessGroup {
    pub fn new(collective: Box<dyn Collective + Send + Sync>, store: Arc<dyn Store>) -> Self {
        Self {
            collective,
            store,
            next_job: AtomicU64::new(0),
            training: Mutex::new(()),
        }
    }

    /// Takes the group for one training, and the store key under which rank 0 hands it to the other ranks.
    pub fn begin_job(&self) -> (MutexGuard<'_, ()>, String) {
        let guard = self
            .training
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let job = self.next_job.fetch_add(1, Ordering::SeqCst);
        (guard, job_key(job))
    }

    /// The key of the next job, without taking the group: what rank 0 sets to say that no training follows.
    pub fn next_job_key(&self) -> String {
        job_key(self.next_job.load(Ordering::SeqCst))
    }
}

/// The store key of training job `n`.
pub fn job_key(n: u64) -> String {
    format!("train/job/{n}")
}

static GROUP: OnceLock<ProcessGroup> = OnceLock::new();

/// Makes `group` this process's group. Only once per process.
pub fn install(group: ProcessGroup) -> Result<&'static ProcessGroup, DistributedError> {
    GROUP.set(group).map_err(|_| DistributedError::Collective {
        op: "install",
        message: "this process already belongs to a data-parallel group".into(),
    })?;
    installed().ok_or_else(|| DistributedError::Collective {
        op: "install",
        message: "the group was not kept".into(),
    })
}

/// This process's group, if it has one.
pub fn installed() -> Option<&'static ProcessGroup> {
    GROUP.get()
}
