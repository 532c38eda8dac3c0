//! The synthetic trajectory moves weights the way the paper's toy experiments do: the
//! weight preferential-attachment adjustment (Algorithm 1) raises regularity, so α0
//! falls; growing diversity between neurons widens the spectrum.

use neuromfa_common::synth::{find_preset, write_trajectory_checkpoint, TrajectoryPoint};
use neuromfa_common::{analyze_seed, AnalysisParams, Checkpoint};

/// Mean (α0, w) over four seeds of a pythia-14m-shaped checkpoint at `point`.
fn measure(point: TrajectoryPoint) -> (f64, f64) {
    let preset = find_preset("pythia-14m").unwrap();
    let dir = tempfile::tempdir().unwrap();
    write_trajectory_checkpoint(&preset, dir.path(), 1, point).unwrap();
    let checkpoint = Checkpoint::open(dir.path()).unwrap();
    let params = AnalysisParams::default();
    let (mut alpha0, mut width) = (0.0, 0.0);
    for seed in 0..4 {
        let r = analyze_seed(&checkpoint, &params, 0, seed).unwrap().result;
        alpha0 += r.alpha0 / 4.0;
        width += r.width / 4.0;
    }
    (alpha0, width)
}

#[test]
fn preferential_attachment_lowers_alpha0() {
    let alpha0: Vec<f64> = [0, 3, 6]
        .into_iter()
        .map(|rounds| {
            measure(TrajectoryPoint {
                rounds,
                delta: 0.08,
                diversity: 0.0,
            })
            .0
        })
        .collect();
    assert!(alpha0.windows(2).all(|w| w[1] < w[0]), "α0 {alpha0:?}");
}

#[test]
fn diversity_between_neurons_widens_the_spectrum() {
    let width: Vec<f64> = [0.0, 0.5, 2.0]
        .into_iter()
        .map(|diversity| {
            measure(TrajectoryPoint {
                rounds: 0,
                delta: 0.08,
                diversity,
            })
            .1
        })
        .collect();
    assert!(width[1] > width[0] && width[2] > width[0], "w {width:?}");
}

#[test]
fn the_default_trajectory_is_more_regular_and_wider_at_its_end() {
    let points: Vec<(f64, f64)> = [0.0, 0.5, 1.0]
        .into_iter()
        .map(|t| measure(TrajectoryPoint::at(t)))
        .collect();
    assert!(
        points.windows(2).all(|w| w[1].0 < w[0].0),
        "α0 falls along it: {points:?}"
    );
    assert!(points[2].1 > points[0].1, "w widens: {points:?}");
}
