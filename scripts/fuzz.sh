#!/usr/bin/env bash
# Fuzzes one parser with libFuzzer, coverage-guided (docs/fuzzing.md). The driver,
# fuzz/libfuzzer, is built by plain cargo on the stable toolchain with the
# SanitizerCoverage flags cargo-fuzz passes (all stable), overflow and debug checks on; its
# counting allocator aborts on any allocation past the target's cap. Runs under nice 19.
#
#   scripts/fuzz.sh --list                  # the targets
#   scripts/fuzz.sh TARGET [RUNS] [FLAGS...] # RUNS inputs (default 10,000,000); FLAGS go to
#                                            # libFuzzer, e.g. -max_total_time=3600
#
# The corpus grows in target/fuzz/corpus/TARGET (seeded from the fixtures and from
# fuzz/regressions/TARGET); a crash, a hang over 1 s or an allocation past the cap leaves
# its input in target/fuzz/artifacts/TARGET/. To keep one as a regression input, copy it to
# fuzz/regressions/TARGET/ under a name that says what it is, and add a named test to
# fuzz/tests/regressions.rs.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "--list" ] || [ $# -eq 0 ]; then
    cargo run --quiet -p neuromfa-fuzz --bin fuzz-seeds -- --list
    exit 0
fi
target="$1"
runs="${2:-10000000}"
shift $(( $# >= 2 ? 2 : 1 ))

host=$(rustc -vV | sed -n 's/^host: //p')
# The flags cargo-fuzz passes for libFuzzer's coverage, all accepted by stable rustc.
# Given with --target, they reach our code and its dependencies but not build scripts.
# Set for the driver's build only: the seeds are written by a plain build.
coverage="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
RUSTFLAGS="$coverage" nice -n 19 cargo build --release --quiet \
    --manifest-path fuzz/libfuzzer/Cargo.toml --target "$host" --target-dir target/fuzz/build
driver="target/fuzz/build/$host/release/neuromfa-libfuzzer"

seeds="target/fuzz/seeds/$target"
corpus="target/fuzz/corpus/$target"
artifacts="target/fuzz/artifacts/$target"
rm -rf "$seeds"
mkdir -p "$corpus" "$artifacts"
cargo run --quiet -p neuromfa-fuzz --bin fuzz-seeds -- "$target" "$seeds"

started=$(date +%s)
log="target/fuzz/$target.log"
set +e
NEUROMFA_FUZZ_TARGET="$target" nice -n 19 "$driver" "$corpus" "$seeds" \
    -runs="$runs" -timeout=1 -rss_limit_mb=4096 -print_final_stats=1 \
    -artifact_prefix="$artifacts/" "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
executions=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
echo "fuzz: $target: ${executions:-?} executions in $(( $(date +%s) - started )) s, exit $status"
exit "$status"
