//! Distributed sweeps end to end, over real sockets on 127.0.0.1: a loopback Hub, a
//! coordinator process and worker processes, some of them killed on purpose.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use support::cluster::*;
use support::{data_dir, demo_step, AGGREGATE_FIELDS};

const FINISH: Duration = Duration::from_secs(240);

/// Both models of `two_model_specs` on a loopback Hub, `seeds` seeds, default settings.
fn two_model_cluster(seeds: u32) -> Cluster {
    Cluster::new(
        |hub| {
            publish_two_models(hub);
        },
        two_model_specs(),
        seeds,
        "",
    )
}

/// `neuromfa analyze --json` on local copies of the same checkpoints.
fn analyze_aggregates(dirs: &[std::path::PathBuf], seeds: &str) -> serde_json::Value {
    let out = std::process::Command::new(binary())
        .args(["analyze", "--json", "--seeds", seeds])
        .args(dirs)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    report["aggregates"].clone()
}

fn number(text: &str) -> Option<f64> {
    (!text.is_empty()).then(|| text.parse().unwrap())
}

/// The sweep's aggregates of `two_model_specs` with 3 seeds equal `analyze`'s exactly.
fn assert_matches_analyze(cluster: &Cluster) {
    let rows = csv_rows(&cluster.export_file("aggregates.csv"));
    assert_eq!(rows.len(), 6);
    for model in ["test-org/tiny", "test-org/h64"] {
        let steps: Vec<u64> = if model == "test-org/tiny" {
            vec![0, 1000, 2000]
        } else {
            vec![0, 64, 512]
        };
        let dirs: Vec<_> = steps
            .iter()
            .map(|&s| {
                if model == "test-org/tiny" {
                    data_dir().join(format!("golden/tiny-neox/step{s}"))
                } else {
                    demo_step("h64", s)
                }
            })
            .collect();
        let expected = analyze_aggregates(&dirs, "0..3");
        let ours: Vec<_> = rows.iter().filter(|r| r["model"] == model).collect();
        assert_eq!(ours.len(), 3, "{model}");
        for (row, reference) in ours.iter().zip(expected.as_array().unwrap()) {
            assert_eq!(
                row["step"].parse::<u64>().unwrap(),
                reference["step"].as_u64().unwrap()
            );
            for field in AGGREGATE_FIELDS {
                assert_eq!(
                    number(&row[field]),
                    reference[field].as_f64(),
                    "{model} step {} {field}",
                    row["step"]
                );
            }
        }
    }
}

#[test]
fn two_workers_reproduce_analyze_and_a_repeated_result_is_ignored() {
    let mut cluster = two_model_cluster(3);
    cluster.start_coordinator();
    // Workers asking while nothing is resolved yet are told to come back in 750 ms, by
    // when the other may have taken every checkpoint: start them once all can be leased.
    cluster.wait_status(FINISH, |s| s["unresolved"] == 0);
    cluster.start_worker(TOKEN);
    cluster.start_worker(TOKEN);
    cluster.wait_finished(FINISH);

    assert_matches_analyze(&cluster);
    // Both workers took part.
    let tasks = csv_rows(&cluster.export_file("tasks.csv"));
    assert_eq!(tasks.len(), 18);
    assert!(tasks.iter().all(|t| t["state"] == "done"));
    let logs: Vec<String> = cluster.workers.iter().map(Proc::log_text).collect();
    assert!(
        logs.iter().all(|l| l.contains("task done")),
        "{}",
        cluster.logs()
    );
    assert!(cluster.export_file("summary.md").contains("test-org/h64"));
    let spectra = csv_rows(&cluster.export_file("spectra.csv"));
    assert_eq!(spectra.len(), 6 * 60);
}

/// Projection of tasks.csv that must not depend on interruptions.
fn task_outcomes(text: &str) -> BTreeMap<(String, u64, u32), (String, String, String)> {
    let rows = csv_rows(text);
    let outcomes: BTreeMap<_, _> = rows
        .iter()
        .map(|r| {
            (
                (
                    r["model"].clone(),
                    r["step"].parse().unwrap(),
                    r["seed"].parse().unwrap(),
                ),
                (r["state"].clone(), r["alpha0"].clone(), r["width"].clone()),
            )
        })
        .collect();
    assert_eq!(outcomes.len(), rows.len(), "duplicate task rows");
    outcomes
}

#[test]
fn coordinator_killed_mid_sweep_resumes_to_the_same_exports() {
    let models = r#"
[[models]]
repo = "test-org/h64"
steps = [0, 16, 64, 256, 512, 1000, 2000, 3000]
"#;
    let publish = |hub: &std::path::Path| {
        for step in [0, 16, 64, 256, 512, 1000, 2000, 3000] {
            let src = demo_step("h64", step);
            support::cluster::publish(hub, "test-org/h64", &format!("step{step}"), &src);
        }
    };
    let mut interrupted = Cluster::new(publish, models, 6, "");
    interrupted.start_coordinator();
    for _ in 0..2 {
        interrupted.start_worker(TOKEN);
    }
    interrupted.wait_status(FINISH, |s| s["done"].as_u64().unwrap_or(0) >= 10);
    interrupted.coordinator.as_mut().unwrap().kill();
    std::thread::sleep(Duration::from_millis(500));
    interrupted.start_coordinator();
    interrupted.wait_finished(FINISH);
    let status_after = csv_rows(&interrupted.export_file("tasks.csv"));
    assert_eq!(status_after.len(), 48);

    let mut straight = Cluster::new(publish, models, 6, "");
    straight.start_coordinator();
    straight.start_worker(TOKEN);
    straight.wait_finished(FINISH);

    assert_eq!(
        interrupted.export_file("aggregates.csv"),
        straight.export_file("aggregates.csv")
    );
    assert_eq!(
        interrupted.export_file("spectra.csv"),
        straight.export_file("spectra.csv")
    );
    let (a, b) = (
        task_outcomes(&interrupted.export_file("tasks.csv")),
        task_outcomes(&straight.export_file("tasks.csv")),
    );
    assert_eq!(a, b);
    assert!(a.values().all(|(state, _, _)| state == "done"));
}

#[test]
fn a_killed_workers_task_is_leased_again_and_completes() {
    let mut cluster = two_model_cluster(3);
    cluster.start_coordinator();
    // The victim downloads from a Hub that never answers, so it cannot finish what it
    // leases: once it holds a lease it still holds it when it is killed, however long the
    // kill takes to follow.
    let silent_hub = SilentHub::start();
    let victim = cluster.start_worker_with(TOKEN, &["--hub-endpoint", &silent_hub.url()]);
    let status = cluster.wait_status(FINISH, |s| s["leased"].as_u64().unwrap_or(0) > 0);
    let held = status["leased"].as_u64().unwrap();
    cluster.workers[victim].kill();
    let survivor = cluster.start_worker(TOKEN);
    cluster.wait_finished(FINISH);
    let tasks = csv_rows(&cluster.export_file("tasks.csv"));
    assert_eq!(tasks.len(), 18);
    assert!(tasks.iter().all(|t| t["state"] == "done"), "{tasks:?}");
    let fetches = csv_rows(&cluster.export_file("fetch.csv"));
    let leased_again = fetches
        .iter()
        .filter(|t| t["attempts"].parse::<u32>().unwrap() >= 2)
        .count();
    assert!(
        leased_again as u64 >= held,
        "the victim held {held} task(s) but {leased_again} were leased twice: {fetches:?}"
    );
    assert!(!cluster.workers[victim].log_text().contains("task done"));
    assert!(cluster.workers[survivor].log_text().contains("task done"));
}

#[test]
fn a_corrupt_checkpoint_fails_its_tasks_with_the_reason_and_the_rest_complete() {
    let mut cluster = Cluster::new(publish_two_models_one_corrupt, two_model_specs(), 3, "");
    // Kept running after the grid is done, so its last status can be read.
    cluster.start_coordinator_with(&[]);
    cluster.start_worker(TOKEN);
    let status = cluster.wait_status(FINISH, |s| {
        s["pending"].as_u64() == Some(0) && s["leased"].as_u64() == Some(0)
    });
    cluster.coordinator.as_ref().unwrap().terminate();
    let failures = status["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3, "{status}");
    assert!(failures.iter().all(|f| f["step"] == 1000
        && f["error"]
            .as_str()
            .unwrap()
            .contains("not a valid safetensors file")));
    cluster.wait_finished(FINISH);
    let tasks = csv_rows(&cluster.export_file("tasks.csv"));
    let states: BTreeSet<(String, u64, String)> = tasks
        .iter()
        .map(|t| {
            (
                t["model"].clone(),
                t["step"].parse().unwrap(),
                t["state"].clone(),
            )
        })
        .collect();
    assert!(states.contains(&("test-org/tiny".into(), 1000, "failed".into())));
    assert_eq!(tasks.iter().filter(|t| t["state"] == "done").count(), 15);
    assert!(tasks
        .iter()
        .filter(|t| t["state"] == "failed")
        .all(|t| t["last_error"].contains("not a valid safetensors file")));
    assert!(cluster.export_file("summary.md").contains("Failed tasks"));
}

#[test]
fn a_wrong_token_is_refused() {
    let mut cluster = two_model_cluster(1);
    cluster.start_coordinator();
    let impostor = cluster.start_worker("not-the-token");
    let status = cluster.workers[impostor]
        .wait_exit(Duration::from_secs(60))
        .expect("the refused worker should exit");
    assert!(!status.success());
    let log = cluster.workers[impostor].log_text();
    assert!(log.contains("wrong sweep token"), "{log}");

    let out = std::process::Command::new(binary())
        .args(["status", &cluster.coordinator_url()])
        .env("NEUROMFA_TOKEN", "nope")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("wrong sweep token"));
    let status = cluster.status().unwrap();
    assert_eq!(status["done"], 0);
    assert!(status["workers"].as_array().unwrap().is_empty());
}

#[test]
fn a_repeated_result_is_counted_and_ignored() {
    let mut cluster = two_model_cluster(1);
    cluster.start_coordinator();
    let url = cluster.coordinator_url();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        use neuromfa::proto;
        let mut client = neuromfa::worker::connect(&url, TOKEN, None).unwrap();
        let worker_id = client
            .register(proto::RegisterRequest {
                host: "test".into(),
                cores: 1,
                version: "test".into(),
            })
            .await
            .unwrap()
            .into_inner()
            .worker_id;
        // Tasks are leased once their revision is resolved, which the coordinator does
        // after it starts listening.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        let lease = loop {
            let lease = client
                .lease(proto::LeaseRequest {
                    worker_id: worker_id.clone(),
                    max_tasks: 1,
                })
                .await
                .unwrap()
                .into_inner();
            if !lease.tasks.is_empty() {
                break lease;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nothing was ever leased"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let task = &lease.tasks[0];
        let checkpoint = neuromfa_common::Checkpoint::open(
            &data_dir().join(format!("golden/tiny-neox/step{}", task.step)),
        )
        .unwrap();
        let params = serde_json::from_str(&lease.params_json).unwrap();
        let result =
            neuromfa_common::analyze_seed(&checkpoint, &params, task.step, task.seed).unwrap();
        let request = proto::CompleteRequest {
            worker_id,
            task_id: task.task_id,
            attempt: task.attempt,
            result_json: serde_json::to_string(&result.result).unwrap(),
            ..Default::default()
        };
        let first = client.complete(request.clone()).await.unwrap().into_inner();
        let second = client.complete(request).await.unwrap().into_inner();
        assert!(first.accepted);
        assert!(!second.accepted);
    });
    let status = cluster.status().unwrap();
    assert_eq!(status["done"], 1);
    assert_eq!(status["duplicates_ignored"], 1);
}

#[test]
fn sigterm_releases_a_workers_leases_and_stops_the_coordinator_cleanly() {
    // Leases long enough that only a release, not expiry, can free them in time.
    let mut cluster = Cluster::with_lease(
        |hub| {
            publish_two_models(hub);
        },
        two_model_specs(),
        3,
        "",
        120,
    );
    cluster.start_coordinator_with(&["--drain-seconds", "5"]);
    // Its Hub never answers: it still holds what it leased when SIGTERM comes, however
    // late that is, and must give it back.
    let silent_hub = SilentHub::start();
    let worker = cluster.start_worker_with(TOKEN, &["--hub-endpoint", &silent_hub.url()]);
    cluster.wait_status(FINISH, |s| s["leased"].as_u64().unwrap_or(0) > 0);
    cluster.workers[worker].terminate();
    let exit = cluster.workers[worker].wait_exit(Duration::from_secs(20));
    assert!(exit.is_some_and(|s| s.success()), "{}", cluster.logs());
    let status = cluster.wait_status(Duration::from_secs(5), |s| s["leased"] == 0);
    assert_eq!(
        status["done"], 0,
        "the worker should have stopped mid-sweep"
    );

    // A released lease costs no attempt: the next worker's attempts are all first ones.
    cluster.start_worker(TOKEN);
    cluster.wait_status(FINISH, |s| s["done"] == 18);
    let coordinator = cluster.coordinator.as_mut().unwrap();
    coordinator.terminate();
    let exit = coordinator.wait_exit(Duration::from_secs(30));
    assert!(exit.is_some_and(|s| s.success()), "{}", cluster.logs());
    let fetches = csv_rows(&cluster.export_file("fetch.csv"));
    assert_eq!(fetches.len(), 18);
    assert!(fetches.iter().all(|t| t["attempts"] == "1"), "{fetches:?}");
}

/// Regression: with `--exit-when-done` the coordinator left as soon as it had exported, and
/// workers idling between two lease polls never heard the sweep was over: they retried
/// until `--give-up-after` and exited with an error.
#[test]
fn every_worker_hears_the_sweep_is_finished_before_the_coordinator_exits() {
    let mut cluster = Cluster::new(
        |hub| {
            publish_two_models(hub);
        },
        "[[models]]\nrepo = \"test-org/tiny\"\nsteps = [0]\n",
        1,
        "",
    );
    cluster.start_coordinator();
    // One task: one worker computes it, four wait for work that never comes.
    for _ in 0..5 {
        cluster.start_worker(TOKEN);
    }
    cluster.wait_finished(FINISH);
    for worker in &mut cluster.workers {
        let exit = worker.wait_exit(Duration::from_secs(20));
        let log = worker.log_text();
        assert!(exit.is_some_and(|s| s.success()), "{exit:?}\n{log}");
        assert!(log.contains("sweep finished"), "{log}");
    }
}

#[test]
fn sweep_run_does_it_all_in_one_process() {
    let cluster = two_model_cluster(2);
    let stdout = cluster.sweep_run(2);
    assert!(stdout.contains("12/12 done"), "{stdout}");
    assert!(stdout.contains("exports:"), "{stdout}");
    let tasks = csv_rows(&cluster.export_file("tasks.csv"));
    assert_eq!(tasks.len(), 12);
    assert_eq!(csv_rows(&cluster.export_file("aggregates.csv")).len(), 6);
}

#[test]
fn ranged_fetching_gives_the_same_aggregates_and_its_costs_are_summed_per_model() {
    let mut cluster = two_model_cluster(3);
    let spec = std::fs::read_to_string(&cluster.spec).unwrap();
    std::fs::write(
        &cluster.spec,
        spec.replace(
            "[hub]\n",
            "[hub]\nfetch_mode = \"ranges\"\nmerge_gap = 256\n",
        ),
    )
    .unwrap();
    cluster.start_coordinator_with(&[]);
    cluster.start_worker(TOKEN);
    let status = cluster.wait_status(FINISH, |s| s["done"] == 18);
    // SIGTERM: the coordinator writes the exports as it stops.
    cluster.coordinator.as_ref().unwrap().terminate();
    cluster.wait_finished(Duration::from_secs(30));

    assert_matches_analyze(&cluster);
    // The worker took the spec's mode: every task's weights came by ranges.
    let fetches = csv_rows(&cluster.export_file("fetch.csv"));
    assert_eq!(fetches.len(), 18);
    assert!(
        fetches.iter().all(|f| f["fetch_mode"] == "ranges"),
        "{fetches:?}"
    );
    assert!(
        cluster.workers[0].log_text().contains("merge_gap=256"),
        "{}",
        cluster.logs()
    );
    // Per task, per model (exports) and per model (status) agree.
    let by_model = csv_rows(&cluster.export_file("fetch_by_model.csv"));
    for model in ["test-org/tiny", "test-org/h64"] {
        let rows: Vec<_> = fetches.iter().filter(|f| f["model"] == model).collect();
        let sum =
            |field: &str| -> u64 { rows.iter().map(|f| f[field].parse::<u64>().unwrap()).sum() };
        let exported = by_model.iter().find(|m| m["model"] == model).unwrap();
        let live = status["models"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["model"] == model)
            .unwrap();
        for field in ["bytes_fetched", "requests", "fetch_ms"] {
            assert_eq!(
                exported[field].parse::<u64>().unwrap(),
                sum(field),
                "{model} {field}"
            );
            assert_eq!(
                live["fetch"][field].as_u64().unwrap(),
                sum(field),
                "{model} {field}"
            );
        }
        assert_eq!(exported["ranged_tasks"], "9");
        assert!(sum("bytes_fetched") > 0 && sum("requests") >= 3);
    }
    assert!(cluster.export_file("summary.md").contains("## Fetching"));
}

#[test]
fn a_shortest_path_sweep_reproduces_analyze() {
    let cluster = Cluster::new(
        |hub| {
            publish_two_models(hub);
        },
        r#"
[[models]]
repo = "test-org/tiny"
steps = [0, 1000, 2000]
"#,
        2,
        "[analysis]\ndistance = \"shortest-path\"\nthreshold = 300\ngamma = 5",
    );
    cluster.sweep_run(1);
    let dirs: Vec<_> = [0, 1000, 2000]
        .iter()
        .map(|s| data_dir().join(format!("golden/tiny-neox/step{s}")))
        .collect();
    let report = std::process::Command::new(binary())
        .args(["analyze", "--json", "--seeds", "0..2"])
        .args(["--distance", "shortest-path", "--threshold", "300"])
        .args(&dirs)
        .output()
        .unwrap();
    assert!(report.status.success());
    let report: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap();
    let expected = report["aggregates"].as_array().unwrap();
    let rows = csv_rows(&cluster.export_file("aggregates.csv"));
    assert_eq!(rows.len(), 3);
    for (row, reference) in rows.iter().zip(expected) {
        for field in ["alpha0_mean", "width_mean", "E_from_means"] {
            assert_eq!(number(&row[field]), reference[field].as_f64(), "{field}");
        }
    }
    // And the mode is not the default's: one-hop gives other numbers.
    let one_hop = analyze_aggregates(&dirs, "0..2");
    assert_ne!(
        one_hop[1]["alpha0_mean"].as_f64(),
        expected[1]["alpha0_mean"].as_f64()
    );
}

/// Runs the binary with `args`, its stdout a pipe nobody reads (`neuromfa … | head` after
/// `head` has gone).
fn into_closed_pipe(args: &[&str]) -> std::process::Output {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    std::process::Command::new(binary())
        .args(args)
        .env("NEUROMFA_TOKEN", TOKEN)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdout(writer)
        .output()
        .unwrap()
}

#[test]
fn printing_commands_end_quietly_on_a_closed_pipe() {
    let mut cluster = Cluster::new(
        |hub| publish(hub, "test-org/h64", "step0", &demo_step("h64", 0)),
        "[[models]]\nrepo = \"test-org/h64\"\nsteps = [0]\n",
        1,
        "",
    );
    cluster.start_coordinator_with(&[]);
    let url = cluster.coordinator_url();
    let state_dir = cluster.state_dir.to_str().unwrap().to_string();
    let step = demo_step("h64", 0);
    let step = step.to_str().unwrap();
    let commands: [&[&str]; 7] = [
        &["status", &url],
        &["status", "--json", &url],
        &["export", &state_dir],
        &[
            "audit",
            "test-org/h64",
            "--steps",
            "0",
            "--hub-endpoint",
            &cluster.hub_url,
        ],
        &["analyze", "--seeds", "0..2", step],
        &["analyze", "--json", "--seeds", "0..2", step],
        &["--help"],
    ];
    for args in commands {
        let out = into_closed_pipe(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
            "neuromfa {}: {:?}\n{stderr}",
            args.join(" "),
            out.status
        );
    }
}
