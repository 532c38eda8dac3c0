//! A whole `.bin` archive read as the memory-mapped reader does: directory, byte order,
//! pickled state dict, then each tensor's layout, which must lie inside the file.

use neuromfa_common::torch::{pickle, zip, TorchFile};

use crate::{Cap, Target};

pub const TARGET: Target = Target {
    name: "torch_bin",
    about: "whole .bin archive: directory, data.pkl, every tensor's layout",
    run,
    // The unpickler's cap (its pickle is part of the input) and the directory's.
    cap: Cap {
        per_byte: 144,
        fixed: 4 << 20,
    },
    seeds: super::bin_fixtures,
};

fn run(data: &[u8]) {
    let Ok(file) = TorchFile::parse(data) else {
        return;
    };
    // The names, from the pickle the archive holds (parsed already, so this succeeds).
    let archive = file.archive();
    let Ok(entry) = archive.pickle_entry() else {
        return;
    };
    let from = (entry.local_header_offset as usize).min(data.len());
    let Ok(zip::EntryData::Bytes(pkl)) = archive.pickle(&data[from..]) else {
        panic!("parsed, yet its data.pkl cannot be read again");
    };
    let tensors = pickle::parse_state_dict(pkl).unwrap_or_default();
    for tensor in tensors {
        if let Ok(Some(layout)) = file.layout(data, &tensor.name, "f") {
            let end = layout_end(&layout);
            assert!(
                end.is_some_and(|end| end <= data.len() as u64),
                "tensor `{}` ends at {end:?}, past the {}-byte file",
                tensor.name,
                data.len()
            );
        }
    }
}

/// One past the last byte of `layout`, without overflow (`None` if it would).
fn layout_end(layout: &neuromfa_common::TensorLayout) -> Option<u64> {
    if layout.shape.contains(&0) {
        return Some(layout.offset);
    }
    let last = layout
        .shape
        .iter()
        .zip(&layout.strides)
        .try_fold(0u64, |sum, (&n, &stride)| {
            sum.checked_add((n as u64 - 1).checked_mul(stride as u64)?)
        })?;
    let size = layout.element.size() as u64;
    layout
        .offset
        .checked_add(last.checked_add(1)?.checked_mul(size)?)
}
