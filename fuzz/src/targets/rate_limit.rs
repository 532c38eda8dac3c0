//! `RateLimit`, `RateLimit-Policy` and `Retry-After`: the waits a server names, which the
//! client sleeps for and adds to instants.

use std::time::Instant;

use neuromfa_hub::headers::{rate_limit, rate_limit_policy, retry_after, MAX_NAMED_WAIT};

use crate::{Cap, Target};

pub const TARGET: Target = Target {
    name: "rate_limit",
    about: "RateLimit / RateLimit-Policy / Retry-After headers",
    run,
    cap: Cap {
        per_byte: 8,
        fixed: 4096,
    },
    seeds: || SEEDS.iter().map(|s| s.as_bytes().to_vec()).collect(),
};

const SEEDS: [&str; 6] = [
    "\"resolvers\";r=4990;t=217",
    "\"api\"; r=0; t=3",
    "\"fixed window\";\"resolvers\";q=5000;w=300",
    "\"fixed window\";\"api\";q=1000;w=300",
    "120",
    "\"api\";r=\"12\";t=18446744073709551615",
];

fn run(data: &[u8]) {
    let Some(text) = super::text(data) else {
        return;
    };
    let now = Instant::now();
    if let Some((_, window)) = rate_limit(text) {
        assert!(window.resets_in <= MAX_NAMED_WAIT, "{window:?}");
        let _ = now + window.resets_in;
    }
    if let Some((_, quota)) = rate_limit_policy(text) {
        assert!(quota.window <= MAX_NAMED_WAIT, "{quota:?}");
    }
    if let Some(wait) = retry_after(text) {
        assert!(wait <= MAX_NAMED_WAIT, "{wait:?}");
        let _ = now + wait;
    }
}
