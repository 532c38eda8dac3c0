//! Every fuzz target, run without a fuzzer: its seed corpus, seeded mutations of it, and
//! every input kept in `fuzz/regressions/<target>/`, each under the target's allocation cap
//! (the counting allocator is this binary's). The same inputs on every machine.

use neuromfa_fuzz::{alloc::Counting, check, files_in, mutate, regressions_dir, targets, Target};

#[global_allocator]
static ALLOC: Counting = Counting;

/// Inputs per target: enough that each mutation kind reaches every seed format, few
/// enough to cost seconds.
const RUNS: usize = 5000;

fn bounded_run(target: &Target) {
    let seeds = (target.seeds)();
    assert!(!seeds.is_empty(), "{}: no seeds", target.name);
    for input in mutate::inputs(&seeds, RUNS, 0x5eed) {
        let guard = Reporter {
            target,
            input: &input,
        };
        check(target, &input);
        std::mem::forget(guard);
    }
}

/// On a panic, writes the failing input where it can be replayed and added to
/// `fuzz/regressions/`.
struct Reporter<'a> {
    target: &'a Target,
    input: &'a [u8],
}

impl Drop for Reporter<'_> {
    fn drop(&mut self) {
        let path = std::env::temp_dir().join(format!("neuromfa-fuzz-{}.input", self.target.name));
        if std::fs::write(&path, self.input).is_ok() {
            eprintln!(
                "{}: failing input written to {}",
                self.target.name,
                path.display()
            );
        }
    }
}

#[test]
fn the_counting_allocator_is_installed_and_refuses_nothing_under_its_limit() {
    assert!(neuromfa_fuzz::alloc::installed());
    let (len, peak) = neuromfa_fuzz::alloc::measure(1 << 20, || vec![7u8; 100_000].len());
    assert_eq!(len, 100_000);
    assert!((100_000..200_000).contains(&peak), "{peak}");
}

#[test]
fn every_target_survives_its_corpus_and_seeded_mutations_of_it() {
    for target in targets::ALL {
        bounded_run(target);
    }
}

#[test]
fn every_kept_regression_input_is_handled() {
    for target in targets::ALL {
        for (path, input) in files_in(&regressions_dir(target)) {
            eprintln!("{}: {}", target.name, path.display());
            check(target, &input);
        }
    }
}
