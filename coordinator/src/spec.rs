//! The sweep spec: a TOML file (every key outside `[[models]]` overridable by a `NEUROMFA_…`
//! environment variable) naming models, steps, seeds, analysis settings, the Hub and the coordinator.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use neuromfa_common::budget::{Quota, Quotas, Tier};
use neuromfa_common::checkpoint::FetchMode;
use neuromfa_common::pipeline::{DEFAULT_GAMMA, DEFAULT_LAMBDA};
use neuromfa_common::spectrum::{q_grid, Alpha0Method};
use neuromfa_common::{AnalysisParams, DistanceMode};

use crate::integrity::DuplicatePolicy;
use crate::spec_keys::keys_of;
pub use crate::spec_keys::{KeyKind, SpecKey, TraceError};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("{path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("{path}: `{key}`: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

/// The most seeds a sweep may count (`seeds = N`); the paper draws 10 per checkpoint.
pub const MAX_SEEDS: u32 = 100_000;

/// Seeds: a count `N` (seeds `0..N`) or an explicit list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Seeds {
    Count(u32),
    List(Vec<u32>),
}

/// Steps: a preset name (`pythia`, `pythia-paper`) or an explicit list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Steps {
    Preset(String),
    List(Vec<u64>),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    /// Hub repo id, e.g. `EleutherAI/pythia-160m-deduped`.
    pub repo: String,
    /// Overrides the sweep's `steps` for this model.
    #[serde(default)]
    pub steps: Option<Steps>,
    /// Drops steps above this one (pythia-31m ends at 140000 on some branches).
    #[serde(default)]
    pub max_step: Option<u64>,
    /// Branch name of a step; `{step}` is replaced (default `step{step}`).
    #[serde(default)]
    pub revision_format: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalysisSpec {
    pub layer_sample: usize,
    pub threshold: f64,
    pub q_min: f64,
    pub q_max: f64,
    pub q_step: f64,
    pub alpha0: Alpha0Method,
    /// `one-hop` (the reference code's distance) or `shortest-path` (paper Eq. 1).
    pub distance: DistanceKind,
    /// Shortest-path penalty `λ·|P|^γ`; unused in one-hop mode.
    pub lambda: f64,
    pub gamma: f64,
}

/// The spec's names for the distance modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DistanceKind {
    #[default]
    OneHop,
    ShortestPath,
}

impl Default for AnalysisSpec {
    fn default() -> Self {
        Self {
            layer_sample: 32,
            threshold: 150.0,
            q_min: -3.0,
            q_max: 3.0,
            q_step: 0.1,
            alpha0: Alpha0Method::Peak,
            distance: DistanceKind::OneHop,
            lambda: DEFAULT_LAMBDA,
            gamma: DEFAULT_GAMMA,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HubSpec {
    /// Hub endpoint; unset means `HF_ENDPOINT`, else the real Hub.
    pub endpoint: Option<String>,
    /// Hub token; unset means `HF_TOKEN` or the standard token file.
    pub token: Option<String>,
    /// A directory laid out as `<org>/<name>/<revision>/<file>` that `sweep run` serves
    /// over a loopback Hub to its workers (relative paths are relative to the spec file).
    pub serve_dir: Option<PathBuf>,
    /// How workers get weights: `full` files, only the byte `ranges` the seeds read, or
    /// `auto` (ranges when they are a small share of the files). A worker's
    /// `--fetch-mode` overrides it.
    pub fetch_mode: FetchMode,
    /// Byte ranges closer than this are fetched as one request (unset: priced by the
    /// workers from the measured round trip and bandwidth of the Hub's CDN).
    pub merge_gap: Option<u64>,
    /// The Hub account tier whose rate limits the whole cluster shares: `anonymous`,
    /// `free`, `pro` or `team`. The coordinator paces every worker's requests within it.
    pub budget: Tier,
    /// Resolver requests per window, instead of the tier's.
    pub budget_resolvers: Option<u32>,
    /// API requests per window, instead of the tier's.
    pub budget_api: Option<u32>,
    /// The window's length in seconds, instead of the Hub's 300.
    pub budget_window_seconds: Option<f64>,
}

impl HubSpec {
    /// The quotas the cluster's requests are paced within: the tier's, with the custom keys
    /// over them.
    pub fn quotas(&self) -> Quotas {
        let tier = self.budget.quotas();
        let window = self
            .budget_window_seconds
            .map(std::time::Duration::from_secs_f64)
            .unwrap_or(tier.resolvers.window);
        Quotas {
            resolvers: Quota {
                requests: self.budget_resolvers.unwrap_or(tier.resolvers.requests),
                window,
            },
            api: Quota {
                requests: self.budget_api.unwrap_or(tier.api.requests),
                window,
            },
        }
    }

    fn check(&self) -> Result<(), Invalid> {
        for (key, value) in [
            ("hub.budget_resolvers", self.budget_resolvers),
            ("hub.budget_api", self.budget_api),
        ] {
            if value == Some(0) {
                return Err(invalid(key, "must be at least 1 request per window"));
            }
        }
        if let Some(w) = self.budget_window_seconds {
            if !(w.is_finite() && w > 0.0 && w <= 86_400.0) {
                return Err(invalid(
                    "hub.budget_window_seconds",
                    "must be above 0 and at most a day",
                ));
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CoordinatorSpec {
    /// Address the coordinator listens on.
    pub listen: String,
    /// Address workers dial (defaults to `http://` + `listen`).
    pub address: Option<String>,
    /// How long a lease lasts without a heartbeat.
    pub lease_seconds: f64,
    /// Attempts before a task is marked failed.
    pub max_attempts: u32,
    /// While the breaker has stopped leasing, wait this long before leasing one task as a
    /// probe (doubled after each probe that fails, up to 16 times).
    pub breaker_probe_seconds: f64,
    /// PEM certificate (chain) the coordinator serves TLS with; with `tls_key`. Relative
    /// paths are relative to the spec file.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl Default for CoordinatorSpec {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:50051".into(),
            address: None,
            lease_seconds: 600.0,
            max_attempts: 3,
            breaker_probe_seconds: 30.0,
            tls_cert: None,
            tls_key: None,
        }
    }
}

/// The coordinator's web dashboard and `/metrics` (off unless `listen` is set; `sweep run`
/// always serves it, on a loopback port of its own choosing unless `listen` is set).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DashboardSpec {
    /// Address the dashboard's HTTP listener binds, e.g. `127.0.0.1:8080`.
    pub listen: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepSpec {
    pub name: String,
    pub state_dir: PathBuf,
    #[serde(default = "default_seeds")]
    pub seeds: Seeds,
    /// Default steps for every model.
    #[serde(default)]
    pub steps: Option<Steps>,
    pub models: Vec<ModelSpec>,
    #[serde(default)]
    pub analysis: AnalysisSpec,
    #[serde(default)]
    pub hub: HubSpec,
    #[serde(default)]
    pub coordinator: CoordinatorSpec,
    #[serde(default)]
    pub dashboard: DashboardSpec,
    /// Shared secret every RPC must carry (`NEUROMFA_TOKEN` overrides).
    #[serde(default)]
    pub token: Option<String>,
    /// Steps whose weights duplicate another step's: `warn`, `skip` or `reuse`.
    #[serde(default)]
    pub duplicates: DuplicatePolicy,
}

fn default_seeds() -> Seeds {
    Seeds::Count(10)
}

pub use neuromfa_common::synth::pythia_steps;

/// The 27 steps the NeuroMFA paper analysed: 0, 1, 2, 4 … 512, 1000, 3000, then every
/// 10000 from 13000 to 143000.
pub fn pythia_paper_steps() -> Vec<u64> {
    let mut steps = vec![0];
    steps.extend((0..10).map(|k| 1u64 << k));
    steps.extend([1000, 3000]);
    steps.extend((0..14).map(|k| 13000 + 10000 * k));
    steps
}

/// One (model, step) of the grid.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CheckpointKey {
    pub model: String,
    pub step: u64,
    pub revision: String,
}

impl SweepSpec {
    /// Every key the spec accepts, from its own `Deserialize` implementations.
    pub fn keys() -> Result<&'static [SpecKey], TraceError> {
        static KEYS: OnceLock<Vec<SpecKey>> = OnceLock::new();
        if let Some(keys) = KEYS.get() {
            return Ok(keys);
        }
        let keys = keys_of::<SweepSpec>()?;
        Ok(KEYS.get_or_init(|| keys))
    }

    /// Reads `path`, applies `NEUROMFA_…` overrides from `env`, and validates.
    pub fn load(path: &Path, env: &HashMap<String, String>) -> Result<Self, SpecError> {
        let load_error = |message: String| SpecError::Load {
            path: path.to_path_buf(),
            message,
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| load_error(format!("cannot read the sweep spec: {e}")))?;
        check_keys(&text, path)?;
        let keys = Self::keys().map_err(|e| load_error(e.to_string()))?;
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(&text, config::FileFormat::Toml));
        let mut from_env = BTreeSet::new();
        for (name, value) in env {
            let Some(key) = env_key(keys, name) else {
                continue;
            };
            builder = builder
                .set_override(key.name.as_str(), env_value(key.kind, value))
                .map_err(|e| load_error(format!("override {}: {e}", key.name)))?;
            from_env.insert(key.name.as_str());
        }
        let spec: SweepSpec = builder
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| load_error(e.to_string()))?;
        spec.finish(path, &from_env)
    }

    /// Parses TOML text without environment overrides.
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, SpecError> {
        check_keys(text, path)?;
        let spec: SweepSpec = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| SpecError::Load {
                path: path.to_path_buf(),
                message: e.to_string(),
            })?;
        spec.finish(path, &BTreeSet::new())
    }

    /// Makes every relative path the file gives relative to the file's folder, as config
    /// files are read; those from `NEUROMFA_…` variables (`from_env`) are left relative to
    /// the current directory, like command-line flags. Then validates.
    fn finish(mut self, path: &Path, from_env: &BTreeSet<&str>) -> Result<Self, SpecError> {
        let base = path.parent().unwrap_or(Path::new(""));
        let paths = [
            ("state_dir", Some(&mut self.state_dir)),
            ("hub.serve_dir", self.hub.serve_dir.as_mut()),
            ("coordinator.tls_cert", self.coordinator.tls_cert.as_mut()),
            ("coordinator.tls_key", self.coordinator.tls_key.as_mut()),
        ];
        for (key, file) in paths {
            let Some(file) = file else { continue };
            // An empty path is left for validation to name.
            if file.is_relative() && !file.as_os_str().is_empty() && !from_env.contains(key) {
                *file = base.join(&*file);
            }
        }
        self.validate(path)?;
        Ok(self)
    }

    fn validate(&self, path: &Path) -> Result<(), SpecError> {
        self.check_grid()
            .and_then(|()| self.analysis.check())
            .and_then(|()| self.hub.check())
            .and_then(|()| self.coordinator.check())
            .map_err(|Invalid(key, message)| SpecError::Invalid {
                path: path.to_path_buf(),
                key,
                message,
            })
    }

    /// The grid is not empty and names every model, step and seed once.
    fn check_grid(&self) -> Result<(), Invalid> {
        if self.name.trim().is_empty() {
            return Err(invalid("name", "must not be empty"));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(invalid("state_dir", "must not be empty"));
        }
        if let Seeds::Count(n) = self.seeds {
            // Checked before the list is made: a count is a few bytes of TOML.
            if n > MAX_SEEDS {
                return Err(invalid(
                    "seeds",
                    format!("{n} seeds; at most {MAX_SEEDS} per sweep"),
                ));
            }
        }
        let seeds = self.seed_list();
        if seeds.is_empty() {
            return Err(invalid("seeds", "no seeds: the grid is empty"));
        }
        if seeds.iter().collect::<BTreeSet<_>>().len() != seeds.len() {
            return Err(invalid("seeds", "a seed is listed twice"));
        }
        if self.models.is_empty() {
            return Err(invalid("models", "no models: the grid is empty"));
        }
        let mut repos = BTreeSet::new();
        for (i, model) in self.models.iter().enumerate() {
            let key = format!("models[{i}]");
            let parts: Vec<&str> = model.repo.split('/').collect();
            if parts.len() != 2 || parts.iter().any(|p| p.is_empty()) {
                return Err(invalid(
                    &format!("{key}.repo"),
                    format!("`{}` is not a Hub repo id like org/name", model.repo),
                ));
            }
            if !repos.insert(&model.repo) {
                return Err(invalid(
                    &format!("{key}.repo"),
                    format!("`{}` is listed twice", model.repo),
                ));
            }
            if let Some(format) = &model.revision_format {
                if !format.contains("{step}") {
                    return Err(invalid(
                        &format!("{key}.revision_format"),
                        "must contain {step}",
                    ));
                }
            }
            let steps = self
                .steps_of(model)
                .map_err(|message| invalid(&format!("{key}.steps"), message))?;
            if steps.is_empty() {
                return Err(invalid(
                    &format!("{key}.steps"),
                    format!("no steps for {}: the grid is empty", model.repo),
                ));
            }
        }
        Ok(())
    }

    pub fn seed_list(&self) -> Vec<u32> {
        match &self.seeds {
            Seeds::Count(n) => (0..*n).collect(),
            Seeds::List(list) => list.clone(),
        }
    }

    /// A model's steps, ascending and distinct.
    pub fn steps_of(&self, model: &ModelSpec) -> Result<Vec<u64>, String> {
        let steps = model
            .steps
            .as_ref()
            .or(self.steps.as_ref())
            .ok_or_else(|| "no steps: set `steps` for the sweep or the model".to_string())?;
        let mut list = match steps {
            Steps::Preset(name) if name == "pythia" => pythia_steps(),
            Steps::Preset(name) if name == "pythia-paper" => pythia_paper_steps(),
            Steps::Preset(name) => {
                return Err(format!(
                    "unknown preset `{name}`; use `pythia`, `pythia-paper` or a list"
                ))
            }
            Steps::List(list) => list.clone(),
        };
        let before = list.len();
        list.sort_unstable();
        list.dedup();
        if list.len() != before {
            return Err("a step is listed twice".into());
        }
        if let Some(max) = model.max_step {
            list.retain(|&s| s <= max);
        }
        Ok(list)
    }

    pub fn revision(model: &ModelSpec, step: u64) -> String {
        model
            .revision_format
            .as_deref()
            .unwrap_or("step{step}")
            .replace("{step}", &step.to_string())
    }

    /// Every checkpoint of the grid, models in spec order, steps ascending.
    pub fn checkpoints(&self) -> Vec<CheckpointKey> {
        self.models
            .iter()
            .flat_map(|model| {
                self.steps_of(model)
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |step| CheckpointKey {
                        model: model.repo.clone(),
                        step,
                        revision: Self::revision(model, step),
                    })
            })
            .collect()
    }

    /// The analysis settings every task of the sweep uses.
    pub fn analysis_params(&self) -> AnalysisParams {
        let a = &self.analysis;
        AnalysisParams {
            layer_sample: a.layer_sample,
            threshold: a.threshold,
            q: q_grid(a.q_min, a.q_max, a.q_step).unwrap_or_default(),
            alpha0_method: a.alpha0,
            distance: match a.distance {
                DistanceKind::OneHop => DistanceMode::OneHop,
                DistanceKind::ShortestPath => DistanceMode::ShortestPath {
                    lambda: a.lambda,
                    gamma: a.gamma,
                },
            },
        }
    }

    /// Lease length in milliseconds.
    pub fn lease_ms(&self) -> u64 {
        (self.coordinator.lease_seconds * 1000.0).round().max(1.0) as u64
    }

    /// Wait before the breaker's first probe.
    pub fn probe_ms(&self) -> u64 {
        (self.coordinator.breaker_probe_seconds * 1000.0)
            .round()
            .max(1.0) as u64
    }

    /// Whether the coordinator serves TLS.
    pub fn tls(&self) -> bool {
        self.coordinator.tls_cert.is_some()
    }

    /// The address workers dial: `coordinator.address`, else the listen address with
    /// `https://` when the coordinator serves TLS, `http://` otherwise.
    pub fn worker_address(&self) -> String {
        let scheme = if self.tls() { "https" } else { "http" };
        self.coordinator
            .address
            .clone()
            .unwrap_or_else(|| format!("{scheme}://{}", self.coordinator.listen))
    }
}

/// Refuses a key that is not a plain name (letters, digits, `_`, `-`) before `config` reads
/// the text: it takes a quoted key such as `"x[4000000000]"` for a path into an array and
/// allocates the array up to that index. Syntax errors are left to `config` to report.
fn check_keys(text: &str, path: &Path) -> Result<(), SpecError> {
    fn plain(table: &toml::Table, at: &str) -> Result<(), String> {
        for (key, value) in table {
            let name = if at.is_empty() {
                key.clone()
            } else {
                format!("{at}.{key}")
            };
            let simple = !key.is_empty()
                && key
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !simple {
                return Err(name);
            }
            let tables: Vec<&toml::Table> = match value {
                toml::Value::Table(t) => vec![t],
                toml::Value::Array(items) => items.iter().filter_map(|v| v.as_table()).collect(),
                _ => Vec::new(),
            };
            for t in tables {
                plain(t, &name)?;
            }
        }
        Ok(())
    }
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(());
    };
    plain(&table, "").map_err(|key| SpecError::Invalid {
        path: path.to_path_buf(),
        key,
        message: "is not a key of a sweep spec".to_string(),
    })
}

/// The key a `NEUROMFA_…` variable sets (sections joined by `__`): any key outside the
/// `[[models]]` list.
fn env_key<'k>(keys: &'k [SpecKey], variable: &str) -> Option<&'k SpecKey> {
    let name = variable
        .strip_prefix("NEUROMFA_")?
        .to_lowercase()
        .replace("__", ".");
    keys.iter()
        .find(|key| key.name == name && !key.name.contains("[]"))
}

/// An environment value as its key takes it: text stays text (`NEUROMFA_TOKEN=007` is the
/// token `007`), numeric keys convert text themselves, and a key of several shapes
/// (`seeds`: a count or a list) gets a number when the text is one.
fn env_value(kind: KeyKind, value: &str) -> config::Value {
    if kind == KeyKind::Any {
        if let Ok(i) = value.parse::<i64>() {
            return config::Value::from(i);
        }
        if let Ok(f) = value.parse::<f64>() {
            return config::Value::from(f);
        }
    }
    config::Value::from(value.to_string())
}

/// A spec key and why its value is refused.
struct Invalid(String, String);

fn invalid(key: &str, message: impl Into<String>) -> Invalid {
    Invalid(key.to_string(), message.into())
}

impl AnalysisSpec {
    /// Settings the method can run with.
    fn check(&self) -> Result<(), Invalid> {
        if self.layer_sample == 0 {
            return Err(invalid("analysis.layer_sample", "must be at least 1"));
        }
        if !(self.threshold.is_finite() && self.threshold > 1.0) {
            return Err(invalid(
                "analysis.threshold",
                format!("must be a finite number above 1 (got {})", self.threshold),
            ));
        }
        q_grid(self.q_min, self.q_max, self.q_step)
            .map_err(|e| invalid("analysis.q_*", e.to_string()))?;
        if !(self.lambda.is_finite() && self.lambda >= 0.0) {
            return Err(invalid(
                "analysis.lambda",
                format!(
                    "must be a finite number of at least 0 (got {})",
                    self.lambda
                ),
            ));
        }
        if !(self.gamma.is_finite() && self.gamma > 0.0) {
            return Err(invalid(
                "analysis.gamma",
                format!("must be a finite number above 0 (got {})", self.gamma),
            ));
        }
        if self.distance == DistanceKind::ShortestPath && self.lambda >= self.threshold {
            return Err(invalid(
                "analysis.lambda",
                format!(
                    "{} is not below the threshold {}: no path could be within it",
                    self.lambda, self.threshold
                ),
            ));
        }
        Ok(())
    }
}

impl CoordinatorSpec {
    /// Leases that can lapse, attempts that can run, TLS files in pairs.
    fn check(&self) -> Result<(), Invalid> {
        if !(self.lease_seconds.is_finite() && self.lease_seconds > 0.0) {
            return Err(invalid(
                "coordinator.lease_seconds",
                format!("must be positive (got {})", self.lease_seconds),
            ));
        }
        if self.max_attempts == 0 {
            return Err(invalid("coordinator.max_attempts", "must be at least 1"));
        }
        if !(self.breaker_probe_seconds.is_finite() && self.breaker_probe_seconds > 0.0) {
            return Err(invalid(
                "coordinator.breaker_probe_seconds",
                format!("must be positive (got {})", self.breaker_probe_seconds),
            ));
        }
        match (&self.tls_cert, &self.tls_key) {
            (Some(_), None) => Err(invalid(
                "coordinator.tls_key",
                "missing: `tls_cert` needs the key it was issued for",
            )),
            (None, Some(_)) => Err(invalid(
                "coordinator.tls_cert",
                "missing: `tls_key` needs the certificate it belongs to",
            )),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
name = "t"
state_dir = "state"
seeds = 3
steps = [0, 10, 20]
[[models]]
repo = "org/a"
[[models]]
repo = "org/b"
steps = "pythia"
max_step = 140000
"#;

    fn parse(text: &str) -> Result<SweepSpec, SpecError> {
        SweepSpec::from_toml(text, Path::new("spec.toml"))
    }

    /// Loads `text` as a spec file in a fresh folder (returned, to keep it) with `env`.
    fn load_with(text: &str, env: &[(&str, &str)]) -> (tempfile::TempDir, SweepSpec) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.toml");
        std::fs::write(&path, text).unwrap();
        let env: HashMap<String, String> = env
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_string()))
            .collect();
        let spec = SweepSpec::load(&path, &env).unwrap();
        (dir, spec)
    }

    #[test]
    fn presets_have_the_published_lengths() {
        let steps = pythia_steps();
        assert_eq!(steps.len(), 154);
        assert_eq!(&steps[..4], &[0, 1, 2, 4]);
        assert_eq!(steps.last(), Some(&143000));
        let paper = pythia_paper_steps();
        assert_eq!(paper.len(), 27);
        assert!(paper.contains(&3000) && paper.contains(&23000) && !paper.contains(&2000));
    }

    #[test]
    fn grid_expands_with_overrides() {
        let spec = parse(MINIMAL).unwrap();
        let grid = spec.checkpoints();
        assert_eq!(grid.iter().filter(|c| c.model == "org/a").count(), 3);
        let b: Vec<_> = grid.iter().filter(|c| c.model == "org/b").collect();
        assert_eq!(b.len(), 151);
        assert_eq!(b.last().map(|c| c.step), Some(140000));
        assert_eq!(b[3].revision, "step4");
        assert_eq!(spec.seed_list(), vec![0, 1, 2]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse(&format!("{MINIMAL}\n[analysis]\nthreshhold = 3\n")).unwrap_err();
        assert!(err.to_string().contains("threshhold"), "{err}");
        let err = parse(&MINIMAL.replace("seeds = 3", "seeds = 3\nbogus = 1")).unwrap_err();
        assert!(err.to_string().contains("bogus"), "{err}");
    }

    #[test]
    fn empty_grids_and_impossible_values_are_named() {
        let err = parse(&MINIMAL.replace("seeds = 3", "seeds = 0")).unwrap_err();
        assert!(err.to_string().contains("`seeds`"), "{err}");
        let err = parse(&MINIMAL.replace("steps = [0, 10, 20]", "steps = []")).unwrap_err();
        assert!(err.to_string().contains("models[0].steps"), "{err}");
        let err = parse(&format!("{MINIMAL}\n[analysis]\nthreshold = -1\n")).unwrap_err();
        assert!(err.to_string().contains("analysis.threshold"), "{err}");
        let err = parse(&format!("{MINIMAL}\n[coordinator]\nmax_attempts = 0\n")).unwrap_err();
        assert!(
            err.to_string().contains("coordinator.max_attempts"),
            "{err}"
        );
        let err = parse(&MINIMAL.replace("org/a", "not-a-repo")).unwrap_err();
        assert!(err.to_string().contains("models[0].repo"), "{err}");
        for (body, key) in [
            ("lambda = -1", "analysis.lambda"),
            ("gamma = 0", "analysis.gamma"),
            (
                "distance = \"shortest-path\"\nlambda = 200",
                "analysis.lambda",
            ),
            ("distance = \"shortest\"", "distance"),
        ] {
            let err = parse(&format!("{MINIMAL}\n[analysis]\n{body}\n")).unwrap_err();
            assert!(err.to_string().contains(key), "{body}: {err}");
        }
    }

    #[test]
    fn the_hub_budget_is_a_tier_with_custom_keys_over_it() {
        let spec = parse(MINIMAL).unwrap();
        assert_eq!(spec.hub.quotas(), Tier::Free.quotas());
        let text = format!(
            "{MINIMAL}\n[hub]\nbudget = \"pro\"\nbudget_api = 40\nbudget_window_seconds = 2\n"
        );
        let quotas = parse(&text).unwrap().hub.quotas();
        assert_eq!(quotas.resolvers.requests, 12_000);
        assert_eq!(quotas.api.requests, 40);
        assert_eq!(quotas.api.window, std::time::Duration::from_secs(2));
        assert_eq!(quotas.resolvers.window, std::time::Duration::from_secs(2));
        let env = HashMap::from([("NEUROMFA_HUB__BUDGET".to_string(), "team".to_string())]);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("spec.toml");
        std::fs::write(&path, MINIMAL).unwrap();
        let spec = SweepSpec::load(&path, &env).unwrap();
        assert_eq!(spec.hub.budget, Tier::Team);
        for (body, key) in [
            ("budget = \"gold\"", "gold"),
            ("budget_resolvers = 0", "hub.budget_resolvers"),
            ("budget_window_seconds = -3", "hub.budget_window_seconds"),
        ] {
            let err = parse(&format!("{MINIMAL}\n[hub]\n{body}\n")).unwrap_err();
            assert!(err.to_string().contains(key), "{body}: {err}");
        }
    }

    #[test]
    fn distance_mode_reaches_the_analysis_params() {
        let spec = parse(MINIMAL).unwrap();
        assert_eq!(spec.analysis_params().distance, DistanceMode::OneHop);
        let text = format!("{MINIMAL}\n[analysis]\ndistance = \"shortest-path\"\ngamma = 4.5\n");
        let spec = parse(&text).unwrap();
        assert_eq!(
            spec.analysis_params().distance,
            DistanceMode::ShortestPath {
                lambda: 1.0,
                gamma: 4.5
            }
        );
    }

    #[test]
    fn tls_files_come_in_pairs_relative_to_the_spec() {
        let tls =
            "\n[coordinator]\ntls_cert = \"certs/coordinator.pem\"\ntls_key = \"/abs/key.pem\"\n";
        let spec =
            SweepSpec::from_toml(&format!("{MINIMAL}{tls}"), Path::new("conf/spec.toml")).unwrap();
        assert_eq!(
            spec.coordinator.tls_cert.as_deref(),
            Some(Path::new("conf/certs/coordinator.pem"))
        );
        assert_eq!(
            spec.coordinator.tls_key.as_deref(),
            Some(Path::new("/abs/key.pem"))
        );
        assert!(spec.worker_address().starts_with("https://"));
        let err = parse(&format!("{MINIMAL}\n[coordinator]\ntls_cert = \"c.pem\"\n")).unwrap_err();
        assert!(err.to_string().contains("coordinator.tls_key"), "{err}");
        let err = parse(&format!("{MINIMAL}\n[coordinator]\ntls_key = \"k.pem\"\n")).unwrap_err();
        assert!(err.to_string().contains("coordinator.tls_cert"), "{err}");
        assert!(parse(MINIMAL)
            .unwrap()
            .worker_address()
            .starts_with("http://"));
    }

    #[test]
    fn relative_paths_in_the_spec_start_from_its_folder_and_from_the_environment_here() {
        let text = format!("{MINIMAL}\n[hub]\nserve_dir = \"hub\"\n");
        let spec = SweepSpec::from_toml(&text, Path::new("conf/spec.toml")).unwrap();
        assert_eq!(spec.state_dir, Path::new("conf/state"));
        assert_eq!(spec.hub.serve_dir.as_deref(), Some(Path::new("conf/hub")));

        let (dir, spec) = load_with(&text, &[]);
        assert_eq!(spec.state_dir, dir.path().join("state"));
        // A variable is set where the command runs, like a flag: it stays as given.
        let env = [
            ("NEUROMFA_STATE_DIR", "here/state"),
            ("NEUROMFA_HUB__SERVE_DIR", "here/hub"),
        ];
        let (_dir, spec) = load_with(&text, &env);
        assert_eq!(spec.state_dir, Path::new("here/state"));
        assert_eq!(spec.hub.serve_dir.as_deref(), Some(Path::new("here/hub")));
    }

    #[test]
    fn environment_overrides_scalars() {
        let env = [
            ("NEUROMFA_TOKEN", "s3cret"),
            ("NEUROMFA_ANALYSIS__THRESHOLD", "200"),
            ("NEUROMFA_COORDINATOR__LEASE_SECONDS", "2.5"),
            ("NEUROMFA_UNRELATED", "x"),
            ("NEUROMFA_ANALYSIS__DISTANCE", "shortest-path"),
            ("NEUROMFA_ANALYSIS__LAMBDA", "2"),
            ("NEUROMFA_ANALYSIS__GAMMA", "4.5"),
        ];
        let (_dir, spec) = load_with(MINIMAL, &env);
        assert_eq!(
            spec.analysis_params().distance,
            DistanceMode::ShortestPath {
                lambda: 2.0,
                gamma: 4.5
            }
        );
        assert_eq!(spec.token.as_deref(), Some("s3cret"));
        assert_eq!(spec.analysis.threshold, 200.0);
        assert_eq!(spec.lease_ms(), 2500);
    }

    #[test]
    fn the_keys_are_read_off_the_spec_types() {
        let keys = SweepSpec::keys().unwrap();
        let kind = |name: &str| {
            keys.iter()
                .find(|k| k.name == name)
                .map(|k| k.kind)
                .unwrap_or_else(|| panic!("{name} not among {keys:?}"))
        };
        assert_eq!(kind("name"), KeyKind::Text);
        assert_eq!(kind("seeds"), KeyKind::Any);
        assert_eq!(kind("models[].repo"), KeyKind::Text);
        assert_eq!(kind("models[].max_step"), KeyKind::Number);
        assert_eq!(kind("analysis.threshold"), KeyKind::Number);
        assert_eq!(kind("analysis.distance"), KeyKind::Text);
        assert_eq!(kind("hub.serve_dir"), KeyKind::Text);
        assert_eq!(kind("coordinator.tls_key"), KeyKind::Text);
        assert_eq!(kind("duplicates"), KeyKind::Text);
        assert!(env_key(keys, "NEUROMFA_COORDINATOR__LISTEN").is_some());
        assert!(env_key(keys, "NEUROMFA_MODELS__REPO").is_none());
        assert!(env_key(keys, "NEUROMFA_UNRELATED").is_none());
    }

    #[test]
    fn environment_strings_stay_strings_whatever_they_look_like() {
        let env = [
            ("NEUROMFA_TOKEN", "007"),
            ("NEUROMFA_STATE_DIR", "0123"),
            ("NEUROMFA_NAME", "1e3"),
            ("NEUROMFA_HUB__TOKEN", "0x10"),
            ("NEUROMFA_SEEDS", "4"),
            ("NEUROMFA_HUB__MERGE_GAP", "0100"),
        ];
        let (_dir, spec) = load_with(MINIMAL, &env);
        assert_eq!(spec.token.as_deref(), Some("007"));
        assert!(
            spec.state_dir.ends_with("0123"),
            "{}",
            spec.state_dir.display()
        );
        assert_eq!(spec.name, "1e3");
        assert_eq!(spec.hub.token.as_deref(), Some("0x10"));
        // Numbers still become numbers where the key is one.
        assert_eq!(spec.seed_list(), vec![0, 1, 2, 3]);
        assert_eq!(spec.hub.merge_gap, Some(100));
    }
}
