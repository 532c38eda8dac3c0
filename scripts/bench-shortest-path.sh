#!/usr/bin/env bash
# Benchmark: `neuromfa analyze --distance shortest-path` (paper Eq. 1, exact) with 10 seeds on
# synthetic checkpoints shaped exactly like published models, files in page cache.
#
#   1. pythia-2.8b at the defaults (λ = 1, γ = 5, T = 150: gaps 1 and 2): wall time, peak RSS.
#      Target on 2 cores: under 30 s and under 2 GiB.
#   2. pythia-2.8b at T = 300 (gaps up to 3: whole matrices are crossed): the same figures.
#   3. pythia-160m: the min-plus engine against the plain Dijkstra over the full graph (hidden
#      `--dijkstra`), same seeds; checks the two give identical results and prints the speed-up.
#
#   scripts/bench-shortest-path.sh [SEEDS] [BASELINE_SEEDS]      defaults: 0..10 0..10
#
# A checkpoint is taken from $NEUROMFA_BENCH_DIR/<model>/step0 when it is there (read only),
# else from this checkout's target/bench-data, where it is synthesised when missing.
set -euo pipefail
seeds=${1:-0..10}
baseline_seeds=${2:-0..10}
root=$(cd "$(dirname "$0")/.." && pwd)
own=$root/target/bench-data

cargo build --release --quiet --manifest-path "$root/Cargo.toml"
bin=$root/target/release/neuromfa

checkpoint() {
  local model=$1 dir
  for dir in ${NEUROMFA_BENCH_DIR:+"$NEUROMFA_BENCH_DIR"} "$own"; do
    if [ -f "$dir/$model/step0/model.safetensors" ]; then
      echo "$dir/$model/step0"
      return
    fi
  done
  "$bin" synth --like "$model" "$own/$model/step0" >&2
  echo "$own/$model/step0"
}
big=$(checkpoint pythia-2.8b)
small=$(checkpoint pythia-160m)
# In page cache, as the target says: read the files once.
cat "$big/model.safetensors" "$small/model.safetensors" > /dev/null

python3 - "$bin" "$big" "$small" "$seeds" "$baseline_seeds" <<'PY'
import json, os, subprocess, sys, time
binary, big, small, seeds, baseline_seeds = sys.argv[1:6]

def load():
    return ", ".join(f"{v:.2f}" for v in os.getloadavg())

def measured(label, ckpt, seed_range, *extra):
    args = [binary, "analyze", ckpt, "--seeds", seed_range, "--json",
            "--distance", "shortest-path", *extra]
    start = time.monotonic()
    out_path = f"/tmp/neuromfa-bench-sp-{os.getpid()}.json"
    with open(out_path, "w") as out_file:
        child = subprocess.Popen(args, stdout=out_file, stderr=subprocess.PIPE, text=True)
        err = child.stderr.read()
        # This child's own peak RSS (RUSAGE_CHILDREN would be the peak of all runs so far).
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.monotonic() - start
    with open(out_path) as f:
        out = f.read()
    os.unlink(out_path)
    if status != 0:
        sys.exit(f"{label}: analyze failed: {err}")
    read_line = err.strip().splitlines()[-1] if err.strip() else ""
    print(f"{label}: wall {wall:.2f} s, peak RSS {usage.ru_maxrss / 1024:.0f} MiB "
          f"(load before: {load_before})")
    print(f"    {read_line}")
    return wall, json.loads(out)

print(f"seeds {seeds}; load average at start: {load()}")
load_before = load()
measured(f"pythia-2.8b, λ=1 γ=5 T=150", big, seeds)
load_before = load()
measured(f"pythia-2.8b, λ=1 γ=5 T=300", big, seeds, "--threshold", "300")
load_before = load()
fast, ours = measured(f"pythia-160m min-plus, seeds {baseline_seeds}", small, baseline_seeds)
load_before = load()
slow, reference = measured(f"pythia-160m Dijkstra, seeds {baseline_seeds}", small,
                           baseline_seeds, "--dijkstra")
same = ours["results"] == reference["results"] and ours["aggregates"] == reference["aggregates"]
print(f"pythia-160m: results identical: {'yes' if same else 'NO'}; "
      f"speed-up over Dijkstra: {slow / fast:.1f}x")
print(f"load average at end: {load()}")
if not same:
    sys.exit(1)
PY
