//! The `ETag` (or `X-Linked-Etag`) of a resolve answer: what it yields names cache files.

use neuromfa_hub::headers::etag;

use crate::{Cap, Target};

pub const TARGET: Target = Target {
    name: "etag",
    about: "ETag / X-Linked-Etag header",
    run,
    cap: Cap {
        per_byte: 4,
        fixed: 4096,
    },
    seeds: || SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect(),
};

const SEEDS: [&str; 4] = [
    "\"a3c1f0de4bd7f62e0ee1e1d2e8b2cb1f4e2c2d9f6f5e4d3c2b1a0f9e8d7c6b5a\"",
    "W/\"2b8a3b2c4f3b9d1f0e5d6c7b8a9f0e1d2c3b4a59\"",
    "\"2b8a3b2c4f3b9d1f0e5d6c7b8a9f0e1d2c3b4a59-gzip\"",
    "W/\"\"",
];

fn run(data: &[u8]) {
    let Some(text) = super::text(data) else {
        return;
    };
    let Some(tag) = etag(text) else {
        return;
    };
    assert!(
        !tag.is_empty()
            && tag
                .chars()
                .all(|c| c.is_ascii_graphic() && !"\"/\\".contains(c)),
        "{tag:?}"
    );
    assert_eq!(etag(&tag).as_deref(), Some(tag.as_str()), "not stable");
}
