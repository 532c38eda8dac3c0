//! A lease: the seeds of one checkpoint, leased together so its weights are fetched once,
//! and the heartbeats that keep it while the worker fetches and computes.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use neuromfa_common::{AnalysisParams, RevisionWeights};
use neuromfa_proto as proto;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::coordinator::Coordinator;

/// The checkpoint a lease is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRef {
    /// `org/name` on the Hub.
    pub model: String,
    pub revision: String,
    pub step: u64,
}

/// One leased task: a seed of the lease's checkpoint, at an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeasedTask {
    pub task_id: i64,
    pub seed: u32,
    pub attempt: u32,
}

/// Seeds of one checkpoint to analyse with the sweep's settings.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub checkpoint: CheckpointRef,
    pub tasks: Vec<LeasedTask>,
    pub params: AnalysisParams,
    /// What the coordinator resolved of the checkpoint (its commit and weight files), when
    /// it did: the fetch starts from it.
    pub resolved: Option<RevisionWeights>,
    /// The Hub requests granted for fetching the checkpoint.
    pub grant: Option<proto::BudgetGrant>,
}

impl Lease {
    /// The lease a reply carries: its tasks (all of one checkpoint) and the analysis
    /// settings. Refuses a reply without tasks, or with settings this worker cannot read.
    pub fn from_reply(reply: proto::LeaseReply) -> Result<Self> {
        let Some(first) = reply.tasks.first() else {
            bail!("the lease holds no task");
        };
        let checkpoint = CheckpointRef {
            model: first.model.clone(),
            revision: first.revision.clone(),
            step: first.step,
        };
        let params: AnalysisParams = serde_json::from_str(&reply.params_json)
            .context("the coordinator sent analysis settings this worker cannot read")?;
        // Only saves requests: a resolution this worker cannot read is listed again.
        let resolved = match reply.resolved_json.as_str() {
            "" => None,
            json => serde_json::from_str(json)
                .inspect_err(|e| tracing::warn!(error = %e, "cannot read the coordinator's resolution of the checkpoint; listing it again"))
                .ok(),
        };
        let tasks = reply
            .tasks
            .iter()
            .map(|t| LeasedTask {
                task_id: t.task_id,
                seed: t.seed,
                attempt: t.attempt,
            })
            .collect();
        Ok(Lease {
            checkpoint,
            tasks,
            params,
            resolved,
            grant: reply.grant,
        })
    }

    pub fn seeds(&self) -> Vec<u32> {
        self.tasks.iter().map(|t| t.seed).collect()
    }
}

/// The lease's tasks not finished yet: what heartbeats keep and shutdown gives back.
#[derive(Clone)]
pub(crate) struct HeldTasks(Arc<Mutex<HashSet<i64>>>);

impl HeldTasks {
    pub(crate) fn of(lease: &Lease) -> Self {
        HeldTasks(Arc::new(Mutex::new(
            lease.tasks.iter().map(|t| t.task_id).collect(),
        )))
    }

    pub(crate) fn ids(&self) -> Vec<i64> {
        self.0
            .lock()
            .map(|h| h.iter().copied().collect())
            .unwrap_or_default()
    }

    pub(crate) fn finished(&self, task_id: i64) {
        if let Ok(mut held) = self.0.lock() {
            held.remove(&task_id);
        }
    }
}

/// Heartbeats for the held tasks, beside the download and the computation.
pub(crate) struct Heartbeat {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Heartbeat {
    pub(crate) fn start(coordinator: &Coordinator, held: &HeldTasks, every: Duration) -> Self {
        let (stop, mut stopped) = watch::channel(false);
        let (coordinator, held) = (coordinator.clone(), held.clone());
        let task = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stopped.changed() => return,
                }
                let ids = held.ids();
                if ids.is_empty() {
                    continue;
                }
                match coordinator.heartbeat(ids).await {
                    Ok(reply) => {
                        if !reply.lost_task_ids.is_empty() {
                            tracing::warn!(lost = ?reply.lost_task_ids, "leases lost; results will still be offered");
                        }
                    }
                    Err(status) => tracing::warn!(error = %status.message(), "heartbeat failed"),
                }
            }
        });
        Heartbeat { stop, task }
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(task_id: i64, seed: u32) -> proto::TaskLease {
        proto::TaskLease {
            task_id,
            model: "org/m".into(),
            revision: "step8".into(),
            step: 8,
            seed,
            attempt: 2,
            deadline_unix_ms: 0,
        }
    }

    #[test]
    fn a_reply_becomes_a_lease_of_one_checkpoint() {
        let params = AnalysisParams::default();
        let reply = proto::LeaseReply {
            tasks: vec![task(7, 3), task(9, 4)],
            params_json: serde_json::to_string(&params).unwrap(),
            ..proto::LeaseReply::default()
        };
        let lease = Lease::from_reply(reply).unwrap();
        assert_eq!(lease.checkpoint.model, "org/m");
        assert_eq!(lease.checkpoint.step, 8);
        assert_eq!(lease.seeds(), [3, 4]);
        assert_eq!(lease.params, params);
        let held = HeldTasks::of(&lease);
        held.finished(7);
        assert_eq!(held.ids(), [9]);
    }

    #[test]
    fn unreadable_settings_and_empty_replies_are_refused() {
        let reply = proto::LeaseReply {
            tasks: vec![task(1, 0)],
            params_json: "{".into(),
            ..proto::LeaseReply::default()
        };
        let refused = Lease::from_reply(reply).unwrap_err();
        assert!(
            format!("{refused:#}").contains("cannot read"),
            "{refused:#}"
        );
        assert!(Lease::from_reply(proto::LeaseReply::default()).is_err());
    }
}
