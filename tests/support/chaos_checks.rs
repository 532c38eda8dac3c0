//! What a finished chaos sweep must show: its SQLite state holds every task of the grid
//! done once with its own result, the workers' logs agree, and its exports equal a clean
//! run's byte for byte.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

/// The exports that must not depend on how the sweep went: all but the `fetch` files
/// and the summary, which sums them (README "Exports").
pub fn compared() -> Vec<&'static str> {
    let compared: Vec<&str> = neuromfa_coordinator::export::EXPORT_FILES
        .iter()
        .copied()
        .filter(|f| !f.starts_with("fetch") && *f != "summary.md")
        .collect();
    assert_eq!(compared.len(), 6, "{compared:?}");
    compared
}
/// What the finished sweep's SQLite state says.
#[derive(Debug, Clone, Default)]
pub struct StateFacts {
    /// Leases beyond each task's first: times a task was handed out again because the
    /// worker holding it died (the work it had done was lost and redone).
    pub extra_leases: u64,
    /// Tasks leased more than once.
    pub releases: u64,
    /// Results that arrived for tasks already done, counted and ignored.
    pub duplicates: u64,
}

impl std::fmt::Display for StateFacts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "tasks recomputed: {} (leases beyond the first, over {} tasks); duplicate results ignored: {}",
            self.extra_leases, self.releases, self.duplicates
        )
    }
}

/// Checks that the state holds every task of the grid (`tasks` of them) done exactly once,
/// with one result that is that task's, and nothing damaged; returns what it counts.
pub fn check_state(state_dir: &Path, tasks: u64) -> StateFacts {
    use rusqlite::{Connection, OpenFlags};
    let conn = Connection::open_with_flags(
        state_dir.join("sweep.sqlite"),
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let one = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let integrity: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(integrity, "ok");
    assert_eq!(one("SELECT COUNT(*) FROM tasks") as u64, tasks);
    let states: BTreeMap<String, i64> = conn
        .prepare("SELECT state, COUNT(*) FROM tasks GROUP BY state")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(states, BTreeMap::from([("done".to_string(), tasks as i64)]));
    assert_eq!(
        one("SELECT COUNT(*) FROM tasks WHERE worker IS NOT NULL"),
        0
    );
    assert_eq!(one("SELECT COUNT(*) FROM tasks WHERE attempts < 1"), 0);
    assert_eq!(one("SELECT COUNT(*) FROM results") as u64, tasks);
    let mut stmt = conn
        .prepare(
            "SELECT c.step, t.seed, r.result_json FROM results r
             JOIN tasks t ON t.id = r.task_id JOIN checkpoints c ON c.id = t.checkpoint_id",
        )
        .unwrap();
    let rows: Vec<(i64, i64, String)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(rows.len() as u64, tasks, "a result without its task");
    for (step, seed, json) in rows {
        let result: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (result["step"].as_i64(), result["seed"].as_i64()),
            (Some(step), Some(seed))
        );
    }
    StateFacts {
        extra_leases: one("SELECT COALESCE(SUM(attempts - 1), 0) FROM tasks") as u64,
        releases: one("SELECT COUNT(*) FROM tasks WHERE attempts > 1") as u64,
        duplicates: conn
            .query_row(
                "SELECT COALESCE(MAX(value), 0) FROM counters WHERE name = 'duplicates'",
                [],
                |r| r.get::<_, i64>(0),
            )
            .unwrap() as u64,
    }
}

/// What the workers' logs say the coordinator acknowledged: per task (model, step, seed),
/// how many results it accepted as new, and how many it refused as repeats in all.
pub fn acknowledged(dir: &Path) -> (BTreeMap<String, u64>, u64) {
    let mut accepted = BTreeMap::new();
    let mut refused = 0;
    let logs = std::fs::read_dir(dir).unwrap().flatten().map(|e| e.path());
    for log in logs.filter(|p| {
        p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("worker"))
    }) {
        for line in std::fs::read_to_string(&log).unwrap_or_default().lines() {
            if !line.contains("task done") {
                continue;
            }
            let field = |name: &str| {
                let start = line
                    .find(name)
                    .map(|i| i + name.len())
                    .unwrap_or(line.len());
                let rest = &line[start..];
                rest[..rest.find([' ', '}']).unwrap_or(rest.len())].to_string()
            };
            if line.contains("accepted=true") {
                let task = format!(
                    "{} step {} seed {}",
                    field("model="),
                    field("step="),
                    field("seed=")
                );
                *accepted.entry(task).or_insert(0) += 1;
            } else {
                refused += 1;
            }
        }
    }
    (accepted, refused)
}

/// The compared exports in `dir`, by name.
pub type Exports = BTreeMap<&'static str, String>;

pub fn read_exports(dir: &Path) -> Exports {
    compared()
        .into_iter()
        .map(|name| {
            let path = dir.join(name);
            let text = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (name, text)
        })
        .collect()
}

/// Panics with the first differing line unless the exports in `ours` hold the same bytes
/// as `clean`.
pub fn assert_same_exports(clean: &Exports, ours: &Path) {
    for (name, got) in read_exports(ours) {
        let expected = &clean[name];
        if *expected != got {
            let (line, (a, b)) = expected
                .lines()
                .zip(got.lines())
                .enumerate()
                .find(|(_, (a, b))| a != b)
                .unwrap_or((0, ("(lengths differ)", "")));
            panic!(
                "{name} differs from the clean run's at line {}:\n  clean: {a}\n  ours:  {b}",
                line + 1
            );
        }
    }
}
