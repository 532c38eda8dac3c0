//! Group commit: requests sent together share a transaction, and no reply leaves before
//! that transaction is on disk.

mod support;

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use neuromfa_coordinator::commit::{CallError, GroupCommit};
use neuromfa_coordinator::store::Store;
use neuromfa_coordinator::{
    Completion, OpenMode, StateError, SweepSpec, SweepState, TaskMetrics, TaskState,
};
use support::{decide, result};

/// One checkpoint's 8 seeds.
fn spec(dir: &Path) -> SweepSpec {
    support::spec(
        dir,
        "seeds = 8\nsteps = [0]\n[[models]]\nrepo = \"org/a\"\n",
    )
}

/// The task's state as another connection reads it: only what is committed.
fn state_on_disk(dir: &Path, task_id: i64) -> TaskState {
    let store = Store::open_read(dir).unwrap();
    let tasks = store.tasks(false).unwrap();
    tasks
        .into_iter()
        .find(|t| t.id == task_id)
        .unwrap()
        .progress
        .state
}

#[test]
fn replies_leave_only_after_their_batch_is_durable() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = SweepState::open(spec(dir.path()), OpenMode::Resume).unwrap();
    let w = decide(&mut state, |d| Ok(d.register_worker("h", 1, "v", 0)));
    let leases = decide(&mut state, |d| d.lease(&w, 8, 0));
    assert_eq!(leases.len(), 8);
    let (commit, thread) = GroupCommit::spawn(state).unwrap();

    let (tx, rx) = mpsc::channel();
    for lease in leases {
        let (w, tx, dir) = (w.clone(), tx.clone(), dir.path().to_path_buf());
        let r = result(lease.step, lease.seed);
        commit
            .submit(
                move |s, c| {
                    s.decide(|d| d.complete(&w, lease.task_id, r, TaskMetrics::default(), c.now_ms))
                },
                move |outcome| {
                    // Read from another connection while replying.
                    let seen = state_on_disk(&dir, lease.task_id);
                    let _ = tx.send((outcome.map_err(|e| format!("{e:?}")), seen));
                },
            )
            .unwrap();
    }
    commit
        .submit(
            |s, c| s.decide(|d| d.lease("nobody", 1, c.now_ms)),
            move |outcome| {
                let refused = matches!(
                    outcome,
                    Err(CallError::Refused(StateError::UnknownWorker(_)))
                );
                let _ = tx.send((Err(format!("refused: {refused}")), TaskState::Pending));
            },
        )
        .unwrap();
    let mut replies = Vec::new();
    for _ in 0..9 {
        replies.push(rx.recv_timeout(Duration::from_secs(30)).unwrap());
    }
    let accepted = replies
        .iter()
        .filter(|(outcome, seen)| *outcome == Ok(Completion::Accepted) && *seen == TaskState::Done)
        .count();
    assert_eq!(accepted, 8, "{replies:?}");
    assert!(replies
        .iter()
        .any(|(outcome, _)| *outcome == Err("refused: true".to_string())));

    drop(commit);
    thread.join().unwrap();
    // The thread closed the state: the directory can be opened again.
    let state = SweepState::open(spec(dir.path()), OpenMode::Resume).unwrap();
    assert_eq!(state.schedule().counts()["done"], 8);
}

#[test]
fn every_request_sees_draining_and_the_thread_stops_with_the_last_handle() {
    let dir = tempfile::tempdir().unwrap();
    let state = SweepState::open(spec(dir.path()), OpenMode::Resume).unwrap();
    let (commit, thread) = GroupCommit::spawn(state).unwrap();
    let other = commit.clone();
    drop(commit);
    assert!(!other.draining());
    other.start_draining();
    assert!(other.draining());
    // Still running while a handle lives.
    let (tx, rx) = mpsc::channel();
    other
        .submit(
            |s, c| Ok((s.schedule().finished(), c.draining)),
            move |outcome| {
                let _ = tx.send(outcome.map_err(|e| format!("{e:?}")));
            },
        )
        .unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)).unwrap(),
        Ok((false, true))
    );
    drop(other);
    thread.join().unwrap();
}
