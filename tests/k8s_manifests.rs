//! The Kubernetes manifests in scripts/k8s agree with each other, with the binary and with
//! docs/clusters.md: required fields are there, every name one manifest refers to another by
//! (labels, ports, volumes, claims, the Secret and ConfigMap) matches, every flag a
//! container passes is one `neuromfa` accepts, and the environment they set is read.
//! (CI also validates them against the Kubernetes schemas with kubernetes-validate.)

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;
use support::cluster::binary;
use yaml_rust2::{Yaml, YamlLoader};

fn k8s_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("scripts/k8s")
}

fn to_json(yaml: &Yaml) -> Value {
    match yaml {
        Yaml::Real(text) => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map_or(Value::Null, Value::Number),
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::from(s.as_str()),
        Yaml::Boolean(b) => Value::from(*b),
        Yaml::Array(items) => Value::Array(items.iter().map(to_json).collect()),
        Yaml::Hash(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    let key = match k {
                        Yaml::String(s) => s.clone(),
                        other => panic!("non-string key {other:?}"),
                    };
                    (key, to_json(v))
                })
                .collect(),
        ),
        _ => Value::Null,
    }
}

/// Every document of every manifest, keyed by `Kind/name`.
fn manifests() -> HashMap<String, Value> {
    let mut docs = HashMap::new();
    let mut files: Vec<PathBuf> = std::fs::read_dir(k8s_dir())
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for doc in
            YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
        {
            let doc = to_json(&doc);
            let kind = text_at(&doc, "/kind");
            let name = text_at(&doc, "/metadata/name");
            assert!(
                !text_at(&doc, "/apiVersion").is_empty(),
                "{}",
                file.display()
            );
            docs.insert(format!("{kind}/{name}"), doc);
        }
    }
    docs
}

/// The string at JSON pointer `at`; fails the test when it is missing.
fn text_at<'a>(doc: &'a Value, at: &str) -> &'a str {
    doc.pointer(at)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("no string at {at} in {doc}"))
}

fn get<'a>(docs: &'a HashMap<String, Value>, key: &str) -> &'a Value {
    docs.get(key)
        .unwrap_or_else(|| panic!("no {key} among {:?}", docs.keys().collect::<Vec<_>>()))
}

fn env_of(container: &Value) -> HashMap<String, Value> {
    container["env"]
        .as_array()
        .map(|vars| {
            vars.iter()
                .map(|v| (text_at(v, "/name").to_string(), v.clone()))
                .collect()
        })
        .unwrap_or_default()
}

fn strings(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {value}"))
        .iter()
        .map(|v| {
            v.as_str()
                .unwrap_or_else(|| panic!("not a string: {v}"))
                .to_string()
        })
        .collect()
}

/// The value after `flag` in `command`.
fn flag_value<'a>(command: &'a [String], flag: &str) -> &'a str {
    let at = command
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("no {flag} in {command:?}"));
    &command[at + 1]
}

/// Checks a pod template: mounts name its volumes, the command is a real `neuromfa`
/// command line. Returns the single container.
fn check_pod(template: &Value, what: &str, spec_overrides: &[&str]) -> Value {
    let spec = &template["spec"];
    let containers = spec["containers"].as_array().unwrap();
    assert_eq!(containers.len(), 1, "{what}");
    let container = containers[0].clone();
    assert!(!text_at(&container, "/image").is_empty());
    let volumes: Vec<&str> = spec["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| text_at(v, "/name"))
        .collect();
    for mount in container["volumeMounts"].as_array().unwrap() {
        assert!(
            volumes.contains(&text_at(mount, "/name")),
            "{what}: mount {mount} names no volume of {volumes:?}"
        );
        assert!(text_at(mount, "/mountPath").starts_with('/'));
    }
    check_command(
        &strings(&container["command"]),
        &env_of(&container),
        what,
        spec_overrides,
    );
    container
}

/// `neuromfa [--log-format F] SUBCOMMAND ARGS...`: the global flag, the subcommand and
/// every `--flag` exist according to `--help`, and every NEUROMFA_* variable set beside
/// it is one the subcommand's `--help` names or one of `spec_overrides`
/// (which the caller checks by loading a spec with them).
fn check_command(
    command: &[String],
    env: &HashMap<String, Value>,
    what: &str,
    spec_overrides: &[&str],
) {
    assert_eq!(command[0], "neuromfa", "{what}");
    let global = String::from_utf8(
        Command::new(binary())
            .arg("--help")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let mut rest = &command[1..];
    while rest[0].starts_with("--") {
        assert!(
            global.contains(&rest[0]),
            "{what}: neuromfa has no {}",
            rest[0]
        );
        rest = &rest[2..];
    }
    let subcommand = &rest[0];
    let help = Command::new(binary())
        .args([subcommand, "--help"])
        .output()
        .unwrap();
    assert!(help.status.success(), "{what}: no subcommand {subcommand}");
    let help = String::from_utf8(help.stdout).unwrap();
    for flag in rest.iter().filter(|a| a.starts_with("--")) {
        assert!(
            help.contains(&format!("{flag} ")) || help.contains(&format!("{flag}\n")),
            "{what}: `neuromfa {subcommand}` has no {flag}:\n{help}"
        );
    }
    for name in env.keys().filter(|n| n.starts_with("NEUROMFA_")) {
        // `[env: NAME=]` on a flag, or named in a flag's help (NEUROMFA_TOKEN).
        let read_by_flag = help.contains(name.as_str());
        let spec_override = spec_overrides.contains(&name.as_str());
        assert!(
            read_by_flag || spec_override,
            "{what}: `neuromfa {subcommand}` does not read {name}"
        );
    }
}

#[test]
fn manifests_refer_to_each_other_consistently() {
    let docs = manifests();
    let deployment = get(&docs, "Deployment/neuromfa-coordinator");
    let service = get(&docs, "Service/neuromfa-coordinator");
    let job = get(&docs, "Job/neuromfa-workers");
    assert_eq!(text_at(deployment, "/apiVersion"), "apps/v1");
    assert_eq!(text_at(job, "/apiVersion"), "batch/v1");

    // One coordinator, replaced only after the old one let go of the state.
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(text_at(deployment, "/spec/strategy/type"), "Recreate");
    let template = &deployment["spec"]["template"];
    let labels = template["metadata"]["labels"].as_object().unwrap();
    for selector in [
        &deployment["spec"]["selector"]["matchLabels"],
        &service["spec"]["selector"],
    ] {
        for (key, value) in selector.as_object().unwrap() {
            assert_eq!(labels.get(key), Some(value), "selector {key}");
        }
    }
    // Checked below by loading a spec with them.
    let spec_overrides = [
        "NEUROMFA_TOKEN",
        "NEUROMFA_STATE_DIR",
        "NEUROMFA_COORDINATOR__LISTEN",
    ];
    let coordinator = check_pod(template, "coordinator", &spec_overrides);
    let port = &coordinator["ports"][0];
    let service_port = &service["spec"]["ports"][0];
    assert_eq!(service_port["targetPort"], port["name"]);
    assert_eq!(
        coordinator["readinessProbe"]["tcpSocket"]["port"],
        port["name"]
    );
    let container_port = port["containerPort"].as_u64().unwrap();

    // The coordinator's settings, read the way the binary reads them.
    let env = env_of(&coordinator);
    let mounts: HashMap<&str, &str> = coordinator["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (text_at(m, "/name"), text_at(m, "/mountPath")))
        .collect();
    let volumes: HashMap<&str, &Value> = template["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| (text_at(v, "/name"), v))
        .collect();
    let claim = text_at(volumes["state"], "/persistentVolumeClaim/claimName");
    get(&docs, &format!("PersistentVolumeClaim/{claim}"));
    let command = strings(&coordinator["command"]);
    let spec_path = &command[command.iter().position(|a| a == "coordinator").unwrap() + 1];
    assert!(Path::new(spec_path).starts_with(mounts["spec"]));
    let spec_file = Path::new(spec_path).file_name().unwrap().to_str().unwrap();
    assert!(volumes["spec"]["configMap"]["name"].is_string());
    let spec_env: HashMap<String, String> = env
        .iter()
        .map(|(name, var)| {
            let value = var["value"].as_str().unwrap_or("token-from-the-secret");
            (name.clone(), value.to_string())
        })
        .collect();
    let example = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/pythia-paper.toml");
    let spec = neuromfa_coordinator::SweepSpec::load(&example, &spec_env).unwrap();
    assert!(spec.state_dir.starts_with(mounts["state"]), "{spec:?}");
    assert_eq!(spec.token.as_deref(), Some("token-from-the-secret"));
    let listen: std::net::SocketAddr = spec.coordinator.listen.parse().unwrap();
    assert!(listen.ip().is_unspecified(), "pods elsewhere must reach it");
    assert_eq!(u64::from(listen.port()), container_port);

    // The workers: an indexed Job dialling the Service, with the same token.
    assert_eq!(text_at(job, "/spec/completionMode"), "Indexed");
    assert_eq!(job["spec"]["completions"], job["spec"]["parallelism"]);
    let pod = &job["spec"]["template"];
    let worker = check_pod(pod, "worker", &[]);
    let worker_env = env_of(&worker);
    let service_url = format!(
        "http://{}:{}",
        text_at(service, "/metadata/name"),
        service_port["port"]
    );
    assert_eq!(
        text_at(&worker_env["NEUROMFA_COORDINATOR"], "/value"),
        service_url
    );
    assert_eq!(
        worker_env["NEUROMFA_TOKEN"]["valueFrom"],
        env["NEUROMFA_TOKEN"]["valueFrom"]
    );
    let cache_dir = flag_value(&strings(&worker["command"]), "--cache-dir").to_string();
    let cache_mount = worker["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| Path::new(&cache_dir).starts_with(text_at(m, "/mountPath")))
        .unwrap_or_else(|| panic!("--cache-dir {cache_dir} is on no volume"));
    let cache_volume = pod["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == cache_mount["name"])
        .unwrap();
    assert!(cache_volume["emptyDir"].is_object());

    // The documented commands create exactly the Secret and ConfigMap the pods use, and
    // apply these files.
    let page = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/clusters.md");
    let readme = std::fs::read_to_string(page).unwrap();
    let secret = text_at(&env["NEUROMFA_TOKEN"], "/valueFrom/secretKeyRef/name");
    let secret_key = text_at(&env["NEUROMFA_TOKEN"], "/valueFrom/secretKeyRef/key");
    let config_map = text_at(volumes["spec"], "/configMap/name");
    for expected in [
        format!("kubectl create secret generic {secret} --from-file={secret_key}="),
        format!("kubectl create configmap {config_map} --from-file={spec_file}="),
        "kubectl apply -f scripts/k8s/coordinator.yaml".to_string(),
        "kubectl apply -f scripts/k8s/workers.yaml".to_string(),
    ] {
        assert!(
            readme.contains(&expected),
            "docs/clusters.md lacks `{expected}`"
        );
    }
}
