//! The compute stage: a lease's seeds analysed on the blocking pool (the pipeline runs on
//! rayon), each seed's outcome sent back as soon as it is ready.

use neuromfa_common::{analyze_seeds_as_ready, SeedResult};
use neuromfa_hub::ranges::FetchedWeights;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::lease::{Lease, LeasedTask};

/// One seed's outcome.
pub(crate) struct Outcome {
    pub(crate) task: LeasedTask,
    /// The result, or why there is none.
    pub(crate) result: Result<SeedResult, String>,
    /// Compute time of the seed (for seeds analysed together, an even share).
    pub(crate) compute_ms: u64,
}

/// Starts analysing the lease's seeds on `weights`; outcomes arrive on the receiver, which
/// closes once every seed has one.
pub(crate) fn start(
    weights: FetchedWeights,
    lease: &Lease,
) -> (mpsc::UnboundedReceiver<Outcome>, JoinHandle<()>) {
    let (done, outcomes) = mpsc::unbounded_channel();
    let (tasks, params, step) = (
        lease.tasks.clone(),
        lease.params.clone(),
        lease.checkpoint.step,
    );
    let compute = tokio::task::spawn_blocking(move || {
        // The receiver may be gone (shutting down): nobody is left to tell.
        let send = |task, result, compute_ms| {
            let _ = done.send(Outcome {
                task,
                result,
                compute_ms,
            });
        };
        let weights = match weights.open() {
            Ok(weights) => weights,
            Err(e) => {
                tasks.iter().for_each(|&t| send(t, Err(e.to_string()), 0));
                return;
            }
        };
        let seeds: Vec<u32> = tasks.iter().map(|t| t.seed).collect();
        analyze_seeds_as_ready(
            weights.as_ref(),
            &params,
            step,
            &seeds,
            |i, result, took| {
                let result = result.map_err(|e| e.to_string());
                send(tasks[i], result, took.as_millis() as u64);
            },
        );
    });
    (outcomes, compute)
}
