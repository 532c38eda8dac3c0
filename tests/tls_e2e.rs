//! TLS on the coordinator's channel, over real sockets: a worker and `status` that trust
//! the coordinator's CA work; clients that trust another CA, only the system's roots, or
//! dial plain http:// are refused with a message saying why; the token is still needed.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};
use support::cluster::*;
use support::demo_step;

const FINISH: Duration = Duration::from_secs(240);

/// A CA able to sign certificates.
fn certificate_authority(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// Writes a CA, a coordinator certificate it signed for 127.0.0.1 and localhost, the
/// certificate's key, and a second, unrelated CA (`other-ca.pem`) into `dir`.
fn write_pki(dir: &Path) -> TlsFiles {
    std::fs::create_dir_all(dir).unwrap();
    let ca = certificate_authority("neuromfa test CA");
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    let files = TlsFiles {
        cert: dir.join("coordinator.pem"),
        key: dir.join("coordinator.key"),
        ca: dir.join("ca.pem"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    std::fs::write(&files.ca, ca.pem()).unwrap();
    let other = certificate_authority("some other CA");
    std::fs::write(dir.join("other-ca.pem"), other.pem()).unwrap();
    files
}

fn publish_two_steps(hub: &Path) {
    for step in [0u64, 512] {
        publish(
            hub,
            "test-org/h64",
            &format!("step{step}"),
            &demo_step("h64", step),
        );
    }
}

const MODELS: &str = r#"
[[models]]
repo = "test-org/h64"
steps = [0, 512]
"#;

/// `neuromfa status` with `args`, the token and no inherited TLS settings.
fn status(args: &[&str], token: &str) -> Output {
    Command::new(binary())
        .arg("status")
        .args(args)
        .env("NEUROMFA_TOKEN", token)
        .env_remove("NEUROMFA_TLS_CA")
        .env_remove("NEUROMFA_COORDINATOR")
        .output()
        .unwrap()
}

fn refused_with(out: &Output, words: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "should have been refused: {stderr}");
    for word in words {
        assert!(stderr.contains(word), "expected `{word}` in: {stderr}");
    }
}

#[test]
fn a_sweep_runs_over_tls_and_clients_without_the_right_ca_are_refused() {
    let pki_dir = tempfile::tempdir().unwrap();
    let tls = write_pki(pki_dir.path());
    let ca = tls.ca.display().to_string();
    let other_ca = pki_dir.path().join("other-ca.pem").display().to_string();
    let mut cluster = Cluster::with_tls(publish_two_steps, MODELS, 2, tls);
    cluster.start_coordinator();
    let https = cluster.coordinator_url();
    assert!(https.starts_with("https://"), "{https}");
    let http = https.replace("https://", "http://");

    // The right CA and token: served.
    let out = status(&["--json", &https, "--tls-ca", &ca], TOKEN);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["total"], 4);

    // Not trusting the coordinator's CA: another CA, or only the system's roots.
    refused_with(
        &status(&[&https, "--tls-ca", &other_ca], TOKEN),
        &["not trusted", "--tls-ca"],
    );
    refused_with(&status(&[&https], TOKEN), &["not trusted", "--tls-ca"]);
    // Plaintext to a TLS coordinator, and a CA for a plaintext URL.
    refused_with(&status(&[&http], TOKEN), &[&http, "dial https://"]);
    refused_with(
        &status(&[&http, "--tls-ca", &ca], TOKEN),
        &["not an https:// URL"],
    );
    // TLS does not replace the token.
    refused_with(
        &status(&[&https, "--tls-ca", &ca], "not-the-token"),
        &["wrong sweep token"],
    );

    // Workers with the wrong CA or dialling plaintext stop at once with the reason instead
    // of retrying for their --give-up-after (60 s here).
    for (name, url, flags, reason) in [
        (
            "wrong-ca",
            &https,
            vec!["--tls-ca", other_ca.as_str()],
            "not trusted",
        ),
        ("plaintext", &http, vec![], "dial https://"),
    ] {
        let started = Instant::now();
        let mut args = vec!["worker", "--coordinator", url, "--give-up-after", "60"];
        args.extend(flags);
        let mut refused = Proc::spawn(
            &args,
            &[("NEUROMFA_TOKEN", TOKEN)],
            cluster.root.path().join(format!("{name}.log")),
        );
        let exit = refused.wait_exit(Duration::from_secs(30));
        assert!(exit.is_some_and(|s| !s.success()), "{}", refused.log_text());
        assert!(started.elapsed() < Duration::from_secs(30));
        assert!(
            refused.log_text().contains(reason),
            "{}",
            refused.log_text()
        );
    }
    assert_eq!(cluster.status().unwrap()["workers"], serde_json::json!([]));

    // The real worker, trusting the CA, does the whole sweep.
    let worker = cluster.start_worker(TOKEN);
    cluster.wait_finished(FINISH);
    let tasks = csv_rows(&cluster.export_file("tasks.csv"));
    assert_eq!(tasks.len(), 4);
    assert!(tasks.iter().all(|t| t["state"] == "done"), "{tasks:?}");
    assert!(cluster.workers[worker].log_text().contains("task done"));
}

#[test]
fn a_coordinator_with_unreadable_tls_files_says_which() {
    let pki_dir = tempfile::tempdir().unwrap();
    let mut tls = write_pki(pki_dir.path());
    tls.key = pki_dir.path().join("missing.key");
    let stderr = coordinator_refused(tls);
    assert!(
        stderr.contains("reading the TLS key") && stderr.contains("missing.key"),
        "{stderr}"
    );

    // A certificate in place of the key is caught before serving.
    let pki_dir = tempfile::tempdir().unwrap();
    let mut tls = write_pki(pki_dir.path());
    tls.key = tls.cert.clone();
    let stderr = coordinator_refused(tls);
    assert!(stderr.contains("TLS certificate and key"), "{stderr}");
}

/// Starts a coordinator with `tls`, expecting it to fail; its stderr.
fn coordinator_refused(tls: TlsFiles) -> String {
    let cluster = Cluster::with_tls(publish_two_steps, MODELS, 1, tls);
    let out = Command::new(binary())
        .args(["coordinator", cluster.spec.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn connect_refuses_a_ca_for_a_plaintext_url() {
    let ca = PathBuf::from("/nonexistent/ca.pem");
    let Err(error) = neuromfa::worker::connect("http://127.0.0.1:1", "t", Some(&ca)) else {
        panic!("a CA with http:// must be refused");
    };
    assert!(error.to_string().contains("not an https:// URL"), "{error}");
}
