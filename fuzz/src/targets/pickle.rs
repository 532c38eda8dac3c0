//! The restricted unpickler, on `data.pkl` alone.

use neuromfa_common::torch::pickle::{self, MAX_DIMS};
use neuromfa_common::torch::{zip, Archive};

use crate::{Cap, Target};

pub const TARGET: Target = Target {
    name: "pickle",
    about: "restricted unpickler (data.pkl of a .bin)",
    run,
    // The stack and memo hold a value (24 bytes, twice when their vectors grow) for each
    // one-byte opcode, and copies of shared values are bounded by the unpickler itself.
    cap: Cap {
        per_byte: 128,
        fixed: 2 << 20,
    },
    seeds,
};

fn run(data: &[u8]) {
    let Ok(tensors) = pickle::parse_state_dict(data) else {
        return;
    };
    for tensor in tensors {
        assert!(tensor.shape.len() == tensor.strides.len() && tensor.shape.len() <= MAX_DIMS);
    }
}

/// Each fixture archive's `data.pkl`.
fn seeds() -> Vec<Vec<u8>> {
    super::bin_fixtures()
        .iter()
        .filter_map(|bin| data_pkl(bin))
        .collect()
}

/// The `data.pkl` of the archive `bin`, if it has one.
fn data_pkl(bin: &[u8]) -> Option<Vec<u8>> {
    let Ok(zip::Tail::Directory(directory)) = zip::parse_tail(bin, 0, bin.len() as u64) else {
        return None;
    };
    let archive = Archive::new(directory).ok()?;
    let entry = archive.pickle_entry().ok()?;
    let from = usize::try_from(entry.local_header_offset).ok()?;
    match archive.pickle(bin.get(from..)?).ok()? {
        zip::EntryData::Bytes(pickle) => Some(pickle.to_vec()),
        zip::EntryData::NeedBytes(_) => None,
    }
}
