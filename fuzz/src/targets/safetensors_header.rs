//! The safetensors header, read as the memory-mapped reader reads a whole file and as the
//! ranged reader reads one whose length the Hub claims.

use neuromfa_common::checkpoint::{
    safetensors_data_start, safetensors_layout, safetensors_metadata,
};

use crate::{Cap, Target};

pub const TARGET: Target = Target {
    name: "safetensors_header",
    about: "safetensors header (8-byte length, JSON), as a whole file and with a claimed length",
    run,
    cap: Cap {
        per_byte: 64,
        fixed: 1 << 20,
    },
    seeds,
};

/// The input: 8 bytes of the length the Hub claims for the file (little-endian), then the
/// file's first bytes. Those bytes are also read as a whole file.
fn run(data: &[u8]) {
    let Some((claimed, head)) = data.split_first_chunk::<8>() else {
        return;
    };
    read(head, u64::from_le_bytes(*claimed));
    read(head, head.len() as u64);
}

/// Reads the header at the start of `head`, of a `file_len`-byte file, and places every
/// tensor: each must lie inside the file.
fn read(head: &[u8], file_len: u64) {
    let Ok(data_start) = safetensors_data_start(head, file_len) else {
        return;
    };
    let Some(json) = usize::try_from(data_start)
        .ok()
        .and_then(|end| head.get(8..end))
    else {
        return;
    };
    let Ok(metadata) = safetensors_metadata(json, data_start, file_len) else {
        return;
    };
    for name in metadata.offset_keys() {
        if let Ok(Some(layout)) = safetensors_layout(&metadata, data_start, &name, "f") {
            assert!(
                layout.offset >= data_start && layout.end() <= file_len,
                "tensor `{name}` at {}..{} of a {file_len}-byte file",
                layout.offset,
                layout.end()
            );
        }
    }
}

/// Each fixture's header, with its true length as the claim.
fn seeds() -> Vec<Vec<u8>> {
    let files = crate::fixtures("tests/data/golden", |n| n.ends_with(".safetensors"));
    let demo = crate::fixtures("examples/demo/hub/neuromfa-demo/gpt-neox-h64/step0", |n| {
        n.ends_with(".safetensors")
    });
    files
        .iter()
        .chain(&demo)
        .filter_map(|file| {
            let start = safetensors_data_start(file, file.len() as u64).ok()?;
            let mut seed = (file.len() as u64).to_le_bytes().to_vec();
            seed.extend_from_slice(file.get(..usize::try_from(start).ok()?)?);
            Some(seed)
        })
        .collect()
}
