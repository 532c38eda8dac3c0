//! The coordinator's dashboard and `/metrics`, and a worker's `/metrics`, used as a person
//! and a Prometheus server would: strangers get only the login hint, scrapes parse as
//! Prometheus text and agree with `status`, and the page, driven in headless Chromium,
//! shows a demo sweep's grid filling in and its `E` curve appearing.

mod support;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::cluster::{
    publish, publish_two_models_one_corrupt, two_model_specs, Cluster, SilentHub, TOKEN,
};
use support::demo_step;

const DASHBOARD: &str = "[dashboard]\nlisten = \"127.0.0.1:0\"";
const HINT: &str = "needs the sweep's token";

/// An HTTP answer: status, headers (lower-case names), body.
struct Answer {
    status: u16,
    headers: HashMap<String, String>,
    body: String,
}

/// GET `url` with `headers`, redirects not followed.
fn get(url: &str, headers: &[(&str, &str)]) -> Answer {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let mut request = client.get(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await.unwrap();
        Answer {
            status: response.status().as_u16(),
            headers: response
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_string()))
                .collect(),
            body: response.text().await.unwrap(),
        }
    })
}

/// The URL a process logged as `url=…` on a line holding `marker`, once it has.
fn logged_url(log: &Path, marker: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let url = text
            .lines()
            .filter(|l| l.contains(marker))
            .find_map(|l| l.split("url=").nth(1))
            .and_then(|rest| rest.split_whitespace().next());
        if let Some(url) = url {
            return url.to_string();
        }
        assert!(Instant::now() < deadline, "{marker} never logged:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Samples of a scrape, parsed by a parser of Prometheus' text format.
fn scrape(url: &str) -> prometheus_parse::Scrape {
    let answer = get(url, &[("Authorization", &format!("Bearer {TOKEN}"))]);
    assert_eq!(answer.status, 200, "{url}: {}", answer.body);
    assert!(
        answer.headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{:?}",
        answer.headers
    );
    let lines = answer.body.lines().map(|l| Ok(l.to_string()));
    prometheus_parse::Scrape::parse(lines).unwrap()
}

fn value(sample: &prometheus_parse::Sample) -> f64 {
    match sample.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        _ => panic!("{} is not a number", sample.metric),
    }
}

/// The sum of `metric` over samples whose labels include `labels`.
fn sum(scrape: &prometheus_parse::Scrape, metric: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(value)
        .sum()
}

/// `_count` of a histogram.
fn histogram_count(scrape: &prometheus_parse::Scrape, metric: &str) -> f64 {
    let sample = scrape
        .samples
        .iter()
        .find(|s| s.metric == metric)
        .unwrap_or_else(|| panic!("no {metric}"));
    match &sample.value {
        prometheus_parse::Value::Histogram(buckets) => {
            buckets.iter().map(|b| b.count).fold(0.0, f64::max)
        }
        other => panic!("{metric} is not a histogram: {other:?}"),
    }
}

#[test]
fn strangers_get_only_the_login_hint_and_scrapes_agree_with_status() {
    // One checkpoint is corrupt, so the sweep has failures to count as well.
    let mut cluster = Cluster::new(
        publish_two_models_one_corrupt,
        two_model_specs(),
        3,
        DASHBOARD,
    );
    cluster.start_coordinator_with(&[]);
    let coordinator_log = cluster.coordinator.as_ref().unwrap().log.clone();
    let base = logged_url(&coordinator_log, "dashboard listening");

    let port = base.trim_end_matches('/').rsplit(':').next().unwrap();
    let wrong_cookie = format!("neuromfa_token_{port}=not-the-token");
    for path in [
        "",
        "api/live",
        "metrics",
        "figure/emergence",
        "dashboard.js",
    ] {
        let url = format!("{base}{path}");
        for headers in [
            vec![],
            vec![("Authorization", "Bearer not-the-token")],
            vec![("Cookie", wrong_cookie.as_str())],
        ] {
            let answer = get(&url, &headers);
            assert_eq!(answer.status, 401, "{url} {headers:?}");
            assert!(answer.body.contains(HINT), "{url}: {}", answer.body);
            for secret in ["e2e", "test-org", TOKEN] {
                assert!(!answer.body.contains(secret), "{url} shows {secret}");
            }
        }
    }
    let wrong = get(&format!("{base}?token=not-the-token"), &[]);
    assert_eq!(wrong.status, 401);
    // A browser's way in: ?token= once, then the cookie it is given.
    let opened = get(&format!("{base}?token={TOKEN}"), &[]);
    assert_eq!(opened.status, 303);
    assert_eq!(opened.headers["location"], "/");
    let cookie = opened.headers["set-cookie"]
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = get(&base, &[("Cookie", &cookie)]);
    assert_eq!(page.status, 200);
    assert!(page.body.contains("Step × seed grid"), "{}", page.body);

    // A worker whose Hub never answers holds its first lease (heartbeating) for good, so
    // the sweep never ends and the other worker stays up to be scraped once it is idle.
    let silent_hub = SilentHub::start();
    cluster.start_worker_with(TOKEN, &["--hub-endpoint", &silent_hub.url()]);
    let held = cluster.wait_status(Duration::from_secs(60), |s| s["leased"].as_u64() > Some(0))
        ["leased"]
        .clone();
    let scraped = cluster.start_worker_with(TOKEN, &["--metrics-listen", "127.0.0.1:0"]);
    let worker_metrics = logged_url(
        &cluster.root.path().join(format!("worker{scraped}.log")),
        "worker metrics",
    );
    let status = cluster.wait_status(Duration::from_secs(120), |s| {
        s["pending"] == 0 && s["leased"] == held
    });
    assert!(status["failed"].as_u64().unwrap() > 0, "{status}");
    assert!(status["leased"].as_u64().unwrap() > 0, "{status}");
    let metrics = scrape(&format!("{base}metrics"));
    // The state has stopped changing: the scrape and status agree exactly.
    let status = cluster.status().unwrap();
    for state in ["pending", "leased", "done", "failed", "skipped"] {
        assert_eq!(
            sum(&metrics, "neuromfa_tasks", &[("state", state)]),
            status[state].as_f64().unwrap(),
            "{state}"
        );
    }
    for model in status["models"].as_array().unwrap() {
        let name = model["model"].as_str().unwrap();
        let labels = [("model", name), ("state", "done")];
        assert_eq!(
            sum(&metrics, "neuromfa_tasks", &labels),
            model["done"].as_f64().unwrap()
        );
        assert_eq!(
            sum(&metrics, "neuromfa_tasks", &[("model", name)]),
            model["total"].as_f64().unwrap()
        );
    }
    let done = status["done"].as_f64().unwrap();
    let failed = status["failed"].as_f64().unwrap();
    assert_eq!(sum(&metrics, "neuromfa_completions_total", &[]), done);
    assert_eq!(sum(&metrics, "neuromfa_task_failures_total", &[]), failed);
    assert_eq!(
        sum(&metrics, "neuromfa_workers_connected", &[]),
        status["workers"].as_array().unwrap().len() as f64
    );
    let models = status["models"].as_array().unwrap();
    let fetched = |field: &str| -> f64 {
        models
            .iter()
            .map(|m| m["fetch"][field].as_f64().unwrap())
            .sum()
    };
    assert!(fetched("bytes_fetched") > 0.0);
    assert_eq!(
        sum(&metrics, "neuromfa_fetch_bytes_total", &[]),
        fetched("bytes_fetched")
    );
    assert_eq!(
        sum(&metrics, "neuromfa_fetch_requests_total", &[]),
        fetched("requests")
    );
    assert_eq!(
        histogram_count(&metrics, "neuromfa_task_compute_seconds"),
        done
    );
    assert!(histogram_count(&metrics, "neuromfa_store_fsync_seconds") > 0.0);
    assert!(histogram_count(&metrics, "neuromfa_commit_batch_requests") > 0.0);
    assert!(
        sum(&metrics, "neuromfa_leases_total", &[]) >= done + failed,
        "every task finished was leased"
    );
    // The cluster's Hub budget, as status shows it: the free tier's quotas, and what
    // resolving and fetching the checkpoints was granted.
    for bucket in status["budget"].as_array().unwrap() {
        let name = bucket["bucket"].as_str().unwrap();
        let labels = [("bucket", name)];
        assert_eq!(
            sum(&metrics, "neuromfa_hub_budget_quota", &labels),
            bucket["quota"].as_f64().unwrap(),
            "{name}"
        );
        assert!(
            sum(&metrics, "neuromfa_hub_budget_granted_total", &labels) > 0.0,
            "{name}"
        );
        assert_eq!(sum(&metrics, "neuromfa_hub_throttled_total", &labels), 0.0);
    }
    assert_eq!(
        sum(
            &metrics,
            "neuromfa_hub_budget_quota",
            &[("bucket", "resolvers")]
        ),
        5000.0
    );

    // The worker's own view: it sent every result and fetched every byte (the other
    // worker has fetched nothing).
    let unauthorised = get(&worker_metrics, &[]);
    assert_eq!(unauthorised.status, 401);
    assert!(unauthorised.body.contains(HINT));
    let worker = scrape(&worker_metrics);
    assert_eq!(
        sum(&worker, "neuromfa_worker_tasks_completed_total", &[]),
        done
    );
    assert_eq!(
        sum(&worker, "neuromfa_worker_tasks_failed_total", &[]),
        failed
    );
    assert_eq!(
        sum(&worker, "neuromfa_worker_fetch_bytes_total", &[]),
        fetched("bytes_fetched")
    );
    assert_eq!(
        histogram_count(&worker, "neuromfa_worker_task_compute_seconds"),
        done
    );
}

/// Node, playwright-core (tests/browser, `npm ci`) and Chromium, or why the browser test
/// cannot run.
fn browser_tools() -> Result<(PathBuf, PathBuf), String> {
    let chromium = std::env::var_os("NEUROMFA_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"));
    if !chromium.exists() {
        return Err(format!("no Chromium at {}", chromium.display()));
    }
    let scripts = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    if !scripts.join("node_modules/playwright-core").is_dir() {
        return Err("playwright-core is not installed (npm ci --prefix tests/browser)".into());
    }
    match Command::new("node").arg("--version").output() {
        Ok(out) if out.status.success() => Ok((chromium, scripts)),
        _ => Err("no node".into()),
    }
}

#[test]
fn the_page_shows_a_demo_sweep_filling_in() {
    let (chromium, scripts) = match browser_tools() {
        Ok(tools) => tools,
        Err(why) if std::env::var("NEUROMFA_REQUIRE_BROWSER").as_deref() != Ok("1") => {
            eprintln!("SKIPPED: {why}");
            return;
        }
        Err(why) => panic!("NEUROMFA_REQUIRE_BROWSER=1 but {why}"),
    };
    // The demo's two models and eight steps, from a Hub slow enough that the sweep takes
    // seconds to watch rather than one.
    let steps = [0u64, 16, 64, 256, 512, 1000, 2000, 3000];
    let mut cluster = Cluster::throttled(
        |hub| {
            for size in ["h64", "h128"] {
                for step in steps {
                    publish(
                        hub,
                        &format!("neuromfa-demo/gpt-neox-{size}"),
                        &format!("step{step}"),
                        &demo_step(size, step),
                    );
                }
            }
        },
        "[[models]]\nrepo = \"neuromfa-demo/gpt-neox-h64\"\nsteps = [0, 16, 64, 256, 512, 1000, 2000, 3000]\n\n\
         [[models]]\nrepo = \"neuromfa-demo/gpt-neox-h128\"\nsteps = [0, 16, 64, 256, 512, 1000, 2000, 3000]\n",
        10,
        DASHBOARD,
        4.0,
    );
    cluster.start_coordinator_with(&[]);
    let coordinator_log = cluster.coordinator.as_ref().unwrap().log.clone();
    let base = logged_url(&coordinator_log, "dashboard listening");

    let shots = tempfile::tempdir().unwrap();
    let mut browser = Command::new("node")
        .arg(scripts.join("dashboard.mjs"))
        .args([base.as_str(), TOKEN])
        .arg(shots.path())
        .env("NEUROMFA_CHROMIUM", &chromium)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(browser.stdout.take().unwrap()).lines();
    let mut next_line = |prefix: &str| -> Option<serde_json::Value> {
        for line in lines.by_ref() {
            let line = line.unwrap();
            if let Some(json) = line.strip_prefix(prefix) {
                return Some(serde_json::from_str(json).unwrap());
            }
        }
        None
    };
    // The page is up before any work starts, so it must watch the whole grid fill in.
    let ready = next_line("READY ")
        .unwrap_or_else(|| panic!("the browser script stopped early:\n{}", cluster.logs()));
    assert_eq!(ready["done"], 0, "{ready}");
    cluster.start_worker(TOKEN);
    cluster.start_worker(TOKEN);
    let result = next_line("RESULT ")
        .unwrap_or_else(|| panic!("the browser script stopped early:\n{}", cluster.logs()));
    assert!(browser.wait().unwrap().success());

    // Strangers saw only the login hint.
    for refused in result["refused"].as_array().unwrap() {
        assert_eq!(refused["status"], 401, "{refused}");
        let body = refused["body"].as_str().unwrap();
        assert!(body.contains(HINT), "{body}");
        assert!(!body.contains("gpt-neox"), "{body}");
    }
    // The token left the address bar once the cookie was set.
    assert_eq!(result["landed"], "");
    // The grid filled in as results arrived: several counts between none and all.
    let seen: Vec<u64> = result["seen"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let partial: std::collections::BTreeSet<u64> =
        seen.iter().copied().filter(|&d| d > 0 && d < 160).collect();
    assert!(partial.len() >= 2, "seen {seen:?}");
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    let grids = result["final"]["grids"].as_array().unwrap();
    assert_eq!(grids.len(), 2);
    for grid in grids {
        assert_eq!(grid["cells"], 80, "{grid}");
        assert_eq!(grid["done"], 80, "every cell drawn done: {grid}");
    }
    // An E curve per model, a point per step.
    let curves = result["final"]["curves"].as_object().unwrap();
    assert_eq!(curves.len(), 2, "{curves:?}");
    for points in curves.values() {
        assert_eq!(points.as_u64().unwrap(), steps.len() as u64, "{curves:?}");
    }
    for shot in ["dashboard-midway.png", "dashboard-end.png"] {
        let png = std::fs::read(shots.path().join(shot)).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{shot}");
    }
    // The README's screenshot is this test's, taken midway (kept when asked for).
    if let Some(keep) = std::env::var_os("NEUROMFA_DASHBOARD_SCREENSHOT") {
        std::fs::copy(shots.path().join("dashboard-midway.png"), keep).unwrap();
    }
}
