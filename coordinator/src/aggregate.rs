//! Which results count as a (model, step)'s points, and which step `E` is relative to:
//! the one rule that live status, the exports and the report all go through.
//!
//! Under `duplicates = "warn"` every checkpoint counts its own results; under `skip` a
//! checkpoint serving a later step's weights counts none (it is left out of the
//! aggregates and of `E`); under `reuse` it counts its original's results, seed for
//! seed, and never its own. `E` is relative to the first step of the model's grid that
//! counts at all, whether or not its results are in yet.

use std::collections::{BTreeMap, HashMap};

use neuromfa_common::stats::{aggregate, SeedPoint, StepAggregate};

use crate::integrity::{DuplicatePolicy, Ledger};

/// The duplicate policy applied to one ledger's grid.
pub struct Selection<'a> {
    ledger: &'a Ledger,
    policy: DuplicatePolicy,
    /// Under `reuse`: original checkpoint → the duplicates that take its results.
    reused_by: HashMap<usize, Vec<usize>>,
}

impl<'a> Selection<'a> {
    pub fn new(ledger: &'a Ledger, policy: DuplicatePolicy) -> Self {
        let mut reused_by: HashMap<usize, Vec<usize>> = HashMap::new();
        if policy == DuplicatePolicy::Reuse {
            for (duplicate, original) in ledger.duplicates() {
                reused_by.entry(original).or_default().push(duplicate);
            }
        }
        Selection {
            ledger,
            policy,
            reused_by,
        }
    }

    /// The checkpoint whose results count as `slot`'s, or None when it is left out.
    pub fn source(&self, slot: usize) -> Option<usize> {
        match (self.ledger.original_of(slot), self.policy) {
            (Some(_), DuplicatePolicy::Skip) => None,
            (Some(original), DuplicatePolicy::Reuse) => Some(original),
            _ => Some(slot),
        }
    }

    /// The step `E` is relative to: the model's first step that counts (0 when none).
    pub fn reference_step(&self, model: &str) -> u64 {
        self.ledger
            .checkpoints()
            .iter()
            .enumerate()
            .filter(|(slot, k)| k.model == model && self.source(*slot).is_some())
            .map(|(_, k)| k.step)
            .min()
            .unwrap_or(0)
    }

    /// Per model, the aggregates of `results` (each the checkpoint it was computed on
    /// and its point), every result counted where the policy says, steps ascending.
    pub fn aggregates(
        &self,
        results: impl IntoIterator<Item = (usize, SeedPoint)>,
    ) -> BTreeMap<&'a str, Vec<StepAggregate>> {
        let checkpoints = self.ledger.checkpoints();
        let mut points: BTreeMap<&'a str, Vec<SeedPoint>> = BTreeMap::new();
        for (slot, point) in results {
            let Some(key) = checkpoints.get(slot) else {
                continue;
            };
            let bucket = points.entry(key.model.as_str()).or_default();
            for &duplicate in self.reused_by.get(&slot).into_iter().flatten() {
                bucket.push(SeedPoint {
                    step: checkpoints[duplicate].step,
                    ..point.clone()
                });
            }
            if self.source(slot) == Some(slot) {
                bucket.push(SeedPoint {
                    step: key.step,
                    ..point
                });
            }
        }
        points
            .into_iter()
            .map(|(model, points)| (model, aggregate(&points, self.reference_step(model))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::record::StoredRevision;
    use crate::spec::CheckpointKey;

    fn ledger() -> Ledger {
        let key = |step| CheckpointKey {
            model: "m".into(),
            step,
            revision: format!("step{step}"),
        };
        // Step 0 serves step 20's weights.
        Ledger::new(
            vec![key(0), key(10), key(20)],
            [(0, "late"), (10, "mid"), (20, "late")].map(|(step, hash)| StoredRevision {
                model: "m".to_string(),
                step,
                weights_sha256: hash.to_string(),
                format: None,
                resolved: None,
            }),
        )
    }

    fn point(step: u64, seed: u32, alpha0: f64) -> SeedPoint {
        SeedPoint {
            step,
            seed,
            alpha0,
            width: 0.5,
            alpha: Vec::new(),
            f_alpha: Vec::new(),
        }
    }

    fn steps_and_alpha0(policy: DuplicatePolicy) -> (Vec<(u64, f64)>, u64) {
        let ledger = ledger();
        let selection = Selection::new(&ledger, policy);
        let results = [
            (0, point(0, 0, 1.0)),
            (1, point(10, 0, 1.2)),
            (2, point(20, 0, 1.4)),
        ];
        let aggregates = selection.aggregates(results);
        let steps = aggregates["m"]
            .iter()
            .map(|a| (a.step, a.alpha0_mean))
            .collect();
        (steps, selection.reference_step("m"))
    }

    #[test]
    fn each_policy_counts_duplicates_its_own_way() {
        use DuplicatePolicy::*;
        assert_eq!(
            steps_and_alpha0(Warn),
            (vec![(0, 1.0), (10, 1.2), (20, 1.4)], 0)
        );
        assert_eq!(steps_and_alpha0(Skip), (vec![(10, 1.2), (20, 1.4)], 10));
        // Step 0 takes step 20's result, never its own.
        assert_eq!(
            steps_and_alpha0(Reuse),
            (vec![(0, 1.4), (10, 1.2), (20, 1.4)], 0)
        );
    }
}
