//! The Hub's listings: a paths-info answer (an array of tree entries) read as the Hub
//! client reads it, and the same bytes as a tree page into `hf-hub`'s type; the weight
//! files are chosen from the names listed.

use hf_hub::repository::RepoTreeEntry;
use neuromfa_common::checkpoint::choose_weight_files;
use neuromfa_hub::listing::listed_files;

use crate::{Cap, Target};

pub const TARGET: Target = Target {
    name: "hub_listing",
    about: "Hub paths-info and tree answers (JSON arrays of tree entries)",
    run,
    cap: Cap {
        per_byte: 32,
        fixed: 1 << 20,
    },
    seeds: || SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect(),
};

/// Answers as the Hub gives them (a paths-info call for the weight files of a Pythia step,
/// a page of a tree with a folder, LFS and Xet files, and expanded metadata).
const SEEDS: [&str; 3] = [
    r#"[{"type":"file","oid":"2b8a3b2c4f3b9d1f0e5d6c7b8a9f0e1d2c3b4a59","size":7233,"path":"config.json"},{"type":"file","oid":"8f3e0b4b0d6a4e1c9b2a7f6e5d4c3b2a1f0e9d8c","size":325230080,"lfs":{"oid":"a3c1f0de4bd7f62e0ee1e1d2e8b2cb1f4e2c2d9f6f5e4d3c2b1a0f9e8d7c6b5a","size":325230080,"pointerSize":135},"path":"model.safetensors"}]"#,
    r#"[{"type":"directory","oid":"0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c","path":"step1000"},{"type":"file","oid":"1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d","size":4096,"path":"pytorch_model.bin.index.json"},{"type":"file","oid":"9f8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c","size":2147483648,"lfs":{"oid":"0000000000000000000000000000000000000000000000000000000000000001","size":2147483648,"pointerSize":134},"xetHash":"5d0f6c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a2918070","path":"pytorch_model-00001-of-00002.bin"}]"#,
    r#"[{"type":"file","oid":"c0ffee00c0ffee00c0ffee00c0ffee00c0ffee00","size":13,"path":"README.md","lastCommit":{"id":"0123456789abcdef0123456789abcdef01234567","title":"Upload","date":"2023-04-01T12:00:00.000Z"},"securityFileStatus":{"status":"safe","avScan":{"virusFound":false},"pickleImportScan":{"highestSafetyLevel":"innocuous","imports":[]}}}]"#,
];

fn run(data: &[u8]) {
    if let Ok(files) = listed_files(data) {
        let names: Vec<&str> = files.iter().map(String::as_str).collect();
        std::hint::black_box(choose_weight_files(&names));
    }
    let Ok(entries) = serde_json::from_slice::<Vec<RepoTreeEntry>>(data) else {
        return;
    };
    let names: Vec<&str> = entries
        .iter()
        .filter_map(|e| match e {
            RepoTreeEntry::File { path, .. } => Some(path.as_str()),
            RepoTreeEntry::Directory { .. } => None,
        })
        .collect();
    std::hint::black_box(choose_weight_files(&names));
}
