//! `--data-parallel`: run a command as one rank of a data-parallel training launched by torchrun or srun.
//!
//! Every rank runs the same command line. Rank 0 runs it as usual (every stage, every output, manifests and
//! rejects); when it reaches a `train` stage it hands the training to the other ranks through the rendezvous
//! store, and all ranks train it together, each on its GPU and its slice of every batch. The other ranks do
//! nothing else: they wait for rank 0's trainings, then for its word that none follows.

use umrank::device::DeviceSpec;
use umrank::distributed::store::Rendezvous;

/// How the process was launched.
#[derive(Debug, Clone, clap::Args)]
pub struct DataParallelArgs {
    /// Train as one rank of a data-parallel run: one process per GPU, started by torchrun (WORLD_SIZE, RANK,
    /// LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or srun (SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID; export
    /// MASTER_ADDR and MASTER_PORT), every rank with the same command line. Rank 0 runs the command and writes
    /// every output; the other ranks join each train stage, which splits every batch between the ranks and sums
    /// the gradients over NCCL (the same steps as one GPU with the same config). Needs --device cuda and a
    /// umrank built with --features nccl.
    #[arg(long)]
    pub data_parallel: bool,

    /// With --data-parallel, how the ranks find each other: tcp (rank 0 serves a small store on MASTER_ADDR, at
    /// MASTER_PORT, or MASTER_PORT + 1 under torchrun, whose own store takes MASTER_PORT; UMRANK_STORE_PORT
    /// overrides) or file:DIR (a directory on storage every node mounts, for nodes that cannot reach each
    /// other's ports).
    #[arg(
        long,
        value_name = "tcp|file:DIR",
        default_value = "tcp",
        requires = "data_parallel"
    )]
    pub rendezvous: Rendezvous,
}

/// Runs `work` (the command, on the device it is given) alone, or as rank 0 of a data-parallel group while the
/// other ranks follow it.
pub fn run(
    args: &DataParallelArgs,
    device: DeviceSpec,
    work: impl FnOnce(DeviceSpec) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    if args.data_parallel {
        ranked::run(args, device, work)
    } else {
        work(device)
    }
}

#[cfg(not(feature = "nccl"))]
mod ranked {
    use super::*;

    pub fn run(
        _args: &DataParallelArgs,
        _device: DeviceSpec,
        _work: impl FnOnce(DeviceSpec) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        anyhow::bail!(
            "--data-parallel needs a umrank built with NCCL: cargo build --release --features nccl \
             (on the CPU, umrank::train::parallel::train_in_process runs N ranks in one process)"
        )
    }
}

#[cfg(feature = "nccl")]
mod ranked {
    use super::*;

    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::Context;
    use umrank::distributed::nccl::NcclCollective;
    use umrank::distributed::process::{self, ProcessGroup};
    use umrank::distributed::{store, Launch};
    use umrank::train::parallel;

    /// How long a rank waits for the others to start and for NCCL's unique id.
    const JOIN_TIMEOUT: Duration = Duration::from_secs(900);

    pub fn run(
        args: &DataParallelArgs,
        device: DeviceSpec,
        work: impl FnOnce(DeviceSpec) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        let launch = Launch::from_env()?;
        if device == DeviceSpec::Cpu {
            anyhow::bail!("--data-parallel trains over NCCL on GPUs: add --device cuda");
        }
        let visible = std::env::var("CUDA_VISIBLE_DEVICES").ok();
        let spec = DeviceSpec::Cuda(launch.gpu(visible.as_deref()));
        let gpu = spec.candle()?;
        tracing::info!(
            "data-parallel rank {} of {} ({}), {spec:?}",
            launch.rank,
            launch.world,
            launch.launcher
        );
        if launch.rank == 0 {
            store::serve(&args.rendezvous, &launch)?;
        }
        let shared: Arc<dyn store::Store> =
            Arc::from(store::connect(&args.rendezvous, &launch, JOIN_TIMEOUT)?);
        let finished = Arc::new(AtomicBool::new(false));
        NcclCollective::watch(
            store::connect(&args.rendezvous, &launch, JOIN_TIMEOUT)?,
            launch.rank,
            Arc::clone(&finished),
        );
        let collective = NcclCollective::join(&launch, Arc::clone(&shared), &gpu, JOIN_TIMEOUT)
            .context("joining the NCCL communicator")?;
        let group = process::install(ProcessGroup::new(Box::new(collective), shared))?;
        let result = if launch.rank == 0 {
            work(spec).and_then(|()| parallel::finish(group).map_err(anyhow::Error::from))
        } else {
            parallel::follow(group, &gpu)
                .map(drop)
                .map_err(anyhow::Error::from)
        };
        if let Err(error) = &result {
            group.collective.abort(&format!("{error:#}"));
        } else {
            // Rank 0 serves the store: it leaves only after every rank has read its last message.
            group.collective.barrier()?;
        }
        finished.store(true, Ordering::SeqCst);
        result
    }
}
