//! libFuzzer over the target `NEUROMFA_FUZZ_TARGET` names (`fuzz-seeds --list`), under its
//! allocation cap. Run through `scripts/fuzz.sh`.

#![no_main]

use std::sync::OnceLock;

use neuromfa_fuzz::{alloc::Counting, Target};

#[global_allocator]
static ALLOC: Counting = Counting;

fn chosen() -> &'static Target {
    static CHOSEN: OnceLock<&'static Target> = OnceLock::new();
    CHOSEN.get_or_init(|| {
        let name = std::env::var("NEUROMFA_FUZZ_TARGET").unwrap_or_default();
        neuromfa_fuzz::target(&name).unwrap_or_else(|| {
            let names: Vec<&str> = neuromfa_fuzz::targets::ALL.iter().map(|t| t.name).collect();
            eprintln!(
                "NEUROMFA_FUZZ_TARGET={name:?} is none of: {}",
                names.join(", ")
            );
            std::process::exit(2)
        })
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    neuromfa_fuzz::check(chosen(), data);
});
