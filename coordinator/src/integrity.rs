//! Steps that serve identical weights. Published suites do not always hold what their
//! branch names say (pythia-2.8b reportedly serves final-era weights on most of its
//! branches); computing "emergence" across identical weights draws a flat curve with no
//! warning. Revisions of one model whose weights hash the same form a group; the
//! [`Ledger`] keeps what every checkpoint of a grid serves and which duplicate which.

use std::collections::{BTreeMap, HashMap};

use neuromfa_common::{RevisionWeights, WeightFormat};
use serde::{Deserialize, Serialize};

use crate::record::{Change, StoredRevision};
use crate::spec::CheckpointKey;

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

/// What each checkpoint of a grid serves, once resolved, and which checkpoints serve
/// the same weights as a later step of their model. Checkpoints are referred to by their
/// index in the grid, as the schedule refers to them.
#[derive(Debug, Clone)]
pub struct Ledger {
    checkpoints: Vec<CheckpointKey>,
    /// model → step → index in `checkpoints`.
    slots: HashMap<String, HashMap<u64, usize>>,
    /// Per checkpoint: the sha256 of its weights, once resolved.
    weights: Vec<Option<String>>,
    /// Per checkpoint: the format of its weight files, once resolved (not known for
    /// resolutions stored before formats were).
    formats: Vec<Option<WeightFormat>>,
    /// Per checkpoint: its commit and weight files, once resolved (not known for
    /// resolutions stored before they were).
    resolved: Vec<Option<RevisionWeights>>,
    /// Duplicated checkpoint → the checkpoint whose weights it serves too.
    original: HashMap<usize, usize>,
}

impl Ledger {
    /// The ledger of `checkpoints` given the stored resolutions (those outside the grid
    /// are ignored), grouped.
    pub fn new(
        checkpoints: Vec<CheckpointKey>,
        revisions: impl IntoIterator<Item = StoredRevision>,
    ) -> Self {
        let mut slots: HashMap<String, HashMap<u64, usize>> = HashMap::new();
        for (i, k) in checkpoints.iter().enumerate() {
            slots.entry(k.model.clone()).or_default().insert(k.step, i);
        }
        let mut ledger = Ledger {
            weights: vec![None; checkpoints.len()],
            formats: vec![None; checkpoints.len()],
            resolved: vec![None; checkpoints.len()],
            checkpoints,
            slots,
            original: HashMap::new(),
        };
        for r in revisions {
            if let Some(slot) = ledger.slot(&r.model, r.step) {
                ledger.weights[slot] = Some(r.weights_sha256);
                ledger.formats[slot] = r.format;
                ledger.resolved[slot] = r.resolved;
            }
        }
        ledger.regroup();
        ledger
    }

    pub fn checkpoints(&self) -> &[CheckpointKey] {
        &self.checkpoints
    }

    /// The index of `(model, step)` in the grid.
    pub fn slot(&self, model: &str, step: u64) -> Option<usize> {
        self.slots.get(model)?.get(&step).copied()
    }

    /// Checkpoints whose weights have not been resolved yet, or whose format is not
    /// known (resolved before formats were recorded).
    pub fn unresolved(&self) -> Vec<CheckpointKey> {
        self.checkpoints
            .iter()
            .zip(self.weights.iter().zip(&self.formats))
            .filter(|(_, (h, f))| h.is_none() || f.is_none())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Records what a checkpoint's revision serves; groups change at the next
    /// [`regroup`](Self::regroup). None when the checkpoint is not in the grid.
    pub fn record(
        &mut self,
        model: &str,
        step: u64,
        weights_sha256: &str,
        resolved: &RevisionWeights,
    ) -> Option<Change> {
        let slot = self.slot(model, step)?;
        self.weights[slot] = Some(weights_sha256.to_string());
        self.formats[slot] = Some(resolved.weights.format);
        self.resolved[slot] = Some(resolved.clone());
        Some(Change::RevisionResolved {
            model: model.to_string(),
            step,
            weights_sha256: weights_sha256.to_string(),
            resolved: Box::new(resolved.clone()),
        })
    }

    /// Groups the checkpoints by the weights recorded so far.
    pub fn regroup(&mut self) {
        let groups = duplicate_of(
            self.checkpoints
                .iter()
                .zip(&self.weights)
                .filter_map(|(k, h)| h.as_deref().map(|h| (k.model.as_str(), k.step, h))),
        );
        self.original = groups
            .into_iter()
            .filter_map(|((model, step), original)| {
                Some((self.slot(&model, step)?, self.slot(&model, original)?))
            })
            .collect();
    }

    /// The checkpoint whose weights `slot` serves too, when it is a duplicate.
    pub fn original_of(&self, slot: usize) -> Option<usize> {
        self.original.get(&slot).copied()
    }

    /// The sha256 of a checkpoint's weights, once resolved.
    pub fn weights_of(&self, slot: usize) -> Option<&str> {
        self.weights.get(slot)?.as_deref()
    }

    /// The format of a checkpoint's weight files, once resolved.
    pub fn format_of(&self, slot: usize) -> Option<WeightFormat> {
        self.formats.get(slot).copied().flatten()
    }

    /// A checkpoint's commit and weight files, once resolved.
    pub fn resolved(&self, slot: usize) -> Option<&RevisionWeights> {
        self.resolved.get(slot)?.as_ref()
    }

    /// The name of that format, empty while not known (for tables).
    pub fn format_name(&self, slot: usize) -> &'static str {
        self.format_of(slot).map_or("", WeightFormat::as_str)
    }

    /// Every duplicated checkpoint and its original, by model and step.
    pub fn duplicates(&self) -> Vec<(usize, usize)> {
        let mut list: Vec<(usize, usize)> = self.original.iter().map(|(&d, &o)| (d, o)).collect();
        list.sort_by(|a, b| {
            let (x, y) = (&self.checkpoints[a.0], &self.checkpoints[b.0]);
            (&x.model, x.step).cmp(&(&y.model, y.step))
        });
        list
    }
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
