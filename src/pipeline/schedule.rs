//! Running a pipeline's stages side by side: each stage starts once the stages it reads have finished, at most
//! `jobs` at a time.
//!
//! Stages that do not read each other (the demo's SFT and CL trainings, then their evals) are independent pieces of
//! work; on the CPU each uses about one core, so on a machine with more cores running them together divides their
//! wall time. Each stage's outputs depend only on its inputs, config and seed, never on what runs beside it, so
//! the outputs are the same at any `jobs`.

use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc;
use std::thread;

/// Stack of a stage's thread. Autograd walks the graph recursively, and a large model's graph is deep: give a
/// stage thread the room the main thread has, and then some.
const STAGE_STACK_BYTES: usize = 64 << 20;

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    Waiting,
    Running,
    Done,
}

/// Runs `task(i)` for every `i` in `0..waits_on.len()`, each after every task in `waits_on[i]` succeeded, at most
/// `jobs` at a time; ready tasks start in index order.
///
/// `waits_on[i]` may only name tasks before `i`, so that index order is always a valid order: with `jobs <= 1`
/// the tasks run one after the other on the calling thread, exactly in index order. After the first failure no
/// new task starts; the ones running finish, and the first failure is returned. A panicking task is re-raised
/// once the running ones have finished.
pub fn run_ordered<T, E>(
    jobs: usize,
    waits_on: &[Vec<usize>],
    task: impl Fn(usize) -> Result<T, E> + Sync,
) -> Result<Vec<T>, E>
where
    T: Send,
    E: Send,
{
    if jobs <= 1 {
        return (0..waits_on.len()).map(&task).collect();
    }
    let count = waits_on.len();
    let mut state = vec![State::Waiting; count];
    let mut results: Vec<Option<T>> = (0..count).map(|_| None).collect();
    let mut failure: Option<E> = None;
    let mut panicked = None;
    let task = &task;
    thread::scope(|scope| {
        let (sender, receiver) = mpsc::channel();
        let mut running = 0;
        loop {
            if failure.is_none() && panicked.is_none() {
                while running < jobs {
                    let Some(next) = next_ready(&state, waits_on) else {
                        break;
                    };
                    state[next] = State::Running;
                    running += 1;
                    let report = {
                        let sender = sender.clone();
                        move || {
                            let outcome = panic::catch_unwind(AssertUnwindSafe(|| task(next)));
                            // The receiver lives until every task has reported.
                            let _ = sender.send((next, outcome));
                        }
                    };
                    let spawned = thread::Builder::new()
                        .name(format!("stage-{next}"))
                        .stack_size(STAGE_STACK_BYTES)
                        .spawn_scoped(scope, report);
                    if let Err(error) = spawned {
                        tracing::warn!("no thread for stage {next} ({error}); running it here");
                        let outcome = panic::catch_unwind(AssertUnwindSafe(|| task(next)));
                        let _ = sender.send((next, outcome));
                    }
                }
            }
            if running == 0 {
                break;
            }
            let Ok((index, outcome)) = receiver.recv() else {
                break;
            };
            running -= 1;
            match outcome {
                Ok(Ok(value)) => {
                    state[index] = State::Done;
                    results[index] = Some(value);
                }
                Ok(Err(error)) => {
                    if failure.is_none() {
                        failure = Some(error);
                    }
                }
                Err(payload) => {
                    panicked.get_or_insert(payload);
                }
            }
        }
    });
    if let Some(payload) = panicked {
        panic::resume_unwind(payload);
    }
    if let Some(error) = failure {
        return Err(error);
    }
    Ok(results.into_iter().flatten().collect())
}

/// The first waiting task whose every prerequisite is done.
fn next_ready(state: &[State], waits_on: &[Vec<usize>]) -> Option<usize> {
    (0..state.len()).find(|&i| {
        state[i] == State::Waiting && waits_on[i].iter().all(|&j| state[j] == State::Done)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Barrier, Mutex};

    #[test]
    fn one_job_runs_in_index_order_on_the_calling_thread() {
        let caller = thread::current().id();
        let order = Mutex::new(Vec::new());
        let out = run_ordered(1, &[vec![], vec![], vec![0]], |i| {
            assert_eq!(thread::current().id(), caller);
            order.lock().unwrap().push(i);
            Ok::<_, ()>(i * 10)
        })
        .unwrap();
        assert_eq!(out, [0, 10, 20]);
        assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
    }

    #[test]
    fn independent_tasks_run_together_and_dependants_wait() {
        // 1 and 2 both wait on 0 and meet at a barrier: that only returns if they run at the same time.
        let meet = Barrier::new(2);
        let finished = Mutex::new(Vec::new());
        let out = run_ordered(2, &[vec![], vec![0], vec![0], vec![1, 2]], |i| {
            if i == 1 || i == 2 {
                meet.wait();
            }
            if i == 3 {
                let done = finished.lock().unwrap();
                assert!(done.contains(&1) && done.contains(&2));
            }
            finished.lock().unwrap().push(i);
            Ok::<_, ()>(i)
        })
        .unwrap();
        assert_eq!(out, [0, 1, 2, 3]);
    }

    #[test]
    fn after_a_failure_nothing_new_starts_and_the_failure_is_returned() {
        let started = Mutex::new(Vec::new());
        let result = run_ordered(2, &[vec![], vec![0], vec![1]], |i| {
            started.lock().unwrap().push(i);
            if i == 1 {
                Err(format!("task {i} failed"))
            } else {
                Ok(i)
            }
        });
        assert_eq!(result.unwrap_err(), "task 1 failed");
        assert_eq!(*started.lock().unwrap(), [0, 1]);
    }

    #[test]
    fn a_panicking_task_is_re_raised_after_the_others_finish() {
        let finished = Mutex::new(Vec::new());
        let caught = panic::catch_unwind(AssertUnwindSafe(|| {
            run_ordered(2, &[vec![], vec![]], |i| {
                if i == 0 {
                    panic!("task 0 panicked");
                }
                finished.lock().unwrap().push(i);
                Ok::<_, ()>(i)
            })
        }));
        assert!(caught.is_err());
        assert_eq!(*finished.lock().unwrap(), [1]);
    }
}
