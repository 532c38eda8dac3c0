#!/usr/bin/env bash
# Benchmark: `neuromfa analyze` with 10 seeds on a synthetic checkpoint shaped exactly like
# a published model (default pythia-2.8b), with the file in page cache. Prints wall time,
# peak RSS, and how much of the checkpoint the analysis actually read.
#
#   scripts/bench-analyze.sh [MODEL] [SEEDS]      e.g. scripts/bench-analyze.sh pythia-1b 0..10
#
# Targets on a 2-core machine for pythia-2.8b: under 5 s and under 1 GiB.
set -euo pipefail
model=${1:-pythia-2.8b}
seeds=${2:-0..10}
root=$(cd "$(dirname "$0")/.." && pwd)
data=${NEUROMFA_BENCH_DIR:-$root/target/bench-data}
ckpt=$data/$model/step0

cargo build --release --quiet --manifest-path "$root/Cargo.toml"
bin=$root/target/release/neuromfa

if [ ! -f "$ckpt/model.safetensors" ]; then
  "$bin" synth --like "$model" "$ckpt"
fi
# In page cache, as the target says: read the file once.
cat "$ckpt/model.safetensors" > /dev/null

python3 - "$bin" "$ckpt" "$seeds" <<'PY'
import resource, subprocess, sys, time
binary, ckpt, seeds = sys.argv[1:4]
start = time.monotonic()
run = subprocess.run([binary, "analyze", ckpt, "--seeds", seeds, "--json"],
                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
wall = time.monotonic() - start
if run.returncode != 0:
    sys.exit(f"analyze failed: {run.stderr}")
peak_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
print(f"checkpoint: {ckpt}")
print(f"seeds: {seeds}")
print(f"wall time: {wall:.2f} s")
print(f"peak RSS: {peak_kib / 1024:.0f} MiB")
print(run.stderr.strip().splitlines()[-1])
PY
