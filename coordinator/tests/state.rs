//! The coordinator's decisions without a socket: grid, leases, expiry, retries,
//! affinity, exactly-once results, resume and export.

use std::path::Path;

use neuromfa_common::SeedResult;
use neuromfa_coordinator::export;
use neuromfa_coordinator::state::StateError;
use neuromfa_coordinator::{Completion, Lease, OpenMode, SweepSpec, SweepState, TaskMetrics};

fn spec(dir: &Path, steps: &str, seeds: u32, extra: &str) -> SweepSpec {
    let text = format!(
        r#"
name = "test"
state_dir = "{}"
seeds = {seeds}
steps = {steps}
[[models]]
repo = "org/a"
[[models]]
repo = "org/b"
[coordinator]
lease_seconds = 10
max_attempts = 2
{extra}
"#,
        dir.display()
    );
    SweepSpec::from_toml(&text, Path::new("spec.toml")).unwrap()
}

fn result(step: u64, seed: u32) -> SeedResult {
    let alpha0 = 1.5 - step as f64 / 100.0 + seed as f64 / 1000.0;
    SeedResult {
        step,
        seed,
        alpha0,
        width: 0.6,
        tau: vec![0.0; 3],
        alpha: vec![alpha0, alpha0 + 0.3],
        f_alpha: vec![0.5, 1.0],
        r2: vec![1.0; 3],
        alpha0_peak: alpha0,
        alpha0_central: None,
        edges: 10,
        source_nodes: 5,
        kept_nodes: 5,
        radii: 3,
        node_dimension_mean: None,
        parameters: 1000,
    }
}

fn done(state: &mut SweepState, worker: &str, lease: &Lease, now: u64) -> Completion {
    let r = result(lease.step, lease.seed);
    state
        .transaction(|s| s.complete(worker, lease.task_id, &r, TaskMetrics::default(), now))
        .unwrap()
}

fn complete_all(state: &mut SweepState, worker: &str, now: u64) -> usize {
    let mut n = 0;
    loop {
        let leases = state.transaction(|s| s.lease(worker, 4, now)).unwrap();
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
    assert_eq!(state.counts()["pending"], 2 * 3 * 3);
    let w = state
        .transaction(|s| s.register_worker("host", 2, "0.1", 0))
        .unwrap();

    // One lease hands out the seeds of one checkpoint, first steps first.
    let leases = state.transaction(|s| s.lease(&w, 10, 0)).unwrap();
    assert_eq!(leases.len(), 3);
    assert!(leases
        .iter()
        .all(|l| l.step == 0 && l.model == leases[0].model));
    assert_eq!(done(&mut state, &w, &leases[0], 1), Completion::Accepted);
    drop(state);

    // Reopen: the done task stays done, the leased ones are still leased to w.
    let mut state = SweepState::open(s.clone(), OpenMode::Resume).unwrap();
    let counts = state.counts();
    assert_eq!((counts["done"], counts["leased"]), (1, 2));
    assert_eq!(done(&mut state, &w, &leases[0], 2), Completion::Duplicate);
    for l in &leases[1..] {
        assert_eq!(done(&mut state, &w, l, 2), Completion::Accepted);
    }
    assert_eq!(complete_all(&mut state, &w, 3), 15);
    assert!(state.finished());
    let status = state.status(4, false);
    assert_eq!((status.done, status.duplicates_ignored), (18, 1));
    assert!(status.models.iter().all(|m| m.latest_e.is_some()));

    // Exports hold each task once.
    let data = export::load(dir.path()).unwrap();
    assert_eq!(data.tasks.len(), 18);
    assert_eq!(data.aggregates.len(), 6);
    assert_eq!(data.aggregates[0].e_from_means, Some(0.0));
    assert!(data.aggregates[1].e_from_means.unwrap() > 0.0);
    assert_eq!(data.spectra.len(), 6 * 2);
    let files = export::export(dir.path(), None).unwrap();
    assert_eq!(files.len(), export::EXPORT_FILES.len());
    let csv = std::fs::read_to_string(dir.path().join("exports/tasks.csv")).unwrap();
    assert_eq!(csv.lines().count(), 19);
}

#[test]
fn expired_leases_requeue_then_fail_with_reason() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = SweepState::open(spec(dir.path(), "[0]", 1, ""), OpenMode::Resume).unwrap();
    let w = state
        .transaction(|s| s.register_worker("h", 1, "v", 0))
        .unwrap();
    let lease = state.transaction(|s| s.lease(&w, 10, 0)).unwrap();
    assert_eq!(lease.len(), 1);
    let id = lease[0].task_id;
    // Heartbeats keep it.
    assert!(state
        .transaction(|s| s.heartbeat(&w, &[id], 9_000))
        .unwrap()
        .is_empty());
    assert_eq!(state.transaction(|s| s.expire_leases(15_000)).unwrap(), 0);
    // Silence lapses it: attempt 1 of 2, back to pending.
    assert_eq!(state.transaction(|s| s.expire_leases(20_000)).unwrap(), 1);
    // Pending: this task and the other model's, never leased.
    assert_eq!(state.counts()["pending"], 2);
    let lost = state
        .transaction(|s| s.heartbeat(&w, &[id], 20_001))
        .unwrap();
    assert_eq!(lost, vec![id]);
    let again = state.transaction(|s| s.lease(&w, 10, 20_002)).unwrap();
    assert_eq!(again[0].attempt, 2);
    state.transaction(|s| s.expire_leases(40_000)).unwrap();
    assert_eq!(state.counts()["failed"], 1);
    let status = state.status(40_000, false);
    assert!(
        status.failures[0].error.contains("lease expired"),
        "{:?}",
        status.failures
    );
    // A late result for a lapsed lease is still a result.
    assert_eq!(
        done(&mut state, &w, &lease[0], 41_000),
        Completion::Accepted
    );
    assert_eq!(state.counts()["done"], 1);
}

#[test]
fn failures_retry_until_the_limit_and_retry_failed_requeues() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = SweepState::open(spec(dir.path(), "[0]", 2, ""), OpenMode::Resume).unwrap();
    let w = state
        .transaction(|s| s.register_worker("h", 1, "v", 0))
        .unwrap();
    let leases = state.transaction(|s| s.lease(&w, 10, 0)).unwrap();
    let (a, b) = (leases[0].task_id, leases[1].task_id);
    assert!(state
        .transaction(|s| s.fail(&w, a, "network blip", false, 1))
        .unwrap());
    assert!(!state
        .transaction(|s| s.fail(&w, b, "corrupt header", true, 1))
        .unwrap());
    let retry = state.transaction(|s| s.lease(&w, 10, 2)).unwrap();
    assert_eq!(retry.iter().map(|l| l.task_id).collect::<Vec<_>>(), vec![a]);
    assert!(!state
        .transaction(|s| s.fail(&w, a, "network blip again", false, 3))
        .unwrap());
    assert_eq!(state.counts()["failed"], 2);
    let errors: Vec<String> = state
        .status(4, false)
        .failures
        .into_iter()
        .map(|f| f.error)
        .collect();
    assert!(errors.contains(&"corrupt header".to_string()), "{errors:?}");
    assert_eq!(state.transaction(|s| s.retry_failed()).unwrap(), 2);
    // The two retried and the other model's two.
    assert_eq!(state.counts()["pending"], 4);
    assert_eq!(
        state.transaction(|s| s.lease(&w, 10, 5)).unwrap()[0].attempt,
        1
    );
}

#[test]
fn released_leases_do_not_use_an_attempt() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = SweepState::open(spec(dir.path(), "[0]", 1, ""), OpenMode::Resume).unwrap();
    let w = state
        .transaction(|s| s.register_worker("h", 1, "v", 0))
        .unwrap();
    let l = state.transaction(|s| s.lease(&w, 1, 0)).unwrap();
    assert_eq!(
        state
            .transaction(|s| s.release(&w, &[l[0].task_id]))
            .unwrap(),
        1
    );
    assert_eq!(
        state.transaction(|s| s.lease(&w, 1, 1)).unwrap()[0].attempt,
        1
    );
}

#[test]
fn a_checkpoints_seeds_stay_with_its_worker() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = SweepState::open(spec(dir.path(), "[0, 10]", 4, ""), OpenMode::Resume).unwrap();
    let w1 = state
        .transaction(|s| s.register_worker("one", 1, "v", 0))
        .unwrap();
    let w2 = state
        .transaction(|s| s.register_worker("two", 1, "v", 0))
        .unwrap();
    let a = state.transaction(|s| s.lease(&w1, 2, 0)).unwrap();
    let b = state.transaction(|s| s.lease(&w2, 2, 0)).unwrap();
    let key = |l: &Lease| (l.model.clone(), l.step);
    assert_ne!(key(&a[0]), key(&b[0]), "w2 must not split w1's checkpoint");
    let a2 = state.transaction(|s| s.lease(&w1, 2, 1)).unwrap();
    assert_eq!(
        key(&a2[0]),
        key(&a[0]),
        "w1 gets the rest of its checkpoint"
    );
}

#[test]
fn changed_analysis_is_refused_and_growth_adds_only_new_tasks() {
    let dir = tempfile::tempdir().unwrap();
    let mut state = SweepState::open(spec(dir.path(), "[0, 10]", 2, ""), OpenMode::Resume).unwrap();
    let w = state
        .transaction(|s| s.register_worker("h", 1, "v", 0))
        .unwrap();
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
    let counts = state.counts();
    assert_eq!((counts["done"], counts["pending"]), (8, 18 - 8));
    drop(state);

    let fresh = SweepState::open(changed, OpenMode::NewSweep).unwrap();
    assert_eq!(fresh.counts()["done"], 0);
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
        let w = state
            .transaction(|s| s.register_worker("h", 1, "v", 0))
            .unwrap();
        let mut leases = state.transaction(|s| s.lease(&w, 10, 0)).unwrap();
        if lose_a_lease {
            assert_eq!(state.transaction(|s| s.expire_leases(20_000)).unwrap(), 1);
            leases = state.transaction(|s| s.lease(&w, 10, 20_001)).unwrap();
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
