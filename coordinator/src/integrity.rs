//! Steps that serve identical weights. Published suites do not always hold what their
//! branch names say (pythia-2.8b reportedly serves final-era weights on most of its
//! branches); computing "emergence" across identical weights draws a flat curve with no
//! warning. Revisions of one model whose weights hash the same form a group.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// What a sweep does with a step whose weights duplicate another step's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DuplicatePolicy {
    /// Compute everything; flag the duplicates.
    #[default]
    Warn,
    /// Leave duplicates out of the computation, the aggregates, `E` and the plots.
    Skip,
    /// Compute each distinct set of weights once; duplicates take its results.
    Reuse,
}

/// For every duplicated `(model, step)`, the step it duplicates. Within a group the
/// latest step is taken as the original: a late checkpoint genuinely holds late weights,
/// while an early branch serving the same bytes is the one that is wrong.
pub fn duplicate_of<'a>(
    hashes: impl IntoIterator<Item = (&'a str, u64, &'a str)>,
) -> HashMap<(String, u64), u64> {
    let mut groups: BTreeMap<(&str, &str), Vec<u64>> = BTreeMap::new();
    for (model, step, hash) in hashes {
        groups.entry((model, hash)).or_default().push(step);
    }
    let mut duplicates = HashMap::new();
    for ((model, _), mut steps) in groups {
        steps.sort_unstable();
        if let Some((&original, rest)) = steps.split_last() {
            for &step in rest {
                duplicates.insert((model.to_string(), step), original);
            }
        }
    }
    duplicates
}

/// Steps grouped by identical weights, for reports: `(hash, steps ascending)`, groups in
/// order of their first step.
pub fn groups<'a>(hashes: impl IntoIterator<Item = (u64, &'a str)>) -> Vec<(String, Vec<u64>)> {
    let mut by_hash: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for (step, hash) in hashes {
        by_hash.entry(hash).or_default().push(step);
    }
    let mut groups: Vec<(String, Vec<u64>)> = by_hash
        .into_iter()
        .map(|(hash, mut steps)| {
            steps.sort_unstable();
            (hash.to_string(), steps)
        })
        .collect();
    groups.sort_by_key(|(_, steps)| steps.first().copied());
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_step_of_a_group_is_the_original() {
        let dups = duplicate_of([
            ("m", 0, "final"),
            ("m", 1000, "a"),
            ("m", 143000, "final"),
            ("m", 2000, "final"),
            ("other", 0, "final"),
        ]);
        assert_eq!(dups.len(), 2);
        assert_eq!(dups[&("m".to_string(), 0)], 143000);
        assert_eq!(dups[&("m".to_string(), 2000)], 143000);
        assert!(
            !dups.contains_key(&("other".to_string(), 0)),
            "groups are per model"
        );
        let g = groups([(0, "x"), (5, "y"), (3, "x")]);
        assert_eq!(
            g,
            vec![("x".to_string(), vec![0, 3]), ("y".to_string(), vec![5])]
        );
    }
}
