//! The operations data-parallel training needs from its ranks, and the one-rank and in-process implementations.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use candle_core::Tensor;

use super::error::DistributedError;

/// What ranks do together. Every rank must call the same operations in the same order with tensors of the same
/// shapes and dtypes (an implementation reports a mismatch where it can see one).
pub trait Collective {
    /// This rank, in `0..world()`.
    fn rank(&self) -> usize;

    /// How many ranks take part.
    fn world(&self) -> usize;

    /// Replaces each tensor with its sum over all ranks.
    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<(), DistributedError>;

    /// Replaces each tensor with rank `root`'s.
    fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<(), DistributedError>;

    /// Returns once every rank has called it.
    fn barrier(&self) -> Result<(), DistributedError>;

    /// Tells the other ranks that this one failed with `message`: their pending and later operations return
    /// [`DistributedError::PeerFailed`] naming this rank, instead of waiting for it forever.
    fn abort(&self, message: &str);
}

/// One rank alone: sums and broadcasts leave the tensors as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Single;

impl Collective for Single {
    fn rank(&self) -> usize {
        0
    }

    fn world(&self) -> usize {
        1
    }

    fn all_reduce_sum(&self, _tensors: &mut [Tensor]) -> Result<(), DistributedError> {
        Ok(())
    }

    fn broadcast(&self, _tensors: &mut [Tensor], _root: usize) -> Result<(), DistributedError> {
        Ok(())
    }

    fn barrier(&self) -> Result<(), DistributedError> {
        Ok(())
    }

    fn abort(&self, _message: &str) {}
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    AllReduce,
    Broadcast(usize),
    Barrier,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Self::AllReduce => "all-reduce",
            Self::Broadcast(_) => "broadcast",
            Self::Barrier => "barrier",
        }
    }
}

/// One collective operation in progress: the ranks' inputs until all have arrived, then the result until all
/// have read it.
#[derive(Default)]
struct Round {
    inputs: Vec<Option<(Op, Vec<Tensor>)>>,
    arrived: usize,
    result: Option<Result<Vec<Tensor>, String>>,
    departed: usize,
}

struct State {
    round: Round,
    /// The first rank that failed, and why.
    failed: Option<(usize, String)>,
}

struct Shared {
    world: usize,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A rank that panicked while holding the lock left a consistent state (every update is a few assignments),
        // and the panic itself is reported through `failed`.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn wait<'a>(&self, guard: MutexGuard<'a, State>) -> MutexGuard<'a, State> {
        self.changed
            .wait(guard)
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A rank of N that live as threads of one process. Sums run on the host in rank order (rank 0's tensor plus
/// rank 1's, plus rank 2's, ...), so a result does not depend on which thread arrives first.
pub struct InProcessRank {
    rank: usize,
    shared: Arc<Shared>,
}

impl InProcessRank {
    /// The `world` ranks of a new group, rank 0 first.
    pub fn group(world: usize) -> Vec<Self> {
        let shared = Arc::new(Shared {
            world,
            state: Mutex::new(State {
                round: Round {
                    inputs: vec![None; world],
                    ..Round::default()
                },
                failed: None,
            }),
            changed: Condvar::new(),
        });
        (0..world)
            .map(|rank| Self {
                rank,
                shared: Arc::clone(&shared),
            })
            .collect()
    }

    fn exchange(&self, op: Op, tensors: &[Tensor]) -> Result<Vec<Tensor>, DistributedError> {
        let shared = &self.shared;
        let peer_failed =
            |(rank, message): (usize, String)| DistributedError::PeerFailed { rank, message };
        let mut state = shared.lock();
        // Wait until the previous round has been read by every rank.
        while state.round.result.is_some() && state.failed.is_none() {
            state = shared.wait(state);
        }
        if let Some(failed) = state.failed.clone() {
            return Err(peer_failed(failed));
        }
        state.round.inputs[self.rank] = Some((op, tensors.to_vec()));
        state.round.arrived += 1;
        if state.round.arrived == shared.world {
            let inputs: Vec<(Op, Vec<Tensor>)> = state
                .round
                .inputs
                .iter_mut()
                .filter_map(Option::take)
                .collect();
            state.round.result = Some(combine(&inputs).map_err(|e| e.to_string()));
            shared.changed.notify_all();
        }
        while state.round.result.is_none() && state.failed.is_none() {
            state = shared.wait(state);
        }
        if let Some(failed) = state.failed.clone() {
            return Err(peer_failed(failed));
        }
        let result = state
            .round
            .result
            .clone()
            .unwrap_or_else(|| Err("no result".into()));
        state.round.departed += 1;
        if state.round.departed == shared.world {
            state.round = Round {
                inputs: vec![None; shared.world],
                ..Round::default()
            };
            shared.changed.notify_all();
        }
        result.map_err(|message| DistributedError::Collective {
            op: op.name(),
            message,
        })
    }
}

/// The result of one round from the ranks' inputs, in rank order.
fn combine(inputs: &[(Op, Vec<Tensor>)]) -> Result<Vec<Tensor>, DistributedError> {
    let op = inputs[0].0;
    if let Some((rank, (other, _))) = inputs.iter().enumerate().find(|(_, (o, _))| *o != op) {
        return Err(DistributedError::Collective {
            op: op.name(),
            message: format!("rank {rank} called {other:?} while rank 0 called {op:?}"),
        });
    }
    let count = inputs[0].1.len();
    if let Some((rank, (_, tensors))) = inputs
        .iter()
        .enumerate()
        .find(|(_, (_, t))| t.len() != count)
    {
        return Err(DistributedError::Collective {
            op: op.name(),
            message: format!(
                "rank {rank} passed {} tensors, rank 0 {count}",
                tensors.len()
            ),
        });
    }
    match op {
        Op::Barrier => Ok(Vec::new()),
        Op::Broadcast(root) => inputs
            .get(root)
            .map(|(_, tensors)| tensors.clone())
            .ok_or_else(|| DistributedError::Collective {
                op: op.name(),
                message: format!("root {root} is not a rank of {}", inputs.len()),
            }),
        Op::AllReduce => (0..count)
            .map(|index| {
                let first = &inputs[0].1[index];
                inputs[1..]
                    .iter()
                    .enumerate()
                    .try_fold(first.clone(), |sum, (at, (_, tensors))| {
                        let next = &tensors[index];
                        if next.shape() != first.shape() || next.dtype() != first.dtype() {
                            return Err(DistributedError::Collective {
                                op: op.name(),
                                message: format!(
                                    "tensor {index}: rank {} has {:?} {:?}, rank 0 {:?} {:?}",
                                    at + 1,
                                    next.dtype(),
                                    next.shape(),
                                    first.dtype(),
                                    first.shape()
                                ),
                            });
                        }
                        Ok((sum + next.to_device(first.device())?)?)
                    })
            })
            .collect(),
    }
}

impl Collective for InProcessRank {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world(&self) -> usize {
        self.shared.world
    }

    fn all_reduce_sum(&self, tensors: &mut [Tensor]) -> Result<(), DistributedError> {
        let summed = self.exchange(Op::AllReduce, tensors)?;
        for (tensor, sum) in tensors.iter_mut().zip(summed) {
            *tensor = sum.to_device(tensor.device())?;
        }
        Ok(())
    }

    fn broadcast(&self, tensors: &mut [Tensor], root: usize) -> Result<(), DistributedError> {
        let copied = self.exchange(Op::Broadcast(root), tensors)?;
        for (tensor, copy) in tensors.iter_mut().zip(copied) {
            *tensor = copy.to_device(tensor.device())?;
        }
        Ok(())
    }

    fn barrier(&self) -> Result<(), DistributedError> {
        self.exchange(Op::Barrier, &[]).map(drop)
    }

    fn abort(&self, message: &str) {
        let mut state = self.shared.lock();
        if state.failed.is_none() {
            state.failed = Some((self.rank, message.to_string()));
        }
        self.shared.changed.notify_all();
    }
}

/// How a run of N in-process ranks failed: the rank that failed first and its own error (the others stopped
/// because of it).
#[derive(Debug)]
pub struct RankFailure<E> {
    pub rank: usize,
    pub world: usize,
    pub error: E,
}

/// Runs `work` as `world` ranks on threads of this process and returns each rank's result, rank 0 first.
///
/// A rank whose work returns an error or panics aborts the group, so the others stop at their next collective
/// operation; the failure returned is that first rank's, with its own error (`None` for a panic, whose message
/// went to stderr).
pub fn run_ranks<T, E, F>(world: usize, work: F) -> Result<Vec<T>, RankFailure<Option<E>>>
where
    T: Send,
    E: Send + std::fmt::Display,
    F: Fn(&InProcessRank) -> Result<T, E> + Sync,
{
    let ranks = InProcessRank::group(world);
    let observer = ranks.first().map(|rank| Arc::clone(&rank.shared));
    let outcomes: Vec<Option<Result<T, E>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = ranks
            .iter()
            .map(|rank| {
                let work = &work;
                scope.spawn(
                    move || match catch_unwind(AssertUnwindSafe(|| work(rank))) {
                        Ok(Ok(value)) => Some(Ok(value)),
                        Ok(Err(error)) => {
                            rank.abort(&error.to_string());
                            Some(Err(error))
                        }
                        Err(_) => {
                            rank.abort("panicked");
                            None
                        }
                    },
                )
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or(None))
            .collect()
    });
    let failed = observer.and_then(|shared| shared.lock().failed.clone());
    if let Some((rank, _)) = failed {
        let error = outcomes
            .into_iter()
            .nth(rank)
            .flatten()
            .and_then(Result::err);
        return Err(RankFailure { rank, world, error });
    }
    outcomes
        .into_iter()
        .enumerate()
        .map(|(rank, outcome)| match outcome {
            Some(Ok(value)) => Ok(value),
            Some(Err(error)) => Err(RankFailure {
                rank,
                world,
                error: Some(error),
            }),
            None => Err(RankFailure {
                rank,
                world,
                error: None,
            }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn tensor(values: &[f64]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    #[test]
    fn all_reduce_sums_in_rank_order_and_broadcast_copies_the_root() {
        let results = run_ranks(3, |rank| {
            let r = rank.rank() as f64;
            let mut tensors = vec![tensor(&[r, 1.0]), tensor(&[10.0 * r])];
            rank.all_reduce_sum(&mut tensors)?;
            let mut root = vec![tensor(&[r])];
            rank.broadcast(&mut root, 2)?;
            rank.barrier()?;
            let sums: Vec<Vec<f64>> = tensors.iter().map(|t| t.to_vec1().unwrap()).collect();
            Ok::<_, DistributedError>((sums, root[0].to_vec1::<f64>().unwrap()))
        })
        .unwrap_or_else(|f| {
            panic!(
                "rank {} failed: {:?}",
                f.rank,
                f.error.map(|e| e.to_string())
            )
        });
        for (sums, root) in results {
            assert_eq!(sums, vec![vec![3.0, 3.0], vec![30.0]]);
            assert_eq!(root, vec![2.0]);
        }
    }

    #[test]
    fn a_failing_rank_stops_the_others_and_is_named() {
        let failure = run_ranks(3, |rank| -> Result<(), DistributedError> {
            if rank.rank() == 1 {
                return Err(DistributedError::Launch("rank 1 broke".into()));
            }
            // The others would wait here forever without the abort.
            loop {
                rank.all_reduce_sum(&mut [tensor(&[1.0])])?;
            }
        })
        .map(drop)
        .unwrap_err();
        assert_eq!(failure.rank, 1);
        assert!(failure.error.unwrap().to_string().contains("rank 1 broke"));
    }

    #[test]
    fn mismatched_shapes_are_an_error_on_every_rank() {
        let failure = run_ranks(2, |rank| {
            let values = vec![1.0; rank.rank() + 1];
            rank.all_reduce_sum(&mut [tensor(&values)])
        })
        .map(drop)
        .unwrap_err();
        assert!(failure.error.unwrap().to_string().contains("rank 1 has"));
    }
}
