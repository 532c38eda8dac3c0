#!/usr/bin/env bash
# The long chaos run (tests/chaos.rs, harness in tests/support/chaos.rs): the demo sweep,
# 2 models x 8 steps x 10 seeds, run by real processes of a release build (a loopback Hub
# throttled so that the kills land before the sweep ends, a coordinator, 3 workers) while
# a seeded loop SIGKILLs the coordinator or a worker and restarts it, KILLS times (default
# 100), some kills aimed at ranged fetches and full downloads, some at the coordinator's
# commits. It prints the seed first, then the kills survived by phase, the tasks
# recomputed and the wall time, and fails unless the SQLite state is consistent and the
# exports equal a clean run's byte for byte.
#
#   scripts/chaos.sh [KILLS] [SEED]     # a fresh seed unless one is given
#
# NEUROMFA_CHAOS_WORKERS (2-4, default 3) and NEUROMFA_CHAOS_THROTTLE (MB/s, default
# 25/KILLS kept within 0.1-1: 0.25 for 100 kills) change the cluster; a failed run keeps
# its logs and state in the directory it names.
set -euo pipefail
cd "$(dirname "$0")/.."

export NEUROMFA_CHAOS_KILLS="${1:-${NEUROMFA_CHAOS_KILLS:-100}}"
seed="${2:-${NEUROMFA_CHAOS_SEED:-}}"
if [ -z "$seed" ]; then
    seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
fi
export NEUROMFA_CHAOS_SEED="$seed"
echo "chaos: seed $NEUROMFA_CHAOS_SEED, $NEUROMFA_CHAOS_KILLS kills (again: scripts/chaos.sh $NEUROMFA_CHAOS_KILLS $NEUROMFA_CHAOS_SEED)"

cargo test --release --test chaos --no-run
started=$(date +%s)
cargo test --release --test chaos long_run_survives_random_kills -- --ignored --exact --nocapture
echo "chaos: passed with seed $NEUROMFA_CHAOS_SEED in $(( $(date +%s) - started )) s (clean run included)"
