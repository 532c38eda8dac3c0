//! Checkpoint integrity: what every (model, revision) of a grid really serves, resolved
//! before anything is computed, and `neuromfa audit` to check a suite on its own.

use std::io::Write;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::Args;
use neuromfa_common::budget::Tier;
use neuromfa_coordinator::integrity::groups;
use neuromfa_coordinator::spec::{pythia_paper_steps, pythia_steps, CheckpointKey};
use neuromfa_coordinator::state::StateError;
use neuromfa_coordinator::SweepState;
use neuromfa_hub::budget::LocalBudget;
use neuromfa_hub::resolve::{ResolvedRevision, Resolver};
use neuromfa_hub::HubSettings;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use crate::server::{ClusterBudget, StateHandle};

/// Revisions resolved at once: enough to hide latency, few enough to be polite.
const CONCURRENCY: usize = 16;

/// One revision's resolution, or why it failed: `(repo, step, outcome)`.
type Resolution = (String, u64, Result<ResolvedRevision, String>);

/// Resolves many revisions of possibly many repos, `CONCURRENCY` at a time in the order
/// given, and sends each outcome as it comes; the channel closes after the last.
fn resolve_each(
    resolver: Arc<Resolver>,
    revisions: Vec<(String, u64, String)>,
) -> mpsc::UnboundedReceiver<Resolution> {
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut pending = revisions.into_iter();
        let mut running = JoinSet::new();
        loop {
            while running.len() < CONCURRENCY {
                let Some((repo, step, revision)) = pending.next() else {
                    break;
                };
                let resolver = resolver.clone();
                running.spawn(async move {
                    let result = resolver
                        .resolve(&repo, &revision)
                        .await
                        .map_err(|e| e.to_string());
                    (repo, step, result)
                });
            }
            match running.join_next().await {
                Some(Ok(item)) => {
                    if sender.send(item).is_err() {
                        return; // nobody listens any more
                    }
                }
                Some(Err(e)) => tracing::warn!(error = %e, "a resolution task stopped"),
                None => return,
            }
        }
    });
    receiver
}

/// Resolves many revisions; failures are returned per revision, sorted by repo and step.
async fn resolve_all(
    resolver: Arc<Resolver>,
    revisions: Vec<(String, u64, String)>,
) -> Vec<Resolution> {
    let mut outcomes = resolve_each(resolver, revisions);
    let mut out = Vec::new();
    while let Some(item) = outcomes.recv().await {
        out.push(item);
    }
    out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    out
}

/// Resolver spending from the cluster's `budget`.
fn budgeted_resolver(settings: &HubSettings, budget: &ClusterBudget) -> Result<Arc<Resolver>> {
    let budget = Arc::new(LocalBudget::shared(budget.clone()));
    Ok(Arc::new(
        Resolver::with_budget(settings, budget).context("checking checkpoints")?,
    ))
}

fn revisions_of(keys: Vec<CheckpointKey>) -> Vec<(String, u64, String)> {
    keys.into_iter()
        .map(|k| (k.model, k.step, k.revision))
        .collect()
}

/// Records what resolved (warning about what did not) and applies the spec's duplicate
/// policy, in the open transaction.
fn record_resolutions(state: &mut SweepState, resolved: &[Resolution]) -> Result<(), StateError> {
    for (repo, step, result) in resolved {
        state.resolution_ended(repo, *step);
        match result {
            Ok(r) => state.record_resolution(repo, *step, &r.weights_sha256, &r.weights)?,
            Err(e) => {
                tracing::warn!(model = %repo, step, error = %e, "cannot check this checkpoint's weights")
            }
        }
    }
    state.apply_duplicate_policy().map(drop)
}

/// Resolves, while the coordinator serves, the checkpoints `state` awaits
/// ([`SweepState::await_resolution`], which says in what order), recording each outcome as
/// it comes: a checkpoint's tasks are leased once it is settled, so workers start on the
/// first checkpoints resolved while the Hub's budget spaces out the rest. Identical
/// weights are grouped and the spec's duplicate policy applied as they are found. A
/// revision that cannot be resolved is left as unique (its tasks still run, and fail with
/// the reason if it does not exist; [`resolve_again`] tries it again later). Whatever
/// happens, nothing is held back once this returns. The requests spend from the
/// cluster's budget (the one `state` reports).
pub async fn resolve_awaited(
    state: StateHandle,
    keys: Vec<CheckpointKey>,
    settings: HubSettings,
) -> Result<()> {
    let outcome = record_as_resolved(&state, keys, &settings).await;
    let duplicates = state
        .call(|s, _| {
            s.stop_awaiting_resolution();
            Ok((s.duplicate_steps(), s.spec().duplicates))
        })
        .await?;
    let (duplicates, policy) = duplicates;
    for d in duplicates {
        tracing::warn!(
            model = %d.model, step = d.step, duplicate_of = d.duplicate_of, ?policy,
            "step serves the same weights as a later step"
        );
    }
    outcome
}

async fn record_as_resolved(
    state: &StateHandle,
    keys: Vec<CheckpointKey>,
    settings: &HubSettings,
) -> Result<()> {
    if keys.is_empty() {
        return Ok(());
    }
    let total = keys.len();
    tracing::info!(
        checkpoints = total,
        "resolving what each checkpoint serves; leasing starts with the first resolved"
    );
    let resolver = budgeted_resolver(settings, &state.budget)?;
    let mut outcomes = resolve_each(resolver, revisions_of(keys));
    let mut recorded = 0;
    while let Some(first) = outcomes.recv().await {
        // Whatever else has come in meanwhile goes in the same transaction.
        let mut batch = vec![first];
        while let Ok(more) = outcomes.try_recv() {
            batch.push(more);
        }
        recorded += batch.len();
        state
            .call(move |s, _| record_resolutions(s, &batch))
            .await
            .map_err(|status| anyhow::anyhow!("recording resolutions: {}", status.message()))?;
        tracing::debug!(recorded, total, "checkpoints resolved");
    }
    tracing::info!(checkpoints = total, "every checkpoint's resolution is over");
    Ok(())
}

/// Resolves, on a running coordinator, the checkpoints that could not be resolved when
/// it started (a Hub that refused then may answer now), so that the exports name every
/// checkpoint's weights. Returns how many are still unresolved.
pub async fn resolve_again(
    state: &StateHandle,
    settings: &HubSettings,
    budget: &ClusterBudget,
) -> Result<usize> {
    let unresolved = state.call(|s, _| Ok(s.unresolved())).await?;
    if unresolved.is_empty() {
        return Ok(0);
    }
    let resolved = resolve_all(
        budgeted_resolver(settings, budget)?,
        revisions_of(unresolved),
    )
    .await;
    let left = state
        .call(move |s, _| {
            record_resolutions(s, &resolved)?;
            Ok(s.unresolved().len())
        })
        .await?;
    tracing::info!(unresolved = left, "checkpoints resolved again");
    Ok(left)
}

#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Hub repo id, e.g. EleutherAI/pythia-2.8b-deduped.
    pub repo: String,
    /// Steps to check: `pythia` (all 154), `pythia-paper` (27) or a list like 0,1000,2000.
    #[arg(long, default_value = "pythia")]
    pub steps: String,
    /// Branch name of a step; `{step}` is replaced.
    #[arg(long, default_value = "step{step}")]
    pub revision_format: String,
    /// Hub endpoint (default: HF_ENDPOINT, else the real Hub).
    #[arg(long)]
    pub hub_endpoint: Option<String>,
    /// The Hub account tier whose rate limits to stay within: anonymous, free, pro, team.
    #[arg(long, default_value = "free")]
    pub budget: Tier,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Exit 0 even when duplicates are found.
    #[arg(long)]
    pub allow_duplicates: bool,
}

/// The audit found steps serving identical weights (exit status 3).
#[derive(Debug, thiserror::Error)]
#[error("{count} step(s) of {repo} serve the same weights as another step")]
pub struct DuplicatesFound {
    pub repo: String,
    pub count: usize,
}

#[derive(Serialize)]
struct AuditRow {
    step: u64,
    revision: String,
    commit: Option<String>,
    /// `safetensors` or `pytorch-bin`: the files read.
    format: Option<String>,
    weights_sha256: Option<String>,
    duplicate_of: Option<u64>,
    error: Option<String>,
}

fn parse_steps(text: &str) -> Result<Vec<u64>> {
    match text {
        "pythia" => Ok(pythia_steps()),
        "pythia-paper" => Ok(pythia_paper_steps()),
        list => list
            .split(',')
            .map(|s| {
                s.trim()
                    .parse::<u64>()
                    .with_context(|| format!("--steps: `{s}` is not a step"))
            })
            .collect(),
    }
}

pub async fn audit(args: AuditArgs) -> Result<()> {
    let steps = parse_steps(&args.steps)?;
    let settings = HubSettings {
        endpoint: args.hub_endpoint.clone(),
        ..HubSettings::default()
    };
    let budget = Arc::new(LocalBudget::new(args.budget.quotas()));
    let resolver = Arc::new(Resolver::with_budget(&settings, budget)?);
    let revisions = steps
        .iter()
        .map(|&s| {
            (
                args.repo.clone(),
                s,
                args.revision_format.replace("{step}", &s.to_string()),
            )
        })
        .collect();
    let resolved = resolve_all(resolver, revisions).await;
    let hashes: Vec<(u64, String)> = resolved
        .iter()
        .filter_map(|(_, step, r)| r.as_ref().ok().map(|r| (*step, r.weights_sha256.clone())))
        .collect();
    let duplicates = neuromfa_coordinator::integrity::duplicate_of(
        hashes
            .iter()
            .map(|(s, h)| (args.repo.as_str(), *s, h.as_str())),
    );
    let rows: Vec<AuditRow> = resolved
        .iter()
        .map(|(_, step, r)| AuditRow {
            step: *step,
            revision: args.revision_format.replace("{step}", &step.to_string()),
            commit: r.as_ref().ok().map(|r| r.commit.clone()),
            format: r.as_ref().ok().map(|r| r.format.to_string()),
            weights_sha256: r.as_ref().ok().map(|r| r.weights_sha256.clone()),
            duplicate_of: duplicates.get(&(args.repo.clone(), *step)).copied(),
            error: r.as_ref().err().cloned(),
        })
        .collect();
    let grouped = groups(hashes.iter().map(|(s, h)| (*s, h.as_str())));
    let mut out = std::io::stdout().lock();
    if args.json {
        print_audit_json(&mut out, &args.repo, &rows, &grouped)?;
    } else {
        print_audit_table(&mut out, &args.repo, &rows, &grouped)?;
    }
    // An audit with holes cannot vouch for the suite: that is an error, before duplicates.
    let unresolved = rows.iter().filter(|r| r.error.is_some()).count();
    if unresolved > 0 {
        bail!(
            "{unresolved} of {} step(s) of {} could not be checked (see `unresolved` above)",
            rows.len(),
            args.repo
        );
    }
    if !duplicates.is_empty() && !args.allow_duplicates {
        return Err(DuplicatesFound {
            repo: args.repo,
            count: duplicates.len(),
        }
        .into());
    }
    Ok(())
}

/// The audit as one JSON document: every step, and the groups of identical weights.
fn print_audit_json(
    out: &mut impl Write,
    repo: &str,
    rows: &[AuditRow],
    grouped: &[(String, Vec<u64>)],
) -> Result<()> {
    let doc = serde_json::json!({
        "repo": repo,
        "steps": rows,
        "groups": grouped
            .iter()
            .map(|(hash, steps)| serde_json::json!({"weights_sha256": hash, "steps": steps}))
            .collect::<Vec<_>>(),
    });
    writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    Ok(())
}

/// The audit as a table of steps, then the groups of identical weights.
fn print_audit_table(
    out: &mut impl Write,
    repo: &str,
    rows: &[AuditRow],
    grouped: &[(String, Vec<u64>)],
) -> std::io::Result<()> {
    let checked = rows.iter().filter(|r| r.error.is_none()).count();
    writeln!(out, "{repo}: {checked} of {} step(s) checked", rows.len())?;
    writeln!(
        out,
        "{:>8}  {:<12} {:<11} {:<16} note",
        "step", "commit", "format", "weights sha256"
    )?;
    for r in rows {
        let note = match (&r.duplicate_of, &r.error) {
            (_, Some(e)) => format!("unresolved: {e}"),
            (Some(d), None) => format!("DUPLICATE of step {d}"),
            (None, None) => String::new(),
        };
        writeln!(
            out,
            "{:>8}  {:<12} {:<11} {:<16} {note}",
            r.step,
            r.commit.as_deref().map_or("-", |c| &c[..c.len().min(12)]),
            r.format.as_deref().unwrap_or("-"),
            r.weights_sha256
                .as_deref()
                .map_or("-", |h| &h[..h.len().min(16)]),
        )?;
    }
    writeln!(out, "groups of identical weights:")?;
    for (hash, steps) in grouped {
        let list: Vec<String> = steps.iter().map(u64::to_string).collect();
        writeln!(
            out,
            "  {} : {} step(s): {}",
            &hash[..hash.len().min(16)],
            steps.len(),
            list.join(", ")
        )?;
    }
    Ok(())
}
