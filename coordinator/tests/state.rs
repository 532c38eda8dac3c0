//! The sweep's state on disk: every decision survives a reopen, a failed transaction
//! leaves nothing behind, growth, refused settings, migrations, and exports. Scheduling
//! itself is tested without storage in `schedule.rs`.

mod support;

use neuromfa_common::WeightFormat;
use neuromfa_coordinator::export;
use neuromfa_coordinator::state::StateError;
use neuromfa_coordinator::{
    Completion, Failure, FailureClass, Lease, OpenMode, SweepEnd, SweepState, TaskMetrics,
};
use support::{decide, resolved, result, two_models as spec};

fn done(state: &mut SweepState, worker: &str, lease: &Lease, now: u64) -> Completion {
    let r = result(lease.step, lease.seed);
    decide(state, |d| {
        d.complete(worker, lease.task_id, r, TaskMetrics::default(), now)
    })
}

fn complete_all(state: &mut SweepState, worker: &str, now: u64) -> usize {
    let mut n = 0;
    loop {
        let leases = decide(state, |d| d.lease(worker, 4, now));
        if leases.is_empty() {
            return n;
        }
        for l in &leases {
            assert_eq!(done(state, worker, l, now), Completion::Accepted);
            n += 1;
        }
    }
}

#[test]
fn grid_leases_complete_and_resume() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), "[0, 10, 20]", 3, "");
    let mut state = SweepState::open(s.clone(), OpenMode::Resume).unwrap();
    assert_eq!(state.schedule().counts()["pending"], 2 * 3 * 3);
    let w = decide(&mut state, |d| Ok(d.register_worker("host", 2, "0.1", 0)));

    // One lease hands out the seeds of one checkpoint, first steps first.
    let leases = decide(&mut state, |d| d.lease(&w, 10, 0));
    assert_eq!(leases.len(), 3);
    assert!(leases
        .iter()
        .all(|l| l.step == 0 && l.model == leases[0].model));
    assert_eq!(done(&mut state, &w, &leases[0], 1), Completion::Accepted);
    drop(state);

    // Reopen: the done task stays done, the leased ones are still leased to w.
    let mut state = SweepState::open(s.clone(), OpenMode::Resume).unwrap();
    let counts = state.schedule().counts();
    assert_eq!((counts["done"], counts["leased"]), (1, 2));
    assert_eq!(done(&mut state, &w, &leases[0], 2), Completion::Duplicate);
    for l in &leases[1..] {
        assert_eq!(done(&mut state, &w, l, 2), Completion::Accepted);
    }
    assert_eq!(complete_all(&mut state, &w, 3), 15);
    assert!(state.schedule().finished());
    let status = state.status(4, false);
    assert_eq!((status.done, status.duplicates_ignored), (18, 1));
    assert!(status.models.iter().all(|m| m.latest_e.is_some()));

    // Exports hold each task once.
    let data = export::load(dir.path()).unwrap();
    assert_eq!(data.tasks.len(), 18);
    assert_eq!(data.aggregates.len(), 6);
    assert_eq!(data.aggregates[0].aggregate.e_from_means, Some(0.0));
    assert!(data.aggregates[1].aggregate.e_from_means.unwrap() > 0.0);
    assert_eq!(data.spectra.len(), 6 * 2);
    let files = export::export(dir.path(), None).unwrap();
    assert_eq!(files.len(), export::EXPORT_FILES.len());
    let csv = std::fs::read_to_string(dir.path().join("exports/tasks.csv")).unwrap();
    assert_eq!(csv.lines().count(), 19);
}

#[test]
fn every_kind_of_decision_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), "[0, 10]", 2, "");
    let mut state = SweepState::open(s.clone(), OpenMode::Resume).unwrap();
    let w = decide(&mut state, |d| Ok(d.register_worker("h", 1, "v", 0)));
    let leases = decide(&mut state, |d| d.lease(&w, 2, 0));
    let (a, b) = (&leases[0], &leases[1]);
    assert_eq!(done(&mut state, &w, a, 1), Completion::Accepted);
    assert_eq!(done(&mut state, &w, a, 2), Completion::Duplicate);
    decide(&mut state, |d| {
        let failure = Failure::new(FailureClass::Checkpoint, "corrupt header");
        d.fail(&w, b.task_id, failure, 3)
    });
    let held = decide(&mut state, |d| d.lease(&w, 2, 4));
    decide(&mut state, |d| d.heartbeat(&w, &[held[0].task_id], 5_000));
    decide(&mut state, |d| Ok(d.release(&w, &[held[1].task_id])));
    state
        .transaction(|s| {
            s.record_resolution(
                "org/a",
                0,
                "same",
                &resolved("c0", WeightFormat::Safetensors),
            )
        })
        .unwrap();
    let before = state.status(6_000, false);
    drop(state);

    let mut state = SweepState::open(s, OpenMode::Resume).unwrap();
    let after = state.status(6_000, false);
    assert_eq!(
        (after.done, after.failed, after.leased, after.pending),
        (before.done, before.failed, before.leased, before.pending)
    );
    assert_eq!((after.done, after.failed, after.leased), (1, 1, 1));
    assert_eq!(after.duplicates_ignored, 1);
    assert_eq!(after.failures[0].error, "corrupt header");
    assert_eq!(state.unresolved().len(), 3, "the resolution is stored");
    assert_eq!(
        state.resolved("org/a", 0),
        Some(&resolved("c0", WeightFormat::Safetensors)),
        "with what a lease hands its worker"
    );
    // The extended deadline (15 s) was stored, not the first one (10 s).
    assert_eq!(decide(&mut state, |d| Ok(d.expire(12_000))), 0);
    // The worker is known and still holds its lease.
    let lost = decide(&mut state, |d| d.heartbeat(&w, &[held[0].task_id], 14_000));
    assert!(lost.is_empty());
    // The released task went back without using an attempt.
    let again = decide(&mut state, |d| d.lease(&w, 4, 14_001));
    let released = again.iter().find(|l| l.task_id == held[1].task_id).unwrap();
    assert_eq!(released.attempt, 1);
}

#[test]
fn a_failed_transaction_leaves_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), "[0]", 2, "");
    let mut state = SweepState::open(s.clone(), OpenMode::Resume).unwrap();
    let w = decide(&mut state, |d| Ok(d.register_worker("h", 1, "v", 0)));
    let err = state
        .transaction(|s| {
            let leases = s.decide(|d| d.lease(&w, 2, 0))?;
            assert_eq!(leases.len(), 2);
            s.decide(|d| d.complete(&w, 999, result(0, 0), TaskMetrics::default(), 0))
        })
        .unwrap_err();
    assert!(matches!(err, StateError::UnknownTask(999)), "{err}");
    // Memory was rebuilt from disk: the leases of the failed transaction are gone.
    assert_eq!(state.schedule().counts()["pending"], 4);
    drop(state);
    let state = SweepState::open(s, OpenMode::Resume).unwrap();
    assert_eq!(state.schedule().counts()["pending"], 4);
}

#[test]
fn a_state_directory_from_before_fetch_modes_is_migrated() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), "[0]", 1, "");
    let mut state = SweepState::open(s.clone(), OpenMode::Resume).unwrap();
    let w = decide(&mut state, |d| Ok(d.register_worker("h", 1, "v", 0)));
    complete_all(&mut state, &w, 0);
    drop(state);
    let db =
        rusqlite::Connection::open(dir.path().join(neuromfa_coordinator::state::DB_FILE)).unwrap();
    db.execute_batch("ALTER TABLE results DROP COLUMN fetch_mode")
        .unwrap();
    drop(db);
    let state = SweepState::open(s, OpenMode::Resume).unwrap();
    assert_eq!(state.schedule().counts()["done"], 2);
    let data = export::load(dir.path()).unwrap();
    assert!(data.fetches.iter().all(|f| f.fetch_mode.is_empty()));
    assert_eq!(data.fetches.len(), 2);
}

#[test]
fn changed_analysis_is_refused_and_growth_adds_only_new_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = SweepState::open(spec(dir.path(), "[0, 10]", 2, ""), OpenMode::Resume).unwrap();
    let w = decide(&mut state, |d| Ok(d.register_worker("h", 1, "v", 0)));
    assert_eq!(complete_all(&mut state, &w, 0), 8);
    drop(state);

    let changed = spec(dir.path(), "[0, 10]", 2, "[analysis]\nthreshold = 200");
    let err = SweepState::open(changed.clone(), OpenMode::Resume)
        .err()
        .unwrap();
    assert!(matches!(err, StateError::AnalysisChanged { .. }), "{err}");
    assert!(err.to_string().contains("--new-sweep"), "{err}");

    let grown = spec(dir.path(), "[0, 10, 20]", 3, "");
    let state = SweepState::open(grown, OpenMode::Resume).unwrap();
    let counts = state.schedule().counts();
    assert_eq!((counts["done"], counts["pending"]), (8, 18 - 8));
    drop(state);

    let fresh = SweepState::open(changed, OpenMode::NewSweep).unwrap();
    assert_eq!(fresh.schedule().counts()["done"], 0);
    assert!(std::fs::read_dir(dir.path()).unwrap().any(|e| e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .contains(".old")));
}

#[test]
fn the_distance_mode_is_an_analysis_setting_and_old_records_read_as_one_hop() {
    let dir = tempfile::tempdir().unwrap();
    let state = SweepState::open(spec(dir.path(), "[0]", 1, ""), OpenMode::Resume).unwrap();
    drop(state);
    // A state written before distance modes existed records no `distance`.
    let db =
        rusqlite::Connection::open(dir.path().join(neuromfa_coordinator::state::DB_FILE)).unwrap();
    let recorded: String = db
        .query_row("SELECT value FROM meta WHERE key = 'analysis'", [], |r| {
            r.get(0)
        })
        .unwrap();
    let mut old: serde_json::Value = serde_json::from_str(&recorded).unwrap();
    assert_eq!(old["distance"]["mode"], "one-hop");
    old.as_object_mut().unwrap().remove("distance");
    db.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'analysis'",
        [old.to_string()],
    )
    .unwrap();
    drop(db);
    let state = SweepState::open(spec(dir.path(), "[0]", 1, ""), OpenMode::Resume).unwrap();
    drop(state);

    let changed = spec(
        dir.path(),
        "[0]",
        1,
        "[analysis]\ndistance = \"shortest-path\"",
    );
    let err = SweepState::open(changed, OpenMode::Resume).err().unwrap();
    assert!(matches!(err, StateError::AnalysisChanged { .. }), "{err}");
}

/// Regression: `tasks.csv` carried `attempts`, so a sweep that lost a lease (a worker or
/// coordinator killed) never exported the same tasks as one that ran straight through.
#[test]
fn task_exports_do_not_depend_on_lost_leases_and_fetch_exports_count_attempts() {
    let run = |lose_a_lease: bool| {
        let dir = tempfile::tempdir().unwrap();
        let mut state = SweepState::open(spec(dir.path(), "[0]", 1, ""), OpenMode::Resume).unwrap();
        let w = decide(&mut state, |d| Ok(d.register_worker("h", 1, "v", 0)));
        let mut leases = decide(&mut state, |d| d.lease(&w, 10, 0));
        if lose_a_lease {
            assert_eq!(decide(&mut state, |d| Ok(d.expire(20_000))), 1);
            leases = decide(&mut state, |d| d.lease(&w, 10, 20_001));
            assert_eq!(leases[0].attempt, 2);
        }
        for l in &leases {
            assert_eq!(done(&mut state, &w, l, 30_000), Completion::Accepted);
        }
        complete_all(&mut state, &w, 30_001);
        export::export(dir.path(), None).unwrap();
        let read =
            |name: &str| std::fs::read_to_string(dir.path().join("exports").join(name)).unwrap();
        (read("tasks.csv"), read("tasks.json"), read("fetch.csv"))
    };
    let (straight, interrupted) = (run(false), run(true));
    assert_eq!(straight.0, interrupted.0);
    assert_eq!(straight.1, interrupted.1);
    // How the run went is still exported, beside what fetching cost.
    let attempts = |csv: &str| -> Vec<String> {
        let mut reader = csv::Reader::from_reader(csv.as_bytes());
        let column = reader
            .headers()
            .unwrap()
            .iter()
            .position(|h| h == "attempts")
            .unwrap();
        reader
            .records()
            .map(|r| r.unwrap()[column].to_string())
            .collect()
    };
    assert_eq!(attempts(&straight.2), ["1", "1"]);
    assert_eq!(attempts(&interrupted.2), ["2", "1"]);
}

#[test]
fn resolutions_from_before_weight_formats_are_resolved_again() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), "[0, 10]", 1, "");
    let mut state = SweepState::open(s.clone(), OpenMode::Resume).unwrap();
    state
        .transaction(|st| {
            st.record_resolution("org/a", 0, "h0", &resolved("c0", WeightFormat::PytorchBin))?;
            st.record_resolution(
                "org/a",
                10,
                "h10",
                &resolved("c10", WeightFormat::Safetensors),
            )
        })
        .unwrap();
    assert_eq!(state.unresolved().len(), 2, "org/b is not resolved");
    let formats = &state.status(0, false).models[0].weights_formats;
    assert_eq!(formats.get("pytorch-bin"), Some(&1));
    assert_eq!(formats.get("safetensors"), Some(&1));
    drop(state);
    let data = export::load(dir.path()).unwrap();
    let row = data
        .tasks
        .iter()
        .find(|t| t.model == "org/a" && t.step == 0);
    assert_eq!(row.map(|t| t.weights_format.as_str()), Some("pytorch-bin"));

    // A state directory from before formats: the hashes stay, the formats are not known,
    // and those checkpoints are resolved again.
    let db =
        rusqlite::Connection::open(dir.path().join(neuromfa_coordinator::state::DB_FILE)).unwrap();
    db.execute_batch("ALTER TABLE revisions DROP COLUMN weights_format")
        .unwrap();
    drop(db);
    let mut state = SweepState::open(s, OpenMode::Resume).unwrap();
    assert_eq!(state.unresolved().len(), 4);
    let data = export::load(dir.path()).unwrap();
    let row = data
        .tasks
        .iter()
        .find(|t| t.model == "org/a" && t.step == 0);
    assert_eq!(
        row.map(|t| (t.weights_sha256.as_str(), t.weights_format.as_str())),
        Some(("h0", ""))
    );
    state
        .transaction(|st| {
            st.record_resolution("org/a", 0, "h0", &resolved("c0", WeightFormat::PytorchBin))
        })
        .unwrap();
    assert_eq!(state.unresolved().len(), 3);
    let data = export::load(dir.path()).unwrap();
    assert_eq!(data.aggregates.len(), 0);
    let row = data
        .tasks
        .iter()
        .find(|t| t.model == "org/a" && t.step == 0);
    assert_eq!(row.map(|t| t.weights_format.as_str()), Some("pytorch-bin"));
}

#[test]
fn a_tripped_breaker_survives_a_reopen_and_probes_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let s = spec(dir.path(), "[0, 10]", 1, "");
    let mut state = SweepState::open(s.clone(), OpenMode::Resume).unwrap();
    let w = decide(&mut state, |d| Ok(d.register_worker("h", 1, "v", 0)));
    for now in 1..3 {
        let leases = decide(&mut state, |d| d.lease(&w, 4, now));
        decide(&mut state, |d| {
            let failure = Failure::new(FailureClass::HubAuth, "HTTP 401");
            d.fail(&w, leases[0].task_id, failure, now)
        });
    }
    let before = state.status(3, false).stopped.expect("tripped");
    assert!(decide(&mut state, |d| d.lease(&w, 4, 4)).is_empty());
    drop(state);
    // The summary says why while it is tripped, and nothing once it is not.
    let summary = |dir: &std::path::Path| {
        export::export(dir, None).unwrap();
        std::fs::read_to_string(dir.join("exports/summary.md")).unwrap()
    };
    let stopped = summary(dir.path());
    assert!(
        stopped.contains("Stopped by a systemic failure"),
        "{stopped}"
    );
    assert!(stopped.contains(&before.reason), "{stopped}");

    let mut state = SweepState::open(s.clone(), OpenMode::Resume).unwrap();
    let status = state.status(5, false);
    let after = status
        .stopped
        .clone()
        .expect("still tripped after a reopen");
    assert_eq!(
        (&after.reason, &after.implicated),
        (&before.reason, &before.implicated)
    );
    assert_eq!(status.end(), Some(SweepEnd::Stopped(before.reason.clone())));
    // What loops poll instead of the whole status says the same.
    assert_eq!(state.progress(), status.progress());
    assert_eq!((status.pending, status.failed), (4, 0));
    // Whoever started it again may have fixed the cause: one probe at once.
    assert_eq!(decide(&mut state, |d| d.lease(&w, 4, 5)).len(), 1);
    let resumed = decide(&mut state, |d| Ok(d.resume()));
    assert_eq!(resumed, Some(before.reason));
    drop(state);

    let mut state = SweepState::open(s, OpenMode::Resume).unwrap();
    let status = state.status(6, false);
    assert!(status.stopped.is_none(), "the resume is stored");
    assert_eq!(state.progress(), status.progress());
    assert_eq!(state.progress().end(), None);
    assert!(!summary(dir.path()).contains("Stopped by a systemic failure"));
}

/// A resolution serving the weights `hash` (one safetensors file at commit `c-{hash}`).
fn record(state: &mut SweepState, model: &str, step: u64, hash: &str) {
    state
        .transaction(|s| {
            s.resolution_ended(model, step);
            s.record_resolution(
                model,
                step,
                hash,
                &resolved(&format!("c-{hash}"), WeightFormat::Safetensors),
            )?;
            s.apply_duplicate_policy().map(drop)
        })
        .unwrap();
}

/// The checkpoints of every task leases hand out now, each task completed once leased.
fn leasable(state: &mut SweepState, worker: &str) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    loop {
        let leases = decide(state, |d| d.lease(worker, 100, 0));
        if leases.is_empty() {
            break;
        }
        out.extend(leases.iter().map(|l| (l.model.clone(), l.step)));
        // Finished, so that the next lease moves on.
        for l in &leases {
            assert_eq!(done(state, worker, l, 0), Completion::Accepted);
        }
    }
    out.sort();
    out.dedup();
    out
}

#[test]
fn leasing_starts_while_revisions_resolve_and_reuse_never_computes_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), "[0, 10, 20]", 2, "");
    s.duplicates = neuromfa_coordinator::integrity::DuplicatePolicy::Reuse;
    let mut state = SweepState::open(s, OpenMode::Resume).unwrap();
    let w = decide(&mut state, |d| Ok(d.register_worker("h", 2, "v", 0)));

    // Model by model, each model's last step first: each is free once it is resolved.
    let order: Vec<(String, u64)> = state
        .await_resolution()
        .into_iter()
        .map(|k| (k.model, k.step))
        .collect();
    let key = |m: &str, s: u64| (m.to_string(), s);
    assert_eq!(
        order,
        vec![
            key("org/a", 20),
            key("org/a", 10),
            key("org/a", 0),
            key("org/b", 20),
            key("org/b", 10),
            key("org/b", 0),
        ]
    );
    assert!(leasable(&mut state, &w).is_empty(), "nothing resolved yet");
    assert!(!state.schedule().finished(), "held tasks are still pending");

    // org/a step 20 resolves: its tasks go, while five revisions are still unresolved.
    record(&mut state, "org/a", 20, "a20");
    assert_eq!(leasable(&mut state, &w), vec![key("org/a", 20)]);

    // Step 10 serves step 20's weights: under reuse it is never leased.
    record(&mut state, "org/a", 10, "a20");
    assert!(leasable(&mut state, &w).is_empty());

    // Under reuse an earlier step waits for every later step of its model: org/b step 10
    // resolved before step 20 is not leased yet (it may turn out to be a duplicate).
    record(&mut state, "org/b", 10, "b10");
    assert!(leasable(&mut state, &w).is_empty());
    record(&mut state, "org/b", 20, "b20");
    assert_eq!(
        leasable(&mut state, &w),
        vec![key("org/b", 10), key("org/b", 20)]
    );
    record(&mut state, "org/a", 0, "a0");
    assert_eq!(leasable(&mut state, &w), vec![key("org/a", 0)]);

    // A resolution that fails ends too: org/b step 0 is leased as unique.
    state
        .transaction(|s| {
            s.resolution_ended("org/b", 0);
            s.apply_duplicate_policy().map(drop)
        })
        .unwrap();
    assert_eq!(leasable(&mut state, &w), vec![key("org/b", 0)]);
    assert!(state.schedule().finished());
    let status = state.status(1, false);
    assert_eq!(
        status.done,
        5 * 2,
        "the duplicate's two seeds were not computed"
    );
    let data = export::load(dir.path()).unwrap();
    let reused: Vec<_> = data
        .tasks
        .iter()
        .filter(|t| t.model == "org/a" && t.step == 10)
        .map(|t| (t.state.as_str(), t.duplicate_of))
        .collect();
    assert_eq!(
        reused,
        vec![("skipped", Some(20)); 2],
        "the duplicate's tasks were not computed"
    );
}

#[test]
fn stopping_resolution_lets_every_held_checkpoint_go() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = spec(dir.path(), "[0, 10]", 1, "");
    s.duplicates = neuromfa_coordinator::integrity::DuplicatePolicy::Skip;
    let mut state = SweepState::open(s, OpenMode::Resume).unwrap();
    let w = decide(&mut state, |d| Ok(d.register_worker("h", 2, "v", 0)));
    assert_eq!(state.await_resolution().len(), 4);
    assert!(leasable(&mut state, &w).is_empty());
    state
        .transaction(|s| {
            s.stop_awaiting_resolution();
            Ok(())
        })
        .unwrap();
    assert_eq!(leasable(&mut state, &w).len(), 4);
}
