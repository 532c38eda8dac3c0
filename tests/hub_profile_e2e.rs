//! Sweeps against the stand-in's real-Hub profile (`neuromfa hub serve --like-hf`): a Hub
//! that redirects every weight file to a CDN on another port with short-lived signed URLs,
//! meters requests in small windows, wants a token, and fails on demand. Whatever it does,
//! a sweep of three workers ends with the exports of a run against the ideal stand-in, no
//! task failed and no attempt spent; with the spec's budget set to its quota no `429` is
//! drawn at all. Throughout, paths-info goes out as form fields and the token never
//! reaches the CDN.

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{json, Value};
use support::chaos_checks::{assert_same_exports, read_exports, Exports};
use support::cluster::*;
use support::stand_in::StandIn;

fn publish(hub: &std::path::Path) {
    publish_two_models(hub);
}

const FINISH: Duration = Duration::from_secs(240);
const SEEDS: u32 = 2;
const WORKERS: u32 = 3;
/// The Hub token the stand-in requires and the spec (and the workers' `HF_TOKEN`) carry.
const HUB_TOKEN: &str = "hf_stand_in_token";
/// The stand-in's windows: short, so that a sweep spends several.
const WINDOW_SECS: u64 = 2;
/// A signed URL's life at the CDN: shorter than a worker's fetch when it waits for a window.
const URL_LIFETIME_SECS: u64 = 2;

/// The exports of the same sweep against the ideal stand-in, computed once for every test.
fn ideal_exports() -> &'static Exports {
    static IDEAL: OnceLock<Exports> = OnceLock::new();
    IDEAL.get_or_init(|| {
        let cluster = Cluster::new(publish, two_model_specs(), SEEDS, "");
        cluster.sweep_run(WORKERS);
        read_exports(&cluster.state_dir.join("exports"))
    })
}

/// A cluster whose Hub is the stand-in's real-Hub profile with `resolvers` and `api`
/// requests per window, requiring [`HUB_TOKEN`], which the spec and the workers carry.
fn like_hf_cluster(resolvers: u32, api: u32) -> (Cluster, StandIn) {
    let (resolvers, api) = (resolvers.to_string(), api.to_string());
    let (window, lifetime) = (WINDOW_SECS.to_string(), URL_LIFETIME_SECS.to_string());
    let flags = [
        "--like-hf",
        "--token",
        HUB_TOKEN,
        "--resolvers-quota",
        &resolvers,
        "--api-quota",
        &api,
        "--window-secs",
        &window,
        "--url-lifetime-secs",
        &lifetime,
    ];
    let mut cluster = Cluster::with_hub_flags(publish, two_model_specs(), SEEDS, "", &flags);
    cluster.set_hub_keys(&format!("token = \"{HUB_TOKEN}\""));
    cluster.worker_hub_token = Some(HUB_TOKEN.to_string());
    let hub = StandIn::new(&cluster.hub_url, Some(HUB_TOKEN));
    (cluster, hub)
}

fn count(stats: &Value, name: &str) -> u64 {
    stats[name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

/// What every sweep against the Hub profile must show: the exports of the ideal run, every
/// fetch in `mode` and done at its task's first attempt, paths-info sent as form fields
/// only, and no token on the CDN's listener, which was used, nor in any export.
fn assert_sweep_as_ideal(cluster: &Cluster, stats: &Value, mode: &str) {
    assert_same_exports(ideal_exports(), &cluster.state_dir.join("exports"));
    let fetches = csv_rows(&cluster.export_file("fetch.csv"));
    assert_eq!(fetches.len(), 6 * SEEDS as usize, "{fetches:?}");
    let as_asked = |f: &std::collections::HashMap<String, String>| {
        f["attempts"] == "1" && f["fetch_mode"] == mode
    };
    assert!(fetches.iter().all(as_asked), "{fetches:?}");
    assert!(count(stats, "paths_info_form") > 0, "{stats}");
    assert_eq!(count(stats, "paths_info_json"), 0, "{stats}");
    assert!(count(stats, "cdn_requests") > 0, "{stats}");
    assert_eq!(count(stats, "cdn_authorization"), 0, "{stats}");
    for name in neuromfa_coordinator::export::EXPORT_FILES {
        assert!(
            !cluster.export_file(name).contains(HUB_TOKEN),
            "{name} holds the Hub token"
        );
    }
}

#[test]
fn a_sweep_through_spent_windows_expired_signatures_and_faults_ends_as_against_an_ideal_hub() {
    let (mut cluster, hub) = like_hf_cluster(6, 3);
    cluster.set_fetch_mode("ranges");
    // The Hub's clock runs an hour ahead of the cluster's: the clients see every signature
    // an hour longer-lived than the CDN does, never renew one before the CDN refuses it,
    // and so meet every expiry as a 403.
    hub.advance_clock(3600);
    // The coordinator's resolution meets server errors.
    hub.set_faults("hub", json!({ "error_next": 2, "error_status": 500 }));
    cluster.start_coordinator();
    // The coordinator resolves once it listens: the next faults are for the workers only
    // once both of these have been met.
    let deadline = std::time::Instant::now() + FINISH;
    while count(&hub.stats(), "injected_errors") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the coordinator's resolution never met its faults: {}",
            hub.stats()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // So do the workers' first requests to the Hub and to the CDN. No request fails more
    // than twice, so none runs out of its attempts.
    hub.set_faults("hub", json!({ "error_next": 2, "error_status": 503 }));
    // The CDN's first answer is also held past the signature's life: the retry of that
    // read finds its signature expired, mid-fetch, and renews it.
    hub.set_faults(
        "cdn",
        json!({
            "error_next": 1, "error_status": 502, "reset_next": 1,
            "slow_next": 1, "slow_first_byte_ms": (URL_LIFETIME_SECS + 1) * 1000,
        }),
    );
    for _ in 0..WORKERS {
        cluster.start_worker(TOKEN);
    }
    cluster.wait_finished(FINISH);
    let stats = hub.stats();
    eprintln!("{stats:#}");

    assert_sweep_as_ideal(&cluster, &stats, "ranges");
    assert!(
        count(&stats, "rate_limited") > 0,
        "no window was spent: {stats}"
    );
    assert!(
        count(&stats, "cdn_expired") > 0,
        "no signature expired: {stats}"
    );
    assert_eq!(count(&stats, "injected_errors"), 5, "{stats}");
    assert_eq!(count(&stats, "injected_resets"), 1, "{stats}");
    let coordinator = cluster.coordinator.as_ref().unwrap().log_text();
    assert!(
        !coordinator.contains("task failed"),
        "a task failed:\n{}",
        cluster.logs()
    );
}

#[test]
fn with_the_specs_budget_at_the_hubs_quota_three_workers_draw_no_429() {
    // The sweep sends about 24 Resolver and 6 API requests, more than one window holds.
    // The cluster's pacing counts grants over the window plus the 15 s a grant may take to
    // be spent, so each window's worth beyond the first costs 17 s: these quotas need one.
    let (resolvers, api) = (20, 4);
    let (cluster, hub) = like_hf_cluster(resolvers, api);
    cluster.set_hub_keys(&format!(
        "budget_resolvers = {resolvers}\nbudget_api = {api}\nbudget_window_seconds = {WINDOW_SECS}\nfetch_mode = \"full\""
    ));
    let said = cluster.sweep_run(WORKERS);
    let stats = hub.stats();
    eprintln!("{said}\n{stats:#}");

    assert_sweep_as_ideal(&cluster, &stats, "full");
    assert_eq!(count(&stats, "rate_limited"), 0, "{stats}");
    // More than one window's quota of each bucket was asked for: the pacing held the
    // cluster back, not an idle Hub.
    assert!(
        count(&stats, "resolver_requests") > u64::from(resolvers),
        "{stats}"
    );
    assert!(count(&stats, "api_requests") > u64::from(api), "{stats}");
    // The status the sweep ends with says so: no bucket drew a 429, and the cluster
    // waited for its budget.
    let buckets: Vec<&str> = said
        .lines()
        .filter(|l| l.contains(" granted ") && l.contains(" throttled"))
        .collect();
    assert_eq!(buckets.len(), 2, "no budget in the status:\n{said}");
    let waited = |line: &str| -> f64 {
        let after = &line[line.find("waited ").unwrap() + "waited ".len()..];
        after[..after.find(' ').unwrap()].parse().unwrap()
    };
    assert!(
        buckets.iter().all(|l| l.contains(", 0 throttled")),
        "{said}"
    );
    assert!(buckets.iter().any(|l| waited(l) > 0.0), "{said}");
}
