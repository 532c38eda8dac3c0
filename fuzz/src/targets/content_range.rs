//! The `Content-Range` of a ranged answer: what parses must print back to itself.

use neuromfa_hub::headers::{content_range, ContentRange};

use crate::{Cap, Target};

pub const TARGET: Target = Target {
    name: "content_range",
    about: "Content-Range header",
    run,
    cap: Cap {
        per_byte: 4,
        fixed: 4096,
    },
    seeds: || SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect(),
};

const SEEDS: [&str; 5] = [
    "bytes 0-65535/438416",
    "bytes 438408-438415/438416",
    "bytes 100-199/*",
    "bytes */438416",
    "bytes 0-18446744073709551614/18446744073709551615",
];

fn run(data: &[u8]) {
    // Header values that are not visible ASCII never reach the parser (`to_str` fails).
    let Some(text) = super::text(data) else {
        return;
    };
    let Some(range) = content_range(text) else {
        return;
    };
    let ContentRange {
        first,
        last,
        complete_length,
    } = range;
    assert!(
        first <= last && complete_length.is_none_or(|n| last < n),
        "{range:?}"
    );
    let total = complete_length.map_or("*".to_string(), |n| n.to_string());
    let printed = format!("bytes {first}-{last}/{total}");
    assert_eq!(content_range(&printed), Some(range), "{printed}");
    // A range ending at the last byte 2^64 - 1 has no exclusive end to compare with.
    if let Some(end) = last.checked_add(1) {
        assert!(range.is(&(first..end), complete_length.unwrap_or(end)));
    }
}
