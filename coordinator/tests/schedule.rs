//! Scheduling without storage: leases, affinity, expiry, retries, releases, exactly-once
//! results and duplicate skipping, driven on a `Schedule` in memory, with the changes
//! each decision hands the store.

mod support;

use std::path::Path;

use neuromfa_coordinator::record::{StoredTask, TaskProgress};
use neuromfa_coordinator::schedule::Outcome;
use neuromfa_coordinator::{
    Change, Completion, Lease, Schedule, StateError, TaskMetrics, TaskState,
};

/// A fresh grid's schedule: every (checkpoint, seed) pending, ids from 1 as the store
/// numbers them.
fn schedule(steps: &str, seeds: u32) -> Schedule {
    let spec = support::two_models(Path::new("unused"), steps, seeds, "");
    let mut id = 0;
    let mut tasks = Vec::new();
    for key in spec.checkpoints() {
        for seed in spec.seed_list() {
            id += 1;
            tasks.push(StoredTask {
                id,
                model: key.model.clone(),
                step: key.step,
                revision: key.revision.clone(),
                seed,
                progress: TaskProgress::pending(),
                result: None,
            });
        }
    }
    Schedule::restore(&spec, tasks, Vec::new(), 0)
}

fn register(s: &mut Schedule, host: &str) -> String {
    s.register_worker(host, 1, "v", 0).value
}

fn lease(s: &mut Schedule, worker: &str, max: usize, now: u64) -> Vec<Lease> {
    s.lease(worker, max, now).unwrap().value
}

fn result(lease: &Lease) -> neuromfa_common::SeedResult {
    support::result(lease.step, lease.seed)
}

fn complete(s: &mut Schedule, worker: &str, lease: &Lease, now: u64) -> Outcome<Completion> {
    s.complete(
        worker,
        lease.task_id,
        result(lease),
        TaskMetrics::default(),
        now,
    )
    .unwrap()
}

fn task_state(s: &Schedule, task_id: i64) -> TaskState {
    s.tasks()
        .iter()
        .find(|t| t.id == task_id)
        .unwrap()
        .progress
        .state
}

#[test]
fn a_lease_hands_out_one_checkpoints_seeds_first_steps_first_and_says_what_changed() {
    let mut s = schedule("[0, 10]", 3);
    let w = s.register_worker("host", 2, "0.1", 0);
    assert!(matches!(&w.changes[..], [Change::WorkerRegistered(r)] if r.id == w.value));
    let w = w.value;

    let outcome = s.lease(&w, 10, 0).unwrap();
    let leases = outcome.value;
    assert_eq!(leases.len(), 3);
    assert!(leases.iter().all(|l| l.step == 0 && l.model == "org/a"));
    assert!(leases
        .iter()
        .all(|l| l.attempt == 1 && l.deadline_ms == 10_000));
    assert_eq!(outcome.changes.len(), 3);
    for (change, l) in outcome.changes.iter().zip(&leases) {
        match change {
            Change::TaskUpdated { id, progress } => {
                assert_eq!(*id, l.task_id);
                let holder = Some(w.clone());
                let expected = (TaskState::Leased, 1, &holder, 10_000);
                let p = progress;
                assert_eq!((p.state, p.attempts, &p.worker, p.deadline_ms), expected);
            }
            other => panic!("{other:?}"),
        }
    }
    // Step-major: the other model's step 0 before anyone's step 10.
    let next = lease(&mut s, &w, 10, 1);
    assert!(next.iter().all(|l| l.step == 0 && l.model == "org/b"));
    assert_eq!(s.counts()["leased"], 6);
    assert!(!s.finished());
}

#[test]
fn an_unknown_worker_cannot_lease() {
    let mut s = schedule("[0]", 1);
    let err = s.lease("nobody", 1, 0).unwrap_err();
    assert!(matches!(err, StateError::UnknownWorker(_)), "{err}");
}

#[test]
fn results_are_taken_once_and_must_match_their_task() {
    let mut s = schedule("[0]", 1);
    let w = register(&mut s, "h");
    let l = lease(&mut s, &w, 1, 0).remove(0);

    let first = complete(&mut s, &w, &l, 1);
    assert_eq!(first.value, Completion::Accepted);
    assert!(matches!(
        &first.changes[..],
        [Change::ResultStored { task_id, .. }, Change::TaskUpdated { progress, .. }]
            if *task_id == l.task_id && progress.state == TaskState::Done
    ));
    let again = complete(&mut s, &w, &l, 2);
    assert_eq!(again.value, Completion::Duplicate);
    assert!(matches!(&again.changes[..], [Change::DuplicateCounted]));
    assert_eq!(s.duplicates(), 1);

    let wrong = Lease {
        seed: 7,
        ..l.clone()
    };
    let err = s
        .complete(&w, l.task_id, result(&wrong), TaskMetrics::default(), 3)
        .unwrap_err();
    assert!(matches!(err, StateError::MismatchedResult { .. }), "{err}");
    let err = s
        .complete(&w, 999, result(&l), TaskMetrics::default(), 3)
        .unwrap_err();
    assert!(matches!(err, StateError::UnknownTask(999)), "{err}");
}

#[test]
fn expired_leases_requeue_then_fail_with_reason() {
    let mut s = schedule("[0]", 1);
    let w = register(&mut s, "h");
    let first = lease(&mut s, &w, 10, 0);
    assert_eq!(first.len(), 1);
    let id = first[0].task_id;
    // Heartbeats keep it.
    let beat = s.heartbeat(&w, &[id], 9_000).unwrap();
    assert!(beat.value.is_empty());
    assert!(matches!(
        &beat.changes[..],
        [Change::LeaseExtended {
            deadline_ms: 19_000,
            ..
        }]
    ));
    assert_eq!(s.expire(15_000).value, 0);
    // Silence lapses it: attempt 1 of 2, back to pending.
    assert_eq!(s.expire(20_000).value, 1);
    // Pending: this task and the other model's, never leased.
    assert_eq!(s.counts()["pending"], 2);
    let lost = s.heartbeat(&w, &[id], 20_001).unwrap();
    assert_eq!(lost.value, vec![id]);
    assert!(lost.changes.is_empty());
    let again = lease(&mut s, &w, 10, 20_002);
    assert_eq!(again[0].attempt, 2);
    s.expire(40_000).changes.iter().for_each(|c| {
        let Change::TaskUpdated { progress, .. } = c else {
            panic!("{c:?}")
        };
        assert_eq!(progress.state, TaskState::Failed);
        let error = progress.last_error.as_deref().unwrap_or_default();
        assert!(error.contains("lease expired"), "{error}");
    });
    assert_eq!(s.counts()["failed"], 1);
    // A late result for a lapsed lease is still a result.
    assert_eq!(
        complete(&mut s, &w, &first[0], 41_000).value,
        Completion::Accepted
    );
    assert_eq!(task_state(&s, id), TaskState::Done);
}

#[test]
fn failures_retry_until_the_limit_and_retry_failed_requeues() {
    let mut s = schedule("[0]", 2);
    let w = register(&mut s, "h");
    let leases = lease(&mut s, &w, 10, 0);
    let (a, b) = (leases[0].task_id, leases[1].task_id);
    assert!(s.fail(&w, a, "network blip", false, 1).unwrap().value);
    assert!(!s.fail(&w, b, "corrupt header", true, 1).unwrap().value);
    let retry = lease(&mut s, &w, 10, 2);
    assert_eq!(retry.iter().map(|l| l.task_id).collect::<Vec<_>>(), vec![a]);
    assert!(!s.fail(&w, a, "network blip again", false, 3).unwrap().value);
    assert_eq!(s.counts()["failed"], 2);
    let errors: Vec<&str> = s
        .tasks()
        .iter()
        .filter_map(|t| t.progress.last_error.as_deref())
        .collect();
    assert!(errors.contains(&"corrupt header"), "{errors:?}");

    // Only the holder of a lease speaks for its task.
    let other = register(&mut s, "other");
    let fresh = lease(&mut s, &w, 1, 4).remove(0);
    let ignored = s.fail(&other, fresh.task_id, "not mine", true, 4).unwrap();
    assert!(!ignored.value && ignored.changes.is_empty());
    assert_eq!(task_state(&s, fresh.task_id), TaskState::Leased);

    assert_eq!(s.retry_failed().value, 2);
    // The two retried and the other model's one left.
    assert_eq!(s.counts()["pending"], 3);
    let retried = lease(&mut s, &w, 10, 5);
    assert!(retried.iter().all(|l| l.attempt == 1), "{retried:?}");
}

#[test]
fn released_leases_do_not_use_an_attempt() {
    let mut s = schedule("[0]", 1);
    let w = register(&mut s, "h");
    let other = register(&mut s, "other");
    let l = lease(&mut s, &w, 1, 0);
    assert_eq!(s.release(&other, &[l[0].task_id]).value, 0);
    assert_eq!(s.release(&w, &[l[0].task_id, 999]).value, 1);
    assert_eq!(lease(&mut s, &w, 1, 1)[0].attempt, 1);
}

#[test]
fn a_checkpoints_seeds_stay_with_its_worker() {
    let mut s = schedule("[0, 10]", 4);
    let w1 = register(&mut s, "one");
    let w2 = register(&mut s, "two");
    let a = lease(&mut s, &w1, 2, 0);
    let b = lease(&mut s, &w2, 2, 0);
    let key = |l: &Lease| (l.model.clone(), l.step);
    assert_ne!(key(&a[0]), key(&b[0]), "w2 must not split w1's checkpoint");
    let a2 = lease(&mut s, &w1, 2, 1);
    assert_eq!(
        key(&a2[0]),
        key(&a[0]),
        "w1 gets the rest of its checkpoint"
    );
}

#[test]
fn a_silent_owners_checkpoint_goes_to_another_worker_first() {
    let mut s = schedule("[0]", 4);
    let active = register(&mut s, "active");
    let silent = register(&mut s, "silent");
    let a = lease(&mut s, &active, 2, 0);
    let b = lease(&mut s, &silent, 2, 0);
    assert_eq!(
        (a[0].model.as_str(), b[0].model.as_str()),
        ("org/a", "org/b")
    );
    // Long after `silent` was last seen, a newcomer takes the rest of its checkpoint
    // rather than share the one `active` still works on.
    assert!(s.heartbeat(&active, &[], 30_000).unwrap().value.is_empty());
    let newcomer = register(&mut s, "new");
    let c = lease(&mut s, &newcomer, 4, 30_000);
    assert_eq!(c.len(), 2);
    assert_eq!(c[0].model, "org/b");
}

#[test]
fn skipped_checkpoints_leave_the_queue_and_come_back() {
    let mut s = schedule("[0, 10]", 2);
    // Both models' step 0 (checkpoints 0 and 2) are left out.
    let skipped = s.skip_checkpoints(|checkpoint| checkpoint == 0 || checkpoint == 2);
    assert_eq!(skipped.value, 4);
    assert!(skipped.changes.iter().all(|c| matches!(
        c,
        Change::TaskUpdated { progress, .. } if progress.state == TaskState::Skipped
    )));
    assert_eq!(s.counts()["skipped"], 4);
    let w = register(&mut s, "h");
    assert!(lease(&mut s, &w, 10, 0).iter().all(|l| l.step == 10));
    // No longer duplicated: queued again, first steps first.
    assert_eq!(s.skip_checkpoints(|_| false).value, 4);
    assert_eq!(s.counts()["skipped"], 0);
    assert!(lease(&mut s, &w, 10, 1).iter().all(|l| l.step == 0));
}
