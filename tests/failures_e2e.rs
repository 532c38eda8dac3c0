//! How sweeps fail, end to end: a Hub refusing every listing stops the sweep (exit 5)
//! without failing a task, and a resume over RPC finishes it as a clean run would; a Hub
//! rate-limiting in windows costs no task; failed tasks end the sweep with exit 4 and are
//! re-queued on a live coordinator.

mod support;

use std::time::Duration;

use support::chaos_checks::{assert_same_exports, read_exports};
use support::cluster::*;
use support::faulty_hub::Fault;

const FINISH: Duration = Duration::from_secs(240);
const SEEDS: u32 = 2;

fn publish(hub: &std::path::Path) {
    publish_two_models(hub);
}

fn code(out: &std::process::Output) -> Option<i32> {
    out.status.code()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `neuromfa status --wait` on the cluster's coordinator, checked to exit with `expected`.
fn wait_for_end(cluster: &Cluster, expected: i32) -> String {
    let url = cluster.coordinator_url();
    let waited = cluster.run(&["status", "--wait", &url]);
    let said = text(&waited);
    assert_eq!(code(&waited), Some(expected), "{said}\n{}", cluster.logs());
    said
}

/// Leases the coordinator took back as failed, from its log.
fn failures_logged(cluster: &Cluster) -> usize {
    let log = cluster.coordinator.as_ref().unwrap().log_text();
    log.lines().filter(|l| l.contains("task failed")).count()
}

fn attempts_spent(cluster: &Cluster) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        cluster.state_dir.join("sweep.sqlite"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row("SELECT SUM(attempts) FROM tasks", [], |r| r.get(0))
        .unwrap()
}

/// Polls `path` until it holds `needle` (the coordinator writes exports in its own time).
fn wait_for_text(cluster: &Cluster, name: &str, needle: &str) -> String {
    let deadline = std::time::Instant::now() + FINISH;
    loop {
        let path = cluster.state_dir.join("exports").join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if text.contains(needle) {
            return text;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{name} never said {needle:?}:\n{text}\n{}",
            cluster.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_hub_refusing_every_listing_stops_the_sweep_and_a_resume_finishes_it_as_a_clean_run() {
    // Probes far apart: only the resume below starts it again.
    let mut cluster = Cluster::with_faulty_hub(
        publish,
        two_model_specs(),
        SEEDS,
        "breaker_probe_seconds = 3600",
    );
    cluster.hub_fault(Fault::UnprocessablePathsInfo);
    cluster.start_coordinator_with(&[]);
    cluster.start_worker(TOKEN);
    cluster.start_worker(TOKEN);
    let url = cluster.coordinator_url();

    let said = wait_for_end(&cluster, 5);
    assert!(said.contains("stopped by a systemic failure"), "{said}");
    assert!(said.contains("hub-unprocessable"), "{said}");
    assert!(said.contains("422"), "{said}");
    let status = cluster.status().unwrap();
    assert_eq!(status["failed"], 0, "{status}");
    assert_eq!(status["pending"], 12, "{status}");
    assert_eq!(attempts_spent(&cluster), 0, "attempts given back");
    // At most the two workers' checkpoints and one more, in flight as it tripped.
    let failed = failures_logged(&cluster);
    assert!(
        (1..=3 * SEEDS as usize).contains(&failed),
        "{failed} failures"
    );
    let summary = wait_for_text(&cluster, "summary.md", "Stopped by a systemic failure");
    assert!(summary.contains("hub-unprocessable"), "{summary}");

    cluster.hub_fault(Fault::None);
    let resumed = cluster.run(&["sweep", "resume", &url]);
    assert_eq!(code(&resumed), Some(0), "{}", text(&resumed));
    assert!(
        text(&resumed).contains("leasing resumed"),
        "{}",
        text(&resumed)
    );
    wait_for_end(&cluster, 0);
    let coordinator = cluster.coordinator.as_mut().unwrap();
    coordinator.terminate();
    let exit = coordinator.wait_exit(FINISH);
    assert!(exit.is_some_and(|s| s.success()), "{}", cluster.logs());

    let mut clean = Cluster::new(publish, two_model_specs(), SEEDS, "");
    clean.start_coordinator();
    clean.start_worker(TOKEN);
    clean.wait_finished(FINISH);
    let clean_exports = read_exports(&clean.state_dir.join("exports"));
    assert_same_exports(&clean_exports, &cluster.state_dir.join("exports"));
}

#[test]
fn sweep_run_against_a_hub_refusing_every_listing_exits_with_the_breakers_code() {
    let cluster = Cluster::with_faulty_hub(publish, two_model_specs(), SEEDS, "");
    cluster.hub_fault(Fault::UnprocessablePathsInfo);
    let out = cluster.sweep_run_output(2);
    assert_eq!(code(&out), Some(5), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("stopped by a systemic failure"), "{said}");
    assert!(said.contains("run the same command again"), "{said}");
    let summary = cluster.export_file("summary.md");
    assert!(
        summary.contains("Stopped by a systemic failure"),
        "{summary}"
    );
    let tasks = csv_rows(&cluster.export_file("tasks.csv"));
    assert!(tasks.iter().all(|t| t["state"] == "pending"), "{tasks:?}");
}

#[test]
fn a_hub_rate_limiting_in_windows_fails_no_task_and_spends_no_attempt() {
    let mut cluster = Cluster::with_faulty_hub(publish, two_model_specs(), SEEDS, "");
    let windows = Fault::RateLimitWindows {
        limited: Duration::from_secs(3),
        open: Duration::from_secs(2),
    };
    // Windows open at the first request after the fault is set: the coordinator meets
    // the first one resolving the checkpoints...
    cluster.hub_fault(windows);
    cluster.start_coordinator();
    cluster.wait_status(FINISH, |s| s["unresolved"] == 0);
    let refused_resolving = cluster.hub_refused();
    assert!(refused_resolving > 0, "no resolution met a window");
    // ...and the workers the next.
    cluster.hub_fault(windows);
    cluster.start_worker(TOKEN);
    cluster.start_worker(TOKEN);
    cluster.wait_finished(FINISH);
    assert!(
        cluster.hub_refused() > refused_resolving,
        "no worker's request met a window"
    );
    let tasks = csv_rows(&cluster.export_file("tasks.csv"));
    assert_eq!(tasks.len(), 12);
    assert!(tasks.iter().all(|t| t["state"] == "done"), "{tasks:?}");
    let fetches = csv_rows(&cluster.export_file("fetch.csv"));
    assert!(fetches.iter().all(|f| f["attempts"] == "1"), "{fetches:?}");
}

#[test]
fn failed_tasks_end_the_sweep_with_their_code_and_retry_failed_finishes_them_while_it_runs() {
    let step1000 = |hub: &std::path::Path| hub.join("test-org/tiny/step1000/model.safetensors");
    let mut cluster = Cluster::new(
        |hub| {
            publish_two_models(hub);
            let bad = step1000(hub);
            let bytes = std::fs::read(&bad).unwrap();
            std::fs::write(&bad, &bytes[..bytes.len() / 3]).unwrap();
        },
        two_model_specs(),
        1,
        "",
    );
    let out = cluster.sweep_run_output(2);
    assert_eq!(code(&out), Some(4), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("1 failed task(s)"), "{said}");
    assert!(said.contains("test-org/tiny step 1000 (seeds 0)"), "{said}");
    assert!(said.contains("not a valid safetensors file"), "{said}");

    // Fixed on the Hub; a coordinator runs on the sweep, finished with its failure.
    let good = support::golden_step(1000).join("model.safetensors");
    std::fs::copy(good, step1000(&cluster.root.path().join("hub"))).unwrap();
    cluster.start_coordinator_with(&[]);
    let url = cluster.coordinator_url();
    wait_for_end(&cluster, 4);

    // Given the state directory, it finds the running coordinator and tells it.
    let state_dir = cluster.state_dir.display().to_string();
    let retried = cluster.run(&["sweep", "retry-failed", &state_dir]);
    assert_eq!(code(&retried), Some(0), "{}", text(&retried));
    assert!(
        text(&retried).contains(&format!(
            "1 failed task(s) re-queued in the coordinator at {url}"
        )),
        "{}",
        text(&retried)
    );
    // Workers leave once told the sweep is finished: one is started for the retried task.
    cluster.start_worker(TOKEN);
    wait_for_end(&cluster, 0);
    let status = cluster.status().unwrap();
    assert_eq!(
        (status["done"].as_u64(), status["failed"].as_u64()),
        (Some(6), Some(0))
    );
}
