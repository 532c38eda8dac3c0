//! The zip reader of `.bin` checkpoints: end records (ZIP64 too), central directory, local
//! headers. Read whole, as a memory map is, and in pieces, as a ranged reader asks for
//! them: both must find the same directory and the same data, and every request for more
//! bytes must make progress.

use neuromfa_common::error::TorchError;
use neuromfa_common::torch::zip::{self, CentralDirectory, DataStart, Entry, Tail};

use crate::{Cap, Target};

pub const TARGET: Target = Target {
    name: "zip",
    about: "zip archive of a .bin: end records, ZIP64, central directory, local headers",
    run,
    cap: Cap {
        per_byte: 16,
        fixed: 1 << 20,
    },
    seeds: super::bin_fixtures,
};

/// The first suffix a ranged reader fetches: short ones make it ask again.
const TAILS: [u64; 3] = [22, 4096, zip::TAIL_GUESS];

fn run(data: &[u8]) {
    let len = data.len() as u64;
    let whole = zip::parse_tail(data, 0, len);
    for tail in TAILS {
        let ranged = directory_by_ranges(data, tail);
        match (&whole, &ranged) {
            (Ok(Tail::Directory(a)), Ok(b)) => assert_eq!(a, b, "tail of {tail} bytes"),
            // Only a whole file shows the pickle that starts a legacy one.
            (Err(TorchError::Legacy), _) | (Err(_), Err(_)) => {}
            (whole, ranged) => {
                panic!("read whole: {whole:?}; read from a {tail}-byte tail: {ranged:?}")
            }
        }
    }
    if let Ok(Tail::Directory(directory)) = whole {
        for entry in &directory.entries {
            entry_data(&directory, entry, data);
        }
    }
}

/// The directory as a ranged reader gets it: the last `tail` bytes, then from wherever
/// [`zip::parse_tail`] asks, which must be earlier each time.
pub fn directory_by_ranges(data: &[u8], tail: u64) -> Result<CentralDirectory, TorchError> {
    let len = data.len() as u64;
    let mut start = len.saturating_sub(tail);
    loop {
        match zip::parse_tail(&data[start as usize..], start, len)? {
            Tail::Directory(directory) => return Ok(directory),
            Tail::NeedFrom(from) => {
                assert!(
                    from < start,
                    "asked for bytes from {from}, having them from {start}"
                );
                start = from;
            }
        }
    }
}

/// An entry's data start as a ranged reader finds it (its header span, then what the
/// header asks for, which must be more each time), checked against the whole file's.
fn entry_data(directory: &CentralDirectory, entry: &Entry, data: &[u8]) {
    let from = (entry.local_header_offset as usize).min(data.len());
    let whole = directory.data_start(entry, &data[from..]);
    let mut want = entry.header_span().end - entry.header_span().start;
    let ranged = loop {
        let end = (from as u64).saturating_add(want).min(data.len() as u64) as usize;
        match directory.data_start(entry, &data[from..end]) {
            Ok(DataStart::NeedBytes(more)) if end < data.len() => {
                assert!(more > (end - from) as u64, "asked again for {more} bytes");
                want = more;
            }
            other => break other,
        }
    };
    assert_eq!(whole, ranged, "entry `{}`", entry.name);
    if let Ok(DataStart::At(start)) = whole {
        assert!(
            start.saturating_add(entry.compressed_size) <= directory.offset,
            "entry `{}` runs into the directory",
            entry.name
        );
    }
}
