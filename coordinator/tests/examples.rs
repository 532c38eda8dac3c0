//! The shipped example specs parse and expand to the grids they promise.

use std::collections::HashMap;
use std::path::PathBuf;

use neuromfa_coordinator::SweepSpec;

fn example(name: &str) -> SweepSpec {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../examples")
        .join(name);
    SweepSpec::load(&path, &HashMap::new()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn pythia_suite_is_eight_models_by_154_steps_by_10_seeds() {
    let spec = example("pythia-suite.toml");
    assert_eq!(spec.models.len(), 8);
    assert_eq!(spec.checkpoints().len(), 8 * 154);
    assert_eq!(spec.seed_list().len(), 10);
    let deduped: Vec<bool> = spec
        .models
        .iter()
        .map(|m| m.repo.ends_with("-deduped"))
        .collect();
    assert_eq!(deduped, [false, false, true, true, true, true, true, true]);
}

#[test]
fn pythia_paper_is_the_27_analysed_steps() {
    let spec = example("pythia-paper.toml");
    let steps: Vec<u64> = spec
        .checkpoints()
        .into_iter()
        .filter(|c| c.model == "EleutherAI/pythia-160m-deduped")
        .map(|c| c.step)
        .collect();
    assert_eq!(steps.len(), 27);
    assert_eq!(&steps[..3], &[0, 1, 2]);
    assert!(steps.contains(&13000) && steps.contains(&143000) && !steps.contains(&2000));
}
