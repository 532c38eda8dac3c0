//! How fast the virtual hub makes bytes: one core generating a checkpoint's weights at
//! arbitrary offsets, and every core hashing whole files (what `hub precompute` does).
//!
//!     cargo bench -p neuromfa-hub-server --bench virtual_hub [-- MODEL]
//!
//! MODEL is a Pythia preset (default pythia-410m).

use std::time::Instant;

use neuromfa_hub_server::{Description, VirtualHub};

fn main() -> anyhow::Result<()> {
    let model = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .unwrap_or_else(|| "pythia-410m".to_string());
    let mut description = Description::pythia();
    description.models.truncate(1);
    description.models[0].repo = format!("bench/{model}");
    description.models[0].like = Some(model.clone());
    description.restrict(&[], &[143_000])?;
    let dir = tempfile::tempdir()?;
    let hub = VirtualHub::new(&description, Some(&dir.path().join("facts.jsonl")))?;

    let started = Instant::now();
    let done = hub.precompute(|_, _| {});
    let secs = started.elapsed().as_secs_f64();
    println!(
        "hashing {} files, {:.2} GB, on {} threads: {:.2} s, {:.2} GB/s",
        done.computed,
        done.computed_bytes as f64 / 1e9,
        rayon::current_num_threads(),
        secs,
        done.computed_bytes as f64 / 1e9 / secs
    );

    let repo = &description.models[0].repo;
    let files = hub.files(repo, "main")?;
    let (path, size) = files
        .iter()
        .max_by_key(|(_, size)| *size)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no files"))?;
    // One thread, 1 MiB reads at offsets spread over the file (as ranged fetches ask).
    let piece = 1u64 << 20;
    let reads = (size / piece).min(1024);
    let stride = (size - piece) / reads.max(1);
    let started = Instant::now();
    let mut checksum = 0u64;
    for i in 0..reads {
        let bytes = hub.read(repo, "main", &path, i * stride + (i % 7), piece)?;
        checksum = checksum.wrapping_add(u64::from(bytes[bytes.len() / 2]));
    }
    let secs = started.elapsed().as_secs_f64();
    let bytes = (reads * piece) as f64;
    println!(
        "generating {path} ({:.2} GB) on one thread: {reads} reads of 1 MiB in {secs:.2} s, {:.2} GB/s (checksum {checksum})",
        size as f64 / 1e9,
        bytes / 1e9 / secs
    );
    Ok(())
}
