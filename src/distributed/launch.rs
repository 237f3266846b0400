//! Who this process is among the ranks of a data-parallel run, from the variables its launcher set.
//!
//! torchrun sets `WORLD_SIZE`, `RANK`, `LOCAL_RANK`, `MASTER_ADDR` and `MASTER_PORT`; `srun` sets
//! `SLURM_NTASKS`, `SLURM_PROCID` and `SLURM_LOCALID` (a batch script exports `MASTER_ADDR` and `MASTER_PORT`
//! itself). torchrun's variables win when both are present, because torchrun inside a Slurm allocation starts
//! several workers per Slurm task and only its own variables tell them apart.

use std::fmt;

use super::error::DistributedError;

/// Which launcher's variables were read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Launcher {
    Torchrun,
    Slurm,
}

impl fmt::Display for Launcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Torchrun => "torchrun",
            Self::Slurm => "slurm",
        })
    }
}

/// This process's place in the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    pub launcher: Launcher,
    pub rank: usize,
    pub world: usize,
    /// The rank among the processes of this node: the GPU this process uses (`cuda:LOCAL_RANK`).
    pub local_rank: usize,
    /// `MASTER_ADDR:MASTER_PORT`, where rank 0 serves the rendezvous store; `None` when not set.
    pub master: Option<(String, u16)>,
    /// The port of the rendezvous store on `MASTER_ADDR`: `UMRANK_STORE_PORT`, else `MASTER_PORT`, except under
    /// a torchrun whose own store already listens on `MASTER_PORT` (`TORCHELASTIC_USE_AGENT_STORE=True`), where
    /// it is `MASTER_PORT + 1`.
    pub store_port: Option<u16>,
    /// What names this job for a file rendezvous: `UMRANK_RUN_ID`, `TORCHELASTIC_RUN_ID` or `SLURM_JOB_ID`.
    pub job_id: Option<String>,
}

const TORCHRUN: [&str; 3] = ["WORLD_SIZE", "RANK", "LOCAL_RANK"];
const SLURM: [&str; 3] = ["SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID"];

impl Launch {
    /// Reads this process's environment.
    pub fn from_env() -> Result<Self, DistributedError> {
        Self::from_vars(|name| std::env::var(name).ok())
    }

    /// Reads the variables `var` returns (the environment, or a table in tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, DistributedError> {
        let (launcher, names) = if var(TORCHRUN[0]).is_some() {
            (Launcher::Torchrun, TORCHRUN)
        } else if var(SLURM[1]).is_some() {
            (Launcher::Slurm, SLURM)
        } else {
            return Err(DistributedError::Launch(format!(
                "data-parallel training needs a launcher: torchrun (sets {}) or srun (sets {}); neither is set",
                TORCHRUN.join(", "),
                SLURM.join(", ")
            )));
        };
        let number = |name: &str| -> Result<usize, DistributedError> {
            let value = var(name).ok_or_else(|| {
                DistributedError::Launch(format!("{launcher} sets {} but not {name}", names[0]))
            })?;
            value.trim().parse().map_err(|_| {
                DistributedError::Launch(format!("{name}={value:?} is not a non-negative integer"))
            })
        };
        let world = number(names[0])?;
        let rank = number(names[1])?;
        let local_rank = number(names[2])?;
        if world == 0 || rank >= world {
            return Err(DistributedError::Launch(format!(
                "{}={rank} is not a rank of {}={world}",
                names[1], names[0]
            )));
        }
        let port = |name: &str| -> Result<Option<u16>, DistributedError> {
            var(name)
                .map(|value| {
                    value.trim().parse::<u16>().map_err(|_| {
                        DistributedError::Launch(format!("{name}={value:?} is not a TCP port"))
                    })
                })
                .transpose()
        };
        let master_port = port("MASTER_PORT")?;
        let master = match (var("MASTER_ADDR"), master_port) {
            (Some(addr), Some(port)) if !addr.trim().is_empty() => {
                Some((addr.trim().to_string(), port))
            }
            _ => None,
        };
        let agent_store = launcher == Launcher::Torchrun
            && var("TORCHELASTIC_USE_AGENT_STORE").is_some_and(|v| v.eq_ignore_ascii_case("true"));
        let store_port = match port("UMRANK_STORE_PORT")? {
            Some(port) => Some(port),
            None if agent_store => master_port
                .map(|p| {
                    p.checked_add(1).ok_or_else(|| {
                        DistributedError::Launch(format!(
                            "MASTER_PORT={p} leaves no port above it for umrank's store; set UMRANK_STORE_PORT"
                        ))
                    })
                })
                .transpose()?,
            None => master_port,
        };
        let job_id = ["UMRANK_RUN_ID", "TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"]
            .iter()
            .find_map(|name| var(name).filter(|v| !v.trim().is_empty()));
        Ok(Self {
            launcher,
            rank,
            world,
            local_rank,
            master,
            store_port,
            job_id,
        })
    }

    /// The CUDA device this rank trains on: `cuda:0` when the launcher gave each process a GPU of its own
    /// (`CUDA_VISIBLE_DEVICES` lists one device, as `srun --gpus-per-task=1` does), else `cuda:LOCAL_RANK`.
    pub fn gpu(&self, visible_devices: Option<&str>) -> usize {
        match visible_devices {
            Some(list) if list.split(',').filter(|d| !d.trim().is_empty()).count() == 1 => 0,
            _ => self.local_rank,
        }
    }

    /// `MASTER_ADDR` and the store's port, or an error saying what to set.
    pub fn store_address(&self) -> Result<(String, u16), DistributedError> {
        match (&self.master, self.store_port) {
            (Some((addr, _)), Some(port)) => Ok((addr.clone(), port)),
            _ => Err(DistributedError::Launch(format!(
                "the TCP rendezvous needs MASTER_ADDR and MASTER_PORT (the host of rank 0 and a free port{}); \
                 or use a file rendezvous on shared storage (--rendezvous file:DIR)",
                if self.launcher == Launcher::Slurm {
                    ": export them in the batch script"
                } else {
                    ""
                }
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn launch(vars: &[(&str, &str)]) -> Result<Launch, DistributedError> {
        let table: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Launch::from_vars(|name| table.get(name).cloned())
    }

    #[test]
    fn torchrun_variables() {
        let found = launch(&[
            ("WORLD_SIZE", "8"),
            ("RANK", "5"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_RUN_ID", "abc"),
            ("SLURM_PROCID", "2"),
        ])
        .unwrap();
        assert_eq!(found.launcher, Launcher::Torchrun);
        assert_eq!((found.rank, found.world, found.local_rank), (5, 8, 1));
        assert_eq!(found.store_address().unwrap(), ("node0".to_string(), 29500));
        assert_eq!(found.job_id.as_deref(), Some("abc"));
        assert_eq!(found.gpu(None), 1);
        assert_eq!(found.gpu(Some("0,1,2,3")), 1);
        assert_eq!(found.gpu(Some("3")), 0);
    }

    #[test]
    fn torchrun_agent_store_moves_umrank_store_one_port_up() {
        let vars = [
            ("WORLD_SIZE", "2"),
            ("RANK", "0"),
            ("LOCAL_RANK", "0"),
            ("MASTER_ADDR", "node0"),
            ("MASTER_PORT", "29500"),
            ("TORCHELASTIC_USE_AGENT_STORE", "True"),
        ];
        assert_eq!(launch(&vars).unwrap().store_port, Some(29501));
        let mut pinned = vars.to_vec();
        pinned.push(("UMRANK_STORE_PORT", "40000"));
        assert_eq!(launch(&pinned).unwrap().store_port, Some(40000));
    }

    #[test]
    fn slurm_variables() {
        let found = launch(&[
            ("SLURM_NTASKS", "4"),
            ("SLURM_PROCID", "3"),
            ("SLURM_LOCALID", "3"),
            ("SLURM_JOB_ID", "77"),
        ])
        .unwrap();
        assert_eq!(found.launcher, Launcher::Slurm);
        assert_eq!((found.rank, found.world, found.local_rank), (3, 4, 3));
        assert_eq!(found.job_id.as_deref(), Some("77"));
        let missing = found.store_address().unwrap_err().to_string();
        assert!(
            missing.contains("MASTER_ADDR") && missing.contains("batch script"),
            "{missing}"
        );
    }

    #[test]
    fn bad_or_missing_variables_are_named() {
        let none = launch(&[]).unwrap_err().to_string();
        assert!(
            none.contains("torchrun") && none.contains("SLURM_PROCID"),
            "{none}"
        );
        let missing = launch(&[("WORLD_SIZE", "2"), ("RANK", "0")])
            .unwrap_err()
            .to_string();
        assert!(missing.contains("LOCAL_RANK"), "{missing}");
        let bad = launch(&[("WORLD_SIZE", "two"), ("RANK", "0"), ("LOCAL_RANK", "0")])
            .unwrap_err()
            .to_string();
        assert!(bad.contains("WORLD_SIZE=\"two\""), "{bad}");
        let outside = launch(&[("WORLD_SIZE", "2"), ("RANK", "2"), ("LOCAL_RANK", "0")])
            .unwrap_err()
            .to_string();
        assert!(
            outside.contains("RANK=2 is not a rank of WORLD_SIZE=2"),
            "{outside}"
        );
        let port = launch(&[
            ("WORLD_SIZE", "1"),
            ("RANK", "0"),
            ("LOCAL_RANK", "0"),
            ("MASTER_PORT", "99999"),
        ])
        .unwrap_err()
        .to_string();
        assert!(port.contains("MASTER_PORT"), "{port}");
    }
}
