//! Fuzz targets for every parser that reads outside input, with the allocation cap each
//! must keep, and the seed corpora they start from (made from the fixtures in `tests/data`
//! and `examples/`).
//!
//! A target is a function of one input's bytes that panics when the parser breaks a
//! promise: a panic inside the parser, an answer that contradicts itself (a tensor placed
//! past the end of the file it was read from, a ranged read that disagrees with a whole
//! one), or more memory than [`Cap`] allows for the input's length, measured by the
//! counting allocator ([`alloc::Counting`]). The same [`check`] runs under libFuzzer
//! (`fuzz/libfuzzer`, `scripts/fuzz.sh`) and in the bounded runs of `cargo test`
//! (`fuzz/tests/bounded_runs.rs`), which also replay every input in `fuzz/regressions/`.
//!
//! Adding a target: a file in `src/targets/` defining a [`Target`], and its line in
//! [`targets::ALL`].

pub mod alloc;
pub mod mutate;
pub mod targets;

use std::path::{Path, PathBuf};

/// The most memory a parser may have live for an input of `n` bytes: `per_byte · n +
/// fixed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub per_byte: usize,
    pub fixed: usize,
}

impl Cap {
    pub fn bytes_for(&self, len: usize) -> usize {
        self.per_byte.saturating_mul(len).saturating_add(self.fixed)
    }
}

/// One fuzz target.
pub struct Target {
    /// What `NEUROMFA_FUZZ_TARGET` names it, and its folder in `fuzz/regressions/`.
    pub name: &'static str,
    /// What it parses, for `fuzz-seeds --list` and the docs.
    pub about: &'static str,
    /// Parses one input; panics when a promise is broken.
    pub run: fn(&[u8]),
    pub cap: Cap,
    /// The inputs to start from.
    pub seeds: fn() -> Vec<Vec<u8>>,
}

/// The target called `name`.
pub fn target(name: &str) -> Option<&'static Target> {
    targets::ALL.iter().copied().find(|t| t.name == name)
}

/// Runs `target` on `data` under its allocation cap; returns the most memory it had live.
/// Panics when the target does; an allocation past the cap aborts the process.
pub fn check(target: &Target, data: &[u8]) -> usize {
    let cap = target.cap.bytes_for(data.len());
    let ((), peak) = alloc::measure(cap, || (target.run)(data));
    assert!(
        peak <= cap,
        "{}: {peak} bytes live for a {}-byte input, above the cap of {cap}",
        target.name,
        data.len()
    );
    peak
}

/// The repository's root.
pub fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Where the inputs that once broke `target` are kept, each replayed by `cargo test`.
pub fn regressions_dir(target: &Target) -> PathBuf {
    repository().join("fuzz/regressions").join(target.name)
}

/// Every file in `dir` (none if it does not exist), sorted by name.
pub fn files_in(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| std::fs::read(&p).ok().map(|bytes| (p, bytes)))
        .collect()
}

/// Every file under `dir` (recursively) whose name satisfies `wanted`, sorted by path.
pub fn fixtures(dir: &str, wanted: impl Fn(&str) -> bool + Copy) -> Vec<Vec<u8>> {
    fn walk(dir: &Path, wanted: &dyn Fn(&str) -> bool, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for path in entries.flatten().map(|e| e.path()) {
            if path.is_dir() {
                walk(&path, wanted, out);
            } else if path
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(wanted)
            {
                out.push(path);
            }
        }
    }
    let mut paths = Vec::new();
    walk(&repository().join(dir), &wanted, &mut paths);
    paths.sort();
    paths
        .into_iter()
        .filter_map(|p| std::fs::read(p).ok())
        .collect()
}
