#!/usr/bin/env bash
# The long partition run (tests/partitions.rs, harness in tests/support/partition.rs): the
# demo sweep, 2 models x 8 steps x 10 seeds, by real processes of the test build (a
# throttled loopback Hub, a coordinator, 3 workers), each worker dialling the coordinator
# through a fault-injecting proxy of its own, while a seeded loop puts EVENTS faults on one
# link or on all of them and heals them: partitions shorter and longer than a lease, lost
# requests, lost answers, delays, random cuts, every connection cut at once, the
# coordinator cut off from every worker. It prints the seed first, then the events by kind,
# the connections cut, the tasks recomputed and the repeats refused, and fails unless the
# SQLite state is consistent, every task is counted once, and the exports equal a clean
# run's byte for byte.
#
#   scripts/partition.sh [EVENTS] [SEED]     # 40 events and a fresh seed unless given
set -euo pipefail
cd "$(dirname "$0")/.."

export NEUROMFA_PARTITION_EVENTS="${1:-${NEUROMFA_PARTITION_EVENTS:-40}}"
seed="${2:-${NEUROMFA_PARTITION_SEED:-}}"
if [ -z "$seed" ]; then
    seed=$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')
fi
export NEUROMFA_PARTITION_SEED="$seed"
echo "partition: seed $seed, $NEUROMFA_PARTITION_EVENTS events (again: scripts/partition.sh $NEUROMFA_PARTITION_EVENTS $seed)"

cargo test --test partitions --no-run
started=$(date +%s)
cargo test --test partitions long_run_survives_random_partitions -- --ignored --exact --nocapture
echo "partition: passed with seed $seed in $(( $(date +%s) - started )) s (clean run included)"
