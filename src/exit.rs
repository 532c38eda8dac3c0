//! Exit statuses scripts can trust (`docs/failures.md`): a command that waits for a sweep
//! (`sweep run`, `coordinator --exit-when-done`, `status --wait`) exits 0 only when every
//! task is done or skipped as a duplicate.

use std::collections::BTreeMap;

use neuromfa_coordinator::status::FailureStatus;
use neuromfa_coordinator::{StatusReport, SweepEnd};

/// The sweep finished with failed tasks.
pub const FAILED_TASKS: u8 = 4;
/// The breaker stopped the sweep: tasks are left pending, their attempts unspent.
pub const STOPPED: u8 = 5;
/// Interrupted (SIGINT, SIGTERM) before the sweep ended.
pub const INTERRUPTED: u8 = 6;

/// A command ended without the sweep done: what to say, and its exit status.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct NotDone {
    pub code: u8,
    pub message: String,
}

/// Ok when the sweep ended (`end`) with every task done; else why not, with the status
/// its exit carries, told from the sweep's last `status`. `resume` says how to resume
/// this sweep once the breaker's cause is fixed, `retry` how to re-queue failed tasks.
pub fn judge(
    end: &SweepEnd,
    status: &StatusReport,
    resume: &str,
    retry: &str,
) -> anyhow::Result<()> {
    match end {
        SweepEnd::Done => Ok(()),
        SweepEnd::Failed(count) => Err(NotDone {
            code: FAILED_TASKS,
            message: format!(
                "the sweep finished with {count} failed task(s):\n{}{retry} re-queues them",
                failed_checkpoints(&status.failures)
            ),
        }
        .into()),
        SweepEnd::Stopped(reason) => Err(NotDone {
            code: STOPPED,
            message: format!(
                "the sweep was stopped by a systemic failure: {reason}\n{} task(s) are pending \
                 with their attempts unspent; fix the cause, then {resume}",
                status.pending
            ),
        }
        .into()),
    }
}

/// The sweep was interrupted before it ended.
pub fn interrupted(how_to_go_on: &str) -> anyhow::Error {
    NotDone {
        code: INTERRUPTED,
        message: format!("interrupted before the sweep ended: {how_to_go_on}"),
    }
    .into()
}

/// One line per checkpoint with failed tasks: its seeds and the first error.
fn failed_checkpoints(failures: &[FailureStatus]) -> String {
    let mut by_checkpoint: BTreeMap<(&str, u64), (Vec<u32>, &str)> = BTreeMap::new();
    for f in failures {
        let entry = by_checkpoint
            .entry((f.model.as_str(), f.step))
            .or_insert((Vec::new(), f.error.as_str()));
        entry.0.push(f.seed);
    }
    by_checkpoint
        .into_iter()
        .map(|((model, step), (seeds, error))| {
            let seeds: Vec<String> = seeds.iter().map(u32::to_string).collect();
            format!(
                "  {model} step {step} (seeds {}): {error}\n",
                seeds.join(", ")
            )
        })
        .collect()
}
