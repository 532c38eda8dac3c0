//! Scheduling without storage: leases, affinity, expiry, retries, releases, exactly-once
//! results and duplicate skipping, driven on a `Schedule` in memory, with the changes
//! each decision hands the store.

mod support;

use neuromfa_coordinator::record::TaskProgress;
use neuromfa_coordinator::schedule::Outcome;
use neuromfa_coordinator::{
    Change, Completion, Failure, FailureClass, Lease, Schedule, StateError, TaskMetrics, TaskState,
};

fn schedule(steps: &str, seeds: u32) -> Schedule {
    support::schedule(steps, seeds, "")
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

fn ids(leases: &[Lease]) -> Vec<i64> {
    leases.iter().map(|l| l.task_id).collect()
}

fn progress_of(changes: &[Change], task_id: i64) -> &TaskProgress {
    changes
        .iter()
        .find_map(|c| match c {
            Change::TaskUpdated { id, progress } if *id == task_id => Some(progress),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no row for task {task_id} in {changes:?}"))
}

#[test]
fn transient_failures_wait_and_cost_nothing_and_a_checkpoints_own_fail_at_once() {
    let mut s = schedule("[0]", 2);
    let w = register(&mut s, "h");
    let leases = lease(&mut s, &w, 10, 0);
    let (a, b) = (leases[0].task_id, leases[1].task_id);
    let limited = Failure::new(FailureClass::Transient, "HTTP 429").retry_after(Some(3_000));
    let outcome = s.fail(&w, a, limited, 1).unwrap();
    assert!(outcome.value);
    let p = progress_of(&outcome.changes, a);
    assert_eq!((p.state, p.attempts), (TaskState::Pending, 0));
    assert_eq!(p.last_error.as_deref(), Some("HTTP 429"));
    let corrupt = Failure::new(FailureClass::Checkpoint, "corrupt header");
    assert!(!s.fail(&w, b, corrupt, 1).unwrap().value);
    assert_eq!(task_state(&s, b), TaskState::Failed);

    // Until the Hub's wait is over only the other model's task goes out.
    let other = lease(&mut s, &w, 10, 2);
    assert!(other.iter().all(|l| l.model == "org/b"), "{other:?}");
    assert!(lease(&mut s, &w, 10, 3_000).is_empty());
    assert_eq!((s.waiting(), s.finished()), (1, false));
    let retry = lease(&mut s, &w, 10, 3_001);
    assert_eq!((ids(&retry), retry[0].attempt), (vec![a], 1));
    // With no wait named, its own, doubling with the failures in a row: 2 s after the second.
    let reset = Failure::new(FailureClass::Transient, "connection reset");
    assert!(s.fail(&w, a, reset, 3_002).unwrap().value);
    assert!(lease(&mut s, &w, 10, 5_001).is_empty());
    assert_eq!(ids(&lease(&mut s, &w, 10, 5_002)), [a]);

    // Only the holder of a lease speaks for its task.
    let stranger = register(&mut s, "other");
    let not_mine = Failure::new(FailureClass::Checkpoint, "not mine");
    let ignored = s.fail(&stranger, a, not_mine, 5_003).unwrap();
    assert!(!ignored.value && ignored.changes.is_empty());
    assert_eq!(task_state(&s, a), TaskState::Leased);

    assert_eq!(s.retry_failed().value, 1);
    let retried = lease(&mut s, &w, 10, 5_004);
    assert_eq!((ids(&retried), retried[0].attempt), (vec![b], 1));
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

/// The tasks' attempts, summed: what failures have cost.
fn attempts_spent(s: &Schedule) -> u32 {
    s.tasks().iter().map(|t| t.progress.attempts).sum()
}

fn fail_all(s: &mut Schedule, worker: &str, leases: &[Lease], class: FailureClass, now: u64) {
    for l in leases {
        let failure = Failure::new(class, format!("{class} at step {}", l.step));
        // In memory only: nothing here stores what the decision changed.
        let _ = s.fail(worker, l.task_id, failure, now).unwrap();
    }
}

#[test]
fn one_systemic_class_on_two_checkpoints_stops_leasing_and_gives_the_attempts_back() {
    let mut s = schedule("[0, 10]", 2);
    let (w1, w2) = (register(&mut s, "one"), register(&mut s, "two"));
    let (a, b) = (lease(&mut s, &w1, 10, 0), lease(&mut s, &w2, 10, 0));
    let refused = FailureClass::HubUnprocessable;
    fail_all(&mut s, &w1, &a, refused, 1);
    // One checkpoint refused may be that repository's business: its tasks fail.
    assert_eq!((s.counts()["failed"], s.stopped()), (2, None));

    let tripping = Failure::new(refused, "HTTP 422 listing org/b");
    let outcome = s.fail(&w2, b[0].task_id, tripping, 2).unwrap();
    assert!(outcome.value, "given back to be tried again");
    let stored = outcome
        .changes
        .iter()
        .find_map(|c| match c {
            Change::BreakerUpdated(record) => record.trip.clone(),
            _ => None,
        })
        .expect("the trip is stored with the decision");
    assert_eq!(stored.implicated.len(), 2);
    let reason = s.stopped().expect("stopped");
    assert!(
        reason.contains("hub-unprocessable failures on 2 checkpoints"),
        "{reason}"
    );
    assert!(reason.contains("HTTP 422 listing org/b"), "{reason}");
    // The lease still out fails too, and costs nothing either.
    fail_all(&mut s, &w2, &b[1..], refused, 3);
    assert_eq!(s.counts()["failed"], 0);
    assert_eq!(s.counts()["pending"], 8);
    assert_eq!(attempts_spent(&s), 0);
    assert!(lease(&mut s, &w1, 10, 4).is_empty());
    assert!(!s.finished());
}

#[test]
fn a_tripped_breaker_probes_one_task_at_a_time_and_a_success_resumes() {
    let mut s = schedule("[0, 10]", 2);
    let w = register(&mut s, "one");
    let auth = FailureClass::HubAuth;
    let first = lease(&mut s, &w, 10, 0);
    fail_all(&mut s, &w, &first, auth, 1);
    let second = lease(&mut s, &w, 10, 2);
    fail_all(&mut s, &w, &second, auth, 2);
    assert!(s.stopped().is_some());
    let implicated: Vec<(String, u64)> = [&first[0], &second[0]]
        .iter()
        .map(|l| (l.model.clone(), l.step))
        .collect();

    // The first probe 30 s (the default) after the trip, from a checkpoint it did not
    // implicate, and nothing else while it is out.
    assert!(lease(&mut s, &w, 10, 30_001).is_empty());
    let probe = lease(&mut s, &w, 10, 30_002);
    assert_eq!(probe.len(), 1);
    assert!(!implicated.contains(&(probe[0].model.clone(), probe[0].step)));
    assert!(lease(&mut s, &w, 10, 30_003).is_empty());
    // A failed probe doubles the wait.
    fail_all(&mut s, &w, &probe, auth, 31_000);
    assert!(lease(&mut s, &w, 10, 90_999).is_empty());
    let probe = lease(&mut s, &w, 10, 91_000);
    assert_eq!((probe.len(), probe[0].attempt), (1, 1));
    // A probe given back (its worker stopping) lets the next lease probe again.
    assert_eq!(s.release(&w, &[probe[0].task_id]).value, 1);
    let probe = lease(&mut s, &w, 10, 91_001);
    assert_eq!(probe.len(), 1);

    let outcome = complete(&mut s, &w, &probe[0], 91_500);
    assert!(outcome
        .changes
        .iter()
        .any(|c| matches!(c, Change::BreakerUpdated(r) if r.trip.is_none())));
    assert_eq!(s.stopped(), None);
    assert_eq!(lease(&mut s, &w, 10, 91_501).len(), 2);
    assert_eq!(s.counts()["failed"], 0);
}

#[test]
fn five_checkpoints_failing_in_a_row_trip_it_whatever_the_class() {
    let mut s = schedule("[0, 10, 20]", 1);
    let w = register(&mut s, "one");
    let corrupt = FailureClass::Checkpoint;
    // A success between failures: each fails alone.
    for now in 0..3 {
        let l = lease(&mut s, &w, 10, now);
        fail_all(&mut s, &w, &l, corrupt, now);
    }
    let ok = lease(&mut s, &w, 10, 3);
    assert_eq!(complete(&mut s, &w, &ok[0], 3).value, Completion::Accepted);
    for now in 4..6 {
        let l = lease(&mut s, &w, 10, now);
        fail_all(&mut s, &w, &l, corrupt, now);
    }
    assert_eq!((s.counts()["failed"], s.stopped()), (5, None));

    // Five distinct checkpoints in a row, none succeeding between.
    let mut s = schedule("[0, 10, 20]", 1);
    let w = register(&mut s, "one");
    for now in 0..4 {
        let l = lease(&mut s, &w, 10, now);
        fail_all(&mut s, &w, &l, corrupt, now);
    }
    assert_eq!((s.counts()["failed"], s.stopped()), (4, None));
    let fifth = lease(&mut s, &w, 10, 4);
    fail_all(&mut s, &w, &fifth, corrupt, 4);
    let reason = s.stopped().expect("stopped");
    assert!(reason.contains("5 checkpoints failed in a row"), "{reason}");
    assert_eq!((s.counts()["failed"], attempts_spent(&s)), (0, 0));

    // Told to resume, the five are tried again; failing on their own bytes once more,
    // they fail alone, without tripping it again.
    let resumed = s.resume();
    assert!(resumed.value.is_some_and(|r| r.contains("in a row")));
    assert!(s.resume().value.is_none(), "resumed already");
    for now in 10..15 {
        let l = lease(&mut s, &w, 10, now);
        fail_all(&mut s, &w, &l, corrupt, now);
    }
    assert_eq!((s.counts()["failed"], s.stopped()), (5, None));
}
