//! The real-Hub profile over real sockets: redirects to a CDN with the metadata on the
//! redirect, the CDN's own behaviour (ranges, gzip, signatures, no Hub headers), rate-limit
//! buckets, Xet, paths-info as huggingface_hub sends it, faults, latency and bandwidth, and
//! hf-hub's own client reading through it all.

#[path = "../../hub/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use neuromfa_hub_server::{
    spawn, FaultPlan, HfProfile, HubServerConfig, Listener, Plan, Quota, RunningHub, XetFiles,
};
use reqwest::StatusCode;
use serde_json::Value;
use sha1::Digest as _;

const REPO: &str = "EleutherAI/tiny";
const MODEL_LEN: usize = 300_000;

/// `root/EleutherAI/tiny/main/{config.json, model.safetensors}`; returns both contents.
fn tree(root: &Path) -> (Vec<u8>, Vec<u8>) {
    let config = br#"{"model_type": "gpt_neox"}"#.to_vec();
    let model = pseudo_random(MODEL_LEN, 3);
    write(root, &format!("{REPO}/main/config.json"), &config);
    write(root, &format!("{REPO}/main/model.safetensors"), &model);
    (config, model)
}

/// [`tree`] served with `profile`: its directory (kept while the test runs), the two
/// files' contents, and the server.
async fn served(
    profile: HfProfile,
    token: Option<&str>,
) -> (tempfile::TempDir, (Vec<u8>, Vec<u8>), RunningHub) {
    let root = tempfile::tempdir().unwrap();
    let files = tree(root.path());
    let hub = spawn(
        HubServerConfig {
            root: root.path().to_path_buf(),
            token: token.map(str::to_string),
            like_hf: Some(profile),
            ..Default::default()
        },
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    (root, files, hub)
}

/// hf-hub 1.0's client of `hub`, caching in `cache`.
fn hf_client(hub: &RunningHub, token: Option<&str>, cache: &Path) -> hf_hub::HFClient {
    let builder = hf_hub::HFClient::builder()
        .endpoint(hub.endpoint())
        .cache_dir(cache)
        .retry_max_attempts(0);
    match token {
        Some(token) => builder.token(token).build().unwrap(),
        None => builder.build().unwrap(),
    }
}

fn resolve_url(hub: &RunningHub, file: &str) -> String {
    format!("{}/{REPO}/resolve/main/{file}", hub.endpoint())
}

/// The git blob id of `bytes`, as git and the Hub compute it.
fn git_blob_id(bytes: &[u8]) -> String {
    let mut h = sha1::Sha1::new();
    h.update(format!("blob {}\0", bytes.len()).as_bytes());
    h.update(bytes);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn lfs_pointer(bytes: &[u8]) -> String {
    format!(
        "version https://git-lfs.github.com/spec/v1\noid sha256:{}\nsize {}\n",
        sha256_hex(bytes),
        bytes.len()
    )
}

/// The `Location` of a `302` answer to `url`.
async fn location(c: &reqwest::Client, url: &str) -> String {
    let r = c.get(url).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND, "{url}");
    header(&r, "location").unwrap().to_string()
}

fn quota(requests: u64, secs: u64) -> Quota {
    Quota {
        requests,
        window: Duration::from_secs(secs),
    }
}

#[tokio::test]
async fn lfs_files_redirect_to_a_cdn_that_answers_like_one() {
    let (_root, (config, model), hub) = served(HfProfile::default(), None).await;
    let c = no_redirect_client();
    let cdn_port = hub.cdn_addr.unwrap().port();
    assert_ne!(cdn_port, hub.addr.port());
    let sha = sha256_hex(&model);

    for head in [true, false] {
        let url = resolve_url(&hub, "model.safetensors");
        let request = if head { c.head(&url) } else { c.get(&url) };
        let r = request.send().await.unwrap();
        assert_eq!(r.status(), StatusCode::FOUND);
        let commit = header(&r, "x-repo-commit").unwrap();
        assert!(commit.len() == 40 && commit.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(header(&r, "x-linked-size").unwrap(), MODEL_LEN.to_string());
        assert_eq!(header(&r, "x-linked-etag").unwrap(), format!("\"{sha}\""));
        assert_eq!(header(&r, "etag").unwrap(), format!("\"{sha}\""));
        assert!(header(&r, "x-xet-hash").is_none() && header(&r, "link").is_none());
        let loc = header(&r, "location").unwrap();
        assert!(
            loc.starts_with(&format!(
                "http://127.0.0.1:{cdn_port}/repos/{REPO}/{sha}?Expires="
            )),
            "{loc}"
        );
        assert!(loc.contains("&Signature="), "{loc}");
        assert!(header(&r, "ratelimit")
            .unwrap()
            .starts_with("\"resolvers\";r="));
    }

    // A file kept in git is answered by the Hub itself, its ETag the git blob id, after a
    // relative redirect to its commit-pinned resolve-cache URL.
    let r = c
        .head(resolve_url(&hub, "config.json"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::TEMPORARY_REDIRECT);
    let pinned = header(&r, "location").unwrap().to_string();
    let oid = git_blob_id(&config);
    assert!(
        pinned.starts_with(&format!("/api/resolve-cache/models/{REPO}/"))
            && pinned.ends_with(&format!("/config.json?etag=%22{oid}%22")),
        "{pinned}"
    );
    let r = c
        .get(format!("{}{pinned}", hub.endpoint()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, "etag").unwrap(), format!("\"{oid}\""));
    assert!(pinned.contains(header(&r, "x-repo-commit").unwrap()));
    assert!(header(&r, "ratelimit")
        .unwrap()
        .starts_with("\"resolvers\""));
    assert_eq!(r.bytes().await.unwrap().as_ref(), config.as_slice());

    let loc = location(&c, &resolve_url(&hub, "model.safetensors")).await;
    // One range: 206 and Content-Range, and nothing of the Hub's.
    let r = c
        .get(&loc)
        .header("range", "bytes=10-19")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&r, "content-range").unwrap(),
        format!("bytes 10-19/{MODEL_LEN}")
    );
    for absent in [
        "x-repo-commit",
        "x-linked-etag",
        "x-linked-size",
        "ratelimit",
    ] {
        assert!(header(&r, absent).is_none(), "{absent} on the CDN");
    }
    assert_ne!(
        header(&r, "etag").unwrap(),
        format!("\"{sha}\""),
        "the CDN's ETag is not the sha256"
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &model[10..20]);
    // Past the end.
    let r = c
        .get(&loc)
        .header("range", format!("bytes={MODEL_LEN}-"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(
        header(&r, "content-range").unwrap(),
        format!("bytes */{MODEL_LEN}")
    );
    // A request that accepts gzip gets the whole file, whatever its range.
    let r = c
        .get(&loc)
        .header("range", "bytes=0-99")
        .header("accept-encoding", "gzip, deflate")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().as_ref(), model.as_slice());
    // HEAD gives the length only.
    let r = c.head(&loc).send().await.unwrap();
    assert_eq!(header(&r, "content-length").unwrap(), MODEL_LEN.to_string());

    let stats = hub.stats();
    assert_eq!(stats.redirects, 3);
    assert_eq!(stats.cdn_requests, 4);
    assert_eq!(stats.cdn_body_bytes, 10 + MODEL_LEN as u64);
    assert_eq!(stats.cdn_authorization, 0);
}

#[tokio::test]
async fn files_in_git_can_be_answered_at_once() {
    let profile = HfProfile {
        resolve_cache: false,
        ..HfProfile::default()
    };
    let (_root, (config, _), hub) = served(profile, None).await;
    let r = no_redirect_client()
        .get(resolve_url(&hub, "config.json"))
        .header("range", "bytes=1-5")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(&r, "etag").unwrap(),
        format!("\"{}\"", git_blob_id(&config))
    );
    assert_eq!(r.bytes().await.unwrap().as_ref(), &config[1..6]);
}

#[tokio::test]
async fn signed_urls_expire_and_cannot_be_forged() {
    let profile = HfProfile {
        url_lifetime: Duration::from_secs(30),
        ..HfProfile::default()
    };
    let (_root, (_, model), hub) = served(profile, None).await;
    let c = no_redirect_client();
    let loc = location(&c, &resolve_url(&hub, "model.safetensors")).await;
    let get = |url: String| {
        let c = c.clone();
        async move {
            c.get(url)
                .header("range", "bytes=0-9")
                .send()
                .await
                .unwrap()
        }
    };
    assert_eq!(get(loc.clone()).await.status(), StatusCode::PARTIAL_CONTENT);

    // Another object's path under this signature, and a signature changed by one digit.
    let forged_path = loc.replace(&sha256_hex(&model), &sha256_hex(b"other"));
    assert_eq!(get(forged_path).await.status(), StatusCode::FORBIDDEN);
    let at = loc.find("Signature=").unwrap() + "Signature=".len();
    let mut forged = loc.clone().into_bytes();
    forged[at] = if forged[at] == b'0' { b'1' } else { b'0' };
    let forged = String::from_utf8(forged).unwrap();
    assert_eq!(get(forged).await.status(), StatusCode::FORBIDDEN);
    assert_eq!(hub.stats().cdn_bad_signature, 2);

    hub.server().advance_clock(Duration::from_secs(31));
    let r = get(loc).await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert!(r.text().await.unwrap().contains("expired"));
    assert_eq!(hub.stats().cdn_expired, 1);
    // Resolving again gives a URL that holds.
    let loc = location(&c, &resolve_url(&hub, "model.safetensors")).await;
    let r = get(loc).await;
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &model[..10]);
}

#[tokio::test]
async fn buckets_meter_requests_in_fixed_windows() {
    let profile = HfProfile {
        resolvers: quota(3, 60),
        api: quota(2, 60),
        ..HfProfile::default()
    };
    let (_root, (_, _), hub) = served(profile, None).await;
    let c = no_redirect_client();
    let resolve = || c.head(resolve_url(&hub, "model.safetensors")).send();
    let paths_info = || {
        c.post(format!(
            "{}/api/models/{REPO}/paths-info/main",
            hub.endpoint()
        ))
        .form(&[("paths", "config.json")])
        .send()
    };

    for remaining in [2, 1, 0] {
        let r = resolve().await.unwrap();
        assert_eq!(r.status(), StatusCode::FOUND);
        let limit = header(&r, "ratelimit").unwrap().to_string();
        let (head, t) = limit.split_once(";t=").unwrap();
        assert_eq!(head, format!("\"resolvers\";r={remaining}"));
        assert!((1..=60).contains(&t.parse::<u64>().unwrap()), "{limit}");
        assert_eq!(
            header(&r, "ratelimit-policy").unwrap(),
            "\"fixed window\";\"resolvers\";q=3;w=60"
        );
    }
    let r = resolve().await.unwrap();
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&r, "retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    assert!(header(&r, "ratelimit")
        .unwrap()
        .starts_with("\"resolvers\";r=0;t="));

    // The API bucket is counted apart.
    for _ in 0..2 {
        let r = paths_info().await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(
            header(&r, "ratelimit-policy").unwrap(),
            "\"fixed window\";\"api\";q=2;w=60"
        );
    }
    assert_eq!(
        paths_info().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );

    // A new window.
    hub.server().advance_clock(Duration::from_secs(retry));
    let r = resolve().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    assert!(header(&r, "ratelimit")
        .unwrap()
        .starts_with("\"resolvers\";r=2;"));

    let stats = hub.stats();
    assert_eq!(stats.resolver_requests, 5);
    assert_eq!(stats.api_requests, 3);
    assert_eq!(stats.rate_limited, 2);
}

#[tokio::test]
async fn paths_info_takes_form_fields_and_json_and_answers_in_the_hubs_shapes() {
    let (_root, (config, model), hub) = served(HfProfile::default(), None).await;
    let c = direct_client();
    let url = format!("{}/api/models/{REPO}/paths-info/main", hub.endpoint());
    let commit = header(
        &no_redirect_client()
            .head(resolve_url(&hub, "model.safetensors"))
            .send()
            .await
            .unwrap(),
        "x-repo-commit",
    )
    .unwrap()
    .to_string();

    let form: Vec<Value> = c
        .post(&url)
        .form(&[
            ("paths", "config.json"),
            ("paths", "model.safetensors"),
            ("paths", "missing.bin"),
            ("expand", "True"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let json: Vec<Value> = c
        .post(&url)
        .json(&serde_json::json!({ "paths": ["config.json", "model.safetensors"], "expand": true }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(form, json);
    assert_eq!(form.len(), 2);
    let counted = hub.stats();
    assert_eq!((counted.paths_info_form, counted.paths_info_json), (1, 1));
    let (cfg, weights) = (&form[0], &form[1]);
    assert_eq!(cfg["type"], "file");
    assert_eq!(cfg["path"], "config.json");
    assert_eq!(cfg["size"], config.len());
    assert_eq!(cfg["oid"], git_blob_id(&config));
    assert!(
        cfg.get("lfs").is_none(),
        "config.json is kept in git: {cfg}"
    );
    assert_eq!(weights["oid"], git_blob_id(lfs_pointer(&model).as_bytes()));
    assert_eq!(weights["lfs"]["oid"], sha256_hex(&model));
    assert_eq!(weights["lfs"]["size"], MODEL_LEN);
    assert_eq!(weights["lfs"]["pointerSize"], lfs_pointer(&model).len());
    assert!(weights.get("xetHash").is_none());
    assert_eq!(weights["lastCommit"]["id"], commit.as_str());

    // Unexpanded, and the tree: the same entries without lastCommit.
    let plain: Vec<Value> = c
        .post(&url)
        .form(&[("paths", "model.safetensors")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(plain[0].get("lastCommit").is_none());
    let tree: Vec<Value> = c
        .get(format!("{}/api/models/{REPO}/tree/main", hub.endpoint()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(tree[1], plain[0]);
    assert_eq!(tree[0]["oid"], git_blob_id(&config));

    // A body that is neither is refused.
    let r = c
        .post(&url)
        .header("content-type", "application/json")
        .body("paths=config.json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
}

/// Reads file bytes `[start, end]` the way a Xet client does: token, reconstruction, xorb
/// ranges.
async fn read_through_xet(c: &reqwest::Client, link: &str, start: u64, end: u64) -> Vec<u8> {
    let url_of = |rel: &str| {
        link.split(", ")
            .find(|l| l.ends_with(&format!("rel=\"{rel}\"")))
            .and_then(|l| l.split_once('>'))
            .map(|(u, _)| u.trim_start_matches('<').to_string())
            .unwrap()
    };
    let token: Value = c
        .get(url_of("xet-auth"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let access = token["accessToken"].as_str().unwrap();
    let rec: Value = c
        .get(url_of("xet-reconstruction-info"))
        .bearer_auth(access)
        .header("range", format!("bytes={start}-{end}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut out = Vec::new();
    for term in rec["terms"].as_array().unwrap() {
        let info = &rec["fetch_info"][term["hash"].as_str().unwrap()][0];
        let range = &info["url_range"];
        let r = c
            .get(info["url"].as_str().unwrap())
            .header(
                "range",
                format!("bytes={}-{}", range["start"], range["end"]),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        let mut xorb = r.bytes().await.unwrap().to_vec();
        while !xorb.is_empty() {
            let len = u32::from_le_bytes([xorb[1], xorb[2], xorb[3], 0]) as usize;
            out.extend_from_slice(&xorb[8..8 + len]);
            xorb.drain(..8 + len);
        }
    }
    let skip = rec["offset_into_first_range"].as_u64().unwrap() as usize;
    out[skip..skip + (end - start + 1) as usize].to_vec()
}

#[tokio::test]
async fn xet_files_redirect_to_the_bridge_and_reconstruct_by_range() {
    let profile = HfProfile {
        xet: XetFiles::Matching(vec!["*.safetensors".into()]),
        ..HfProfile::default()
    };
    let (_root, (_, model), hub) = served(profile, None).await;
    let c = no_redirect_client();

    let r = c
        .get(resolve_url(&hub, "model.safetensors"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let commit = header(&r, "x-repo-commit").unwrap().to_string();
    let xet_hash = header(&r, "x-xet-hash").unwrap().to_string();
    assert_eq!(xet_hash.len(), 64);
    let link = header(&r, "link").unwrap().to_string();
    let cdn = format!("http://{}", hub.cdn_addr.unwrap());
    assert_eq!(
        link,
        format!(
            "<{}/api/models/{REPO}/xet-read-token/{commit}>; rel=\"xet-auth\", <{cdn}/v1/reconstructions/{xet_hash}>; rel=\"xet-reconstruction-info\"",
            hub.endpoint()
        )
    );
    let loc = header(&r, "location").unwrap().to_string();
    assert!(
        loc.starts_with(&format!("{cdn}/xet-bridge-us/{REPO}/{xet_hash}?")),
        "{loc}"
    );
    assert_eq!(
        header(&r, "x-linked-etag").unwrap(),
        format!("\"{}\"", sha256_hex(&model))
    );

    // The bridge serves ranges like the CDN.
    let r = c
        .get(&loc)
        .header("range", "bytes=100-199")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(r.bytes().await.unwrap().as_ref(), &model[100..200]);

    // paths-info names the same Xet hash; config.json is not in Xet.
    let listed: Vec<Value> = c
        .post(format!(
            "{}/api/models/{REPO}/paths-info/main",
            hub.endpoint()
        ))
        .form(&[("paths", "model.safetensors"), ("paths", "config.json")])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed[0]["xetHash"], xet_hash.as_str());
    assert!(listed[1].get("xetHash").is_none());

    // The token route is an API request, answered with the token, its expiry, the CAS.
    let api_before = hub.stats().api_requests;
    let auth_url = link[1..link.find('>').unwrap()].to_string();
    let token: Value = c.get(&auth_url).send().await.unwrap().json().await.unwrap();
    assert_eq!(token["casUrl"], cdn.as_str());
    assert!(token["exp"].as_u64().unwrap() > 0);
    assert_eq!(hub.stats().api_requests, api_before + 1);
    assert_eq!(hub.stats().xet_tokens, 1);

    // Without a token, or with some other credential, the CAS refuses.
    let rec_url = format!("{cdn}/v1/reconstructions/{xet_hash}");
    assert_eq!(
        c.get(&rec_url).send().await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    let leaked = c
        .get(&rec_url)
        .bearer_auth("hub-token")
        .send()
        .await
        .unwrap();
    assert_eq!(leaked.status(), StatusCode::UNAUTHORIZED);

    // A range across several chunks, reassembled from xorb ranges.
    let bytes = read_through_xet(&c, &link, 1000, 200_000).await;
    assert_eq!(bytes, &model[1000..=200_000]);
    let stats = hub.stats();
    assert_eq!(stats.reconstructions, 3);
    assert_eq!(stats.xorb_requests, 1);
    assert_eq!(stats.xet_tokens, 2);
    assert_eq!(
        stats.cdn_authorization, 1,
        "the foreign token sent to the CAS above"
    );
}

#[tokio::test]
async fn faults_fail_cut_and_delay_on_demand() {
    let profile = HfProfile {
        hub_faults: FaultPlan {
            error_next: 2,
            error_status: 502,
            ..FaultPlan::default()
        },
        ..HfProfile::default()
    };
    let (_root, (_, model), hub) = served(profile, None).await;
    let c = no_redirect_client();
    let url = resolve_url(&hub, "model.safetensors");
    for _ in 0..2 {
        let r = c.get(&url).send().await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert!(
            header(&r, "ratelimit").is_some(),
            "a failed answer is still metered"
        );
    }
    let loc = location(&c, &url).await;

    // Set over HTTP, as a test running the server as a process would.
    let plan: FaultPlan = c
        .put(format!("{}/_stand-in/faults/cdn", hub.endpoint()))
        .json(&serde_json::json!({ "reset_next": 1, "slow_next": 1, "slow_first_byte_ms": 300 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(plan.reset_next, 1);
    let started = Instant::now();
    let r = c.get(&loc).send().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.bytes().await.is_err(), "the body is cut short");
    let r = c.get(&loc).send().await.unwrap();
    assert_eq!(r.bytes().await.unwrap().as_ref(), model.as_slice());
    assert_eq!(hub.server().faults(Listener::Cdn).unwrap().reset_next, 0);

    // A share of requests.
    hub.server()
        .set_faults(
            Listener::Cdn,
            FaultPlan {
                error_share: 0.5,
                ..FaultPlan::default()
            },
        )
        .unwrap();
    let mut failed = 0;
    for _ in 0..40 {
        let r = c.head(&loc).send().await.unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            failed += 1;
        } else {
            assert_eq!(r.status(), StatusCode::OK);
        }
    }
    assert!((8..=32).contains(&failed), "{failed} of 40");
    assert!(hub
        .server()
        .set_faults(
            Listener::Hub,
            FaultPlan {
                error_share: 2.0,
                ..FaultPlan::default()
            }
        )
        .is_err());

    let stats = hub.stats();
    assert_eq!(stats.injected_errors, 2 + failed);
    assert_eq!(stats.injected_resets, 1);
    assert_eq!(stats.injected_delays, 1);
    // The same counters as JSON.
    let json: Value = c
        .get(format!("{}/_stand-in/stats", hub.endpoint()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(json["injected_errors"], stats.injected_errors);
    assert_eq!(json["cdn_requests"], stats.cdn_requests);
}

#[tokio::test]
async fn latency_and_connection_bandwidth_are_added() {
    let profile = HfProfile {
        latency: Duration::from_millis(150),
        connection_bytes_per_sec: Some(1_000_000),
        ..HfProfile::default()
    };
    let (_root, (_, model), hub) = served(profile, None).await;
    let c = no_redirect_client();
    let started = Instant::now();
    let loc = location(&c, &resolve_url(&hub, "model.safetensors")).await;
    assert!(started.elapsed() >= Duration::from_millis(150));
    let started = Instant::now();
    let body = c.get(&loc).send().await.unwrap().bytes().await.unwrap();
    assert_eq!(body.as_ref(), model.as_slice());
    // A round trip, then 300 kB at 1 MB/s.
    assert!(
        started.elapsed() >= Duration::from_millis(150 + 250),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn hf_hub_downloads_through_the_redirects_without_leaking_its_token() {
    let (_root, (config, model), hub) = served(HfProfile::plan(Plan::Pro), Some("hub-token")).await;
    let cache = tempfile::tempdir().unwrap();
    let client = hf_client(&hub, Some("hub-token"), cache.path());
    let repo = client.model("EleutherAI", "tiny");
    for (file, expected) in [("model.safetensors", &model), ("config.json", &config)] {
        let path = repo.download_file().filename(file).send().await.unwrap();
        assert_eq!(&std::fs::read(path).unwrap(), expected, "{file}");
    }
    // As against huggingface.co, hf-hub 1.0's metadata call follows the redirect of an LFS
    // file to the CDN and finds none of the Hub's headers there; a file in git is fine.
    let e = repo
        .get_file_metadata()
        .filepath("model.safetensors")
        .send()
        .await
        .unwrap_err();
    assert!(e.to_string().contains("X-Repo-Commit"), "{e}");
    let meta = repo
        .get_file_metadata()
        .filepath("config.json")
        .send()
        .await
        .unwrap();
    assert_eq!(meta.etag, git_blob_id(&config));
    let stats = hub.stats();
    assert_eq!(
        stats.redirects, 3,
        "HEAD and GET of the weights, and the metadata call"
    );
    assert!(stats.cdn_body_bytes >= MODEL_LEN as u64);
    assert_eq!(stats.cdn_authorization, 0);
}

#[tokio::test]
async fn hf_hub_downloads_xet_files_through_the_reconstruction_api() {
    let profile = HfProfile {
        xet: XetFiles::All,
        ..HfProfile::default()
    };
    let (_root, (_, model), hub) = served(profile, None).await;
    let cache = tempfile::tempdir().unwrap();
    let client = hf_client(&hub, None, cache.path());
    let repo = client.model("EleutherAI", "tiny");
    let path = repo
        .download_file()
        .filename("model.safetensors")
        .send()
        .await
        .unwrap();
    assert_eq!(std::fs::read(path).unwrap(), model);
    let stats = hub.stats();
    assert!(
        stats.xet_tokens >= 1 && stats.reconstructions >= 1 && stats.xorb_requests >= 1,
        "{stats:?}"
    );
    assert_eq!(stats.cdn_authorization, 0);
}
