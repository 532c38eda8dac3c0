//! Seeded mutations of a corpus, for the bounded runs `cargo test` makes of every target:
//! the same inputs on every machine, made the way a fuzzer's first generations are (bit
//! flips, boundary integers written over lengths and counts, bytes inserted, dropped,
//! repeated or spliced from another input).

use rand::{RngExt, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// Values that sit on the edges parsers check: zero, one, signs, widths, 2^40.
const INTERESTING: [u64; 10] = [
    0,
    1,
    0x7F,
    0xFF,
    0xFFFF,
    0x7FFF_FFFF,
    0xFFFF_FFFF,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];

/// `count` inputs: first each seed as it is, then mutants of seeds drawn at random.
pub fn inputs(seeds: &[Vec<u8>], count: usize, seed: u64) -> impl Iterator<Item = Vec<u8>> + '_ {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
    (0..count).map(move |i| match seeds.get(i) {
        Some(input) => input.clone(),
        None if seeds.is_empty() => Vec::new(),
        None => {
            let mut input = seeds[rng.random_range(0..seeds.len())].clone();
            for _ in 0..rng.random_range(1..=4) {
                mutate(&mut input, seeds, &mut rng);
            }
            input
        }
    })
}

fn mutate(input: &mut Vec<u8>, seeds: &[Vec<u8>], rng: &mut Xoshiro256PlusPlus) {
    let len = input.len();
    let at = if len == 0 {
        0
    } else {
        rng.random_range(0..len)
    };
    match rng.random_range(0..7) {
        0 if len > 0 => input[at] ^= 1 << rng.random_range(0..8),
        1 if len > 0 => input[at] = [0, b'"', b'9', b'-', 0x80, 0xFF][rng.random_range(0..6)],
        2 => {
            // An interesting integer over 1, 2, 4 or 8 bytes, little-endian: a length or count.
            let value = INTERESTING[rng.random_range(0..INTERESTING.len())].to_le_bytes();
            let width = [1, 2, 4, 8][rng.random_range(0..4)];
            let end = (at + width).min(len);
            input[at..end].copy_from_slice(&value[..end - at]);
        }
        3 => {
            // The same integer as decimal text: a length or count in JSON, TOML or CSV.
            let value = INTERESTING[rng.random_range(0..INTERESTING.len())].to_string();
            let end = (at + rng.random_range(0..4)).min(len);
            input.splice(at..end, value.into_bytes());
        }
        4 if len > 0 => {
            let end = (at + rng.random_range(1..=16)).min(len);
            input.drain(at..end);
        }
        5 if len > 0 => {
            // A chunk repeated: deeper nesting, more entries.
            let end = (at + rng.random_range(1..=32)).min(len);
            let chunk = input[at..end].to_vec();
            for _ in 0..rng.random_range(1..=8) {
                input.splice(at..at, chunk.iter().copied());
            }
        }
        _ => {
            let other = &seeds[rng.random_range(0..seeds.len())];
            if !other.is_empty() {
                let from = rng.random_range(0..other.len());
                let end = (from + rng.random_range(1..=64)).min(other.len());
                input.splice(at..at, other[from..end].iter().copied());
            }
        }
    }
}
