//! The README's first command: the demo sweep over the shipped training history, served
//! through the loopback Hub, must reproduce the reference results shipped beside it.

mod support;

use std::path::PathBuf;

use serde_json::Value;
use support::cluster::{binary, csv_rows};

fn demo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples")
}

#[test]
fn demo_sweep_matches_the_reference_results() {
    let tmp = tempfile::tempdir().unwrap();
    let state = tmp.path().join("demo");
    let out = std::process::Command::new(binary())
        .args(["sweep", "run"])
        .arg(demo_dir().join("demo.toml"))
        .env("NEUROMFA_STATE_DIR", &state)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("160/160 done"), "{stdout}");
    assert!(
        stdout.contains(&state.join("exports").display().to_string()),
        "{stdout}"
    );

    // The report: plots that parse, an HTML page that holds them.
    assert!(stdout.contains("report.html"), "{stdout}");
    let report = state.join("report");
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(
        html.contains("<svg") && html.contains("demo"),
        "report.html"
    );
    for plot in [
        "spectra-neuromfa-demo-gpt-neox-h64",
        "alpha0-width",
        "emergence",
        "emergence-vs-size",
    ] {
        let svg = std::fs::read_to_string(report.join(format!("{plot}.svg")))
            .unwrap_or_else(|e| panic!("{plot}.svg: {e}"));
        roxmltree::Document::parse(&svg).unwrap_or_else(|e| panic!("{plot}.svg: {e}"));
        let png = std::fs::read(report.join(format!("{plot}.png"))).unwrap();
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n", "{plot}.png");
    }

    let rows = csv_rows(&std::fs::read_to_string(state.join("exports/aggregates.csv")).unwrap());
    for size in ["h64", "h128"] {
        let model = format!("neuromfa-demo/gpt-neox-{size}");
        let expected: Value = serde_json::from_str(
            &std::fs::read_to_string(
                demo_dir().join(format!("demo/expected/gpt-neox-{size}.json")),
            )
            .unwrap(),
        )
        .unwrap();
        let reference = expected["aggregate"].as_array().unwrap();
        let ours: Vec<_> = rows.iter().filter(|r| r["model"] == model).collect();
        assert_eq!(ours.len(), reference.len(), "{model}");
        for (row, theirs) in ours.iter().zip(reference) {
            assert_eq!(row["step"], theirs["step"].to_string());
            for field in [
                "alpha0_mean",
                "alpha0_var",
                "width_mean",
                "width_var",
                "E_from_means",
                "E_per_seed_mean",
                "E_per_seed_var",
            ] {
                let ours: f64 = row[field].parse().unwrap();
                let theirs = theirs[field].as_f64().unwrap();
                assert!(
                    (ours - theirs).abs() <= 1e-9,
                    "{model} step {} {field}: {ours} vs {theirs}",
                    row["step"]
                );
            }
        }
    }
}
