//! The collective of a multi-process run over NCCL: one process per GPU, launched by torchrun or srun.
//!
//! Rank 0 makes NCCL's unique id and sets it in the rendezvous store; the other ranks read it there, and all
//! join one communicator on the GPU `cuda:LOCAL_RANK`. Tensors are summed in buckets: each bucket is one
//! contiguous device buffer made of whole tensors of one dtype (up to [`BUCKET_BYTES`]), so a step issues a
//! few large NCCL calls instead of one per parameter.
//!
//! NCCL does not notice that a peer died: a rank blocked in an all-reduce would wait forever. So a rank that
//! fails sets the store key `failed` to its rank and error ([`Collective::abort`]), and every rank runs a
//! watchdog thread that waits for that key and then ends its own process with an error naming the failed rank
//! ([`NcclCollective::watch`]). A rank that dies without saying so (killed, out of memory) is noticed by the
//! launcher instead: torchrun stops the other workers when one exits with an error, and `srun
//! --kill-on-bad-exit=1` does the same under Slurm.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use candle_core::backend::BackendStorage;
use candle_core::{CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};
use cudarc::nccl::{Comm, Id, ReduceOp};

use super::collective::Collective;
use super::error::DistributedError;
use super::launch::Launch;
use super::store::Store;

/// The most bytes one NCCL call sums (the size PyTorch's DDP uses for its buckets).
pub const BUCKET_BYTES: usize = 25 << 20;

const ID_KEY: &str = "nccl/unique-id";
const FAILED_KEY: &str = "failed";

/// A communicator that may move between threads: NCCL allows a communicator to be used from any thread as
/// long as calls on it do not overlap, which the mutex around it in [`NcclCollective`] ensures.
struct SharedComm(Comm);

// SAFETY: see above; every use of the inner `Comm` holds `NcclCollective::comm`'s lock.
unsafe impl Send for SharedComm {}

/// A rank of a run over NCCL.
pub struct NcclCollective {
    comm: std::sync::Mutex<SharedComm>,
    device: Device,
    store: Arc<dyn Store>,
    rank: usize,
    world: usize,
}

fn nccl(error: impl std::fmt::Debug) -> DistributedError {
    DistributedError::Nccl(format!("{error:?}"))
}

impl NcclCollective {
    /// Joins the communicator of the run `launch` describes on `device` (`cuda:LOCAL_RANK`), waiting up to
    /// `timeout` for rank 0's unique id.
    pub fn join(
        launch: &Launch,
        store: Arc<dyn Store>,
        device: &Device,
        timeout: Duration,
    ) -> Result<Self, DistributedError> {
        let Device::Cuda(cuda) = device else {
            return Err(DistributedError::Nccl(format!(
                "NCCL needs a CUDA device, not {device:?}: run with --device cuda"
            )));
        };
        let id = if launch.rank == 0 {
            let id = Id::new().map_err(nccl)?;
            let bytes: Vec<u8> = id.internal().iter().map(|&c| c as u8).collect();
            store.set(ID_KEY, &bytes)?;
            id
        } else {
            let bytes = store.get(ID_KEY, timeout)?;
            let internal: [std::ffi::c_char; 128] =
                std::array::from_fn(|i| bytes.get(i).copied().unwrap_or(0) as std::ffi::c_char);
            if bytes.len() != internal.len() {
                return Err(DistributedError::rendezvous(
                    store.location(),
                    format!("NCCL's unique id has {} bytes, not 128", bytes.len()),
                ));
            }
            Id::uninit(internal)
        };
        let comm =
            Comm::from_rank(cuda.cuda_stream(), launch.rank, launch.world, id).map_err(nccl)?;
        Ok(Self {
            comm: std::sync::Mutex::new(SharedComm(comm)),
            device: device.clone(),
            store,
            rank: launch.rank,
            world: launch.world,
        })
    }

    /// Starts the watchdog: a thread that waits on `store` (a connection of its own, since it blocks) for a
    /// failed rank and then ends this process with exit code 1, naming that rank. Set `finished` before a
    /// normal exit, so that rank 0 going away at the end is not taken for a failure.
    pub fn watch(store: Box<dyn Store>, rank: usize, finished: Arc<AtomicBool>) {
        let spawned = std::thread::Builder::new()
            .name("umrank-watchdog".into())
            .spawn(move || loop {
                let seen = store.wait(FAILED_KEY, Duration::from_secs(60));
                if finished.load(Ordering::SeqCst) {
                    return;
                }
                match seen {
                    Ok(None) => continue,
                    Ok(Some(message)) => {
                        tracing::error!("rank {rank} stops: {}", String::from_utf8_lossy(&message));
                    }
                    Err(e) => tracing::error!("rank {rank} stops: {e}"),
                }
                std::process::exit(1);
            });
        if let Err(e) = spawned {
            tracing::warn!("no watchdog for rank {rank}: {e}");
        }
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, SharedComm>, DistributedError> {
        self.comm.lock().map_err(|_| {
            DistributedError::Nccl("a thread panicked while using the communicator".into())
        })
    }

    /// Runs `op` on the tensors in buckets of one dtype and at most [`BUCKET_BYTES`], writing the results back.
    fn bucketed(&self, tensors: &mut [Tensor], op: &NcclOp<'_>) -> Result<(), DistributedError> {
        let mut order: Vec<usize> = (0..tensors.len()).collect();
        order.sort_by_key(|&i| tensors[i].dtype().as_str());
        let mut start = 0;
        while start < order.len() {
            let dtype = tensors[order[start]].dtype();
            let mut end = start;
            let mut bytes = 0;
            while end < order.len()
                && tensors[order[end]].dtype() == dtype
                && (end == start
                    || bytes + tensors[order[end]].elem_count() * dtype.size_in_bytes()
                        <= BUCKET_BYTES)
            {
                bytes += tensors[order[end]].elem_count() * dtype.size_in_bytes();
                end += 1;
            }
            let members = &order[start..end];
            let flat = members
                .iter()
                .map(|&i| tensors[i].to_device(&self.device)?.flatten_all())
                .collect::<candle_core::Result<Vec<_>>>()?;
            let reduced = Tensor::cat(&flat, 0)?.apply_op1_no_bwd(op)?;
            let mut offset = 0;
            for &i in members {
                let count = tensors[i].elem_count();
                tensors[i] = reduced
                    .narrow(0, offset, count)?
                    .reshape(tensors[i].shape())?
                    .to_device(tensors[i].device())?;
                offset += count;
            }
            start = end;
        }
        Ok(())
    }
}

/// A bucket summed (`root: None`) or copied from `root` over the communicator.
struct NcclOp<'a> {
    comm: &'a Comm,
    root: Option<usize>,
}

impl NcclOp<'_> {
    fn run<T>(&self, storage: &CudaStorage, layout: &Layout) -> candle_core::Result<CudaStorage>
    where
        T: candle_core::cuda_backend::CudaDType
            + cudarc::nccl::NcclType
            + cudarc::driver::DeviceRepr
            + cudarc::driver::ValidAsZeroBits,
    {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle_core::bail!("nccl: the bucket is not contiguous")
        };
        let device = storage.device.clone();
        let source = storage.as_cuda_slice::<T>()?.slice(start..end);
        let mut target = device.alloc_zeros::<T>(end - start)?;
        let status = match self.root {
            None => self.comm.all_reduce(&source, &mut target, &ReduceOp::Sum),
            Some(root) => {
                let root = i32::try_from(root)
                    .map_err(|_| candle_core::Error::Msg("nccl: root rank too large".into()))?;
                let send = (self.comm.rank() as i32 == root).then_some(&source);
                self.comm.broadcast(send, &mut target, root)
            }
        };
        status.map_err(|e| candle_core::Error::Msg(format!("nccl: {e:?}")))?;
        Ok(CudaStorage::wrap_cuda_slice(target, device))
    }
}

impl CustomOp1 for NcclOp<'_> {
    fn name(&self) -> &'static str {
        if self.root.is_some() {
            "nccl-broadcast"
        } else {
            "nccl-all-reduce"
        }
    }

    fn cpu_fwd(
        &self,
        _storage: &candle_core::CpuStorage,
        _layout: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("nccl: buckets live on the GPU")
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let out = match storage.dtype() {
            DType::F32 => self.run::<f32>(storage, layout)?,
            DType::F64 => self.run::<f64>(storage, layout)?,
            DType::BF16 => self.run::<half::bf16>(storage, layout)?,
            DType::F16 => self.run::<half::f16>(storage, layout)?,
            other => candle_core::bail!("nccl: no {other:?} buckets"),
        };
        Ok((out, layout.shape().clone()))
    }
}

impl Collective for NcclCollective {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<(), DistributedError> {
        let comm = self.lock()?;
        self.bucketed(
            tensors,
            &NcclOp {
                comm: &comm.0,
                root: None,
            },
        )
    }

    fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<(), DistributedError> {
        let comm = self.lock()?;
        self.bucketed(
            tensors,
            &NcclOp {
                comm: &comm.0,
                root: Some(root),
            },
        )
    }

    fn barrier(&self) -> Result<(), DistributedError> {
        let mut one = [Tensor::ones(1, DType::F32, &self.device)?];
        self.all_reduce_sum(&mut one)?;
        self.device.synchronize()?;
        Ok(())
    }

    fn abort(&self, message: &str) {
        let said = format!("rank {} failed: {message}", self.rank);
        if let Err(e) = self.store.set(FAILED_KEY, said.as_bytes()) {
            tracing::error!(
                "rank {} could not tell the other ranks that it failed: {e}",
                self.rank
            );
        }
    }
}
