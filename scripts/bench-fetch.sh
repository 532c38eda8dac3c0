#!/usr/bin/env bash
# Benchmark: fetching a checkpoint by byte ranges (only what the seeds read) against the full
# download, through a loopback Hub throttled to stand in for a network.
#
#   scripts/bench-fetch.sh [MBPS] [MODEL]      default: 100 MB/s, pythia-1b (1.9 GiB, f16)
#
# Synthesises MODEL under target/bench-data/hub (reused if present) and a copy of it written
# as PyTorch's pytorch_model.bin (repo EleutherAI/MODEL-bin, by scripts/make-bin-fixtures.py
# --convert), serves both with `neuromfa hub serve --throttle MBPS`, then measures with the hub
# crate's fetch_bench example: safetensors by ranges and full, the .bin by ranges, for 1 seed
# and for 10 seeds (layer_sample 32), each full download into a fresh HF cache, each REPEAT
# times (default 3; the median is compared). Prints bytes downloaded against the file size,
# requests and wall time.
# Targets: ranges <= 2 % of the file for one seed, <= 10 % for ten, >= 10x faster than full
# at ten seeds; the .bin's ranged share and time within 10 % of the safetensors case.
#
# With taskset and two or more CPUs, the Hub runs on CPU 1 and the fetches on CPU 0: a real
# Hub does not take the worker's CPU, and tens of thousands of small requests cost the server as
# much CPU as the client, so sharing cores would measure the stand-in as much as the worker.
#
#   scripts/bench-fetch.sh --like-hf [MBPS] [MODEL]
#
# The same checkpoint through the stand-in's real-Hub profile (302 to a signed CDN URL, a free
# account's rate limits, RateLimit headers) at round trips of ${RTTS:-0 30 100} ms: ten seeds
# by ranges (REPEAT times) and the whole file (once), with the Resolver and API requests each
# took and the bytes against the file. Targets at 30 ms: at most 5 Resolver and 3 API
# requests per checkpoint, at most 15 % of the file's bytes, ranges at least 5x faster than
# the whole file.
set -euo pipefail
like_hf=0
if [ "${1:-}" = "--like-hf" ]; then
  like_hf=1
  shift
fi
mbps=${1:-100}
model=${2:-pythia-1b}
repeat=${REPEAT:-3}
root=$(cd "$(dirname "$0")/.." && pwd)
data=${NEUROMFA_BENCH_DIR:-$root/target/bench-data}
hub_dir=$data/hub
repo=EleutherAI/$model
ckpt=$hub_dir/$repo/step0

cargo build --release --quiet --manifest-path "$root/Cargo.toml"
cargo build --release --quiet --manifest-path "$root/Cargo.toml" -p neuromfa-hub --example fetch_bench
bin=$root/target/release/neuromfa
bench=$root/target/release/examples/fetch_bench

if [ ! -f "$ckpt/model.safetensors" ]; then
  "$bin" synth --like "$model" "$ckpt"
fi
bin_repo=$repo-bin
bin_ckpt=$hub_dir/$bin_repo/step0
if [ "$like_hf" = 0 ] && [ ! -f "$bin_ckpt/pytorch_model.bin" ]; then
  python3 "$root/scripts/make-bin-fixtures.py" --convert "$ckpt" "$bin_ckpt"
fi
# Every path reads the served files from page cache, so disk speed does not decide.
cat "$ckpt/model.safetensors" "$bin_ckpt/pytorch_model.bin" > /dev/null 2>&1 || true

# The fetcher refuses a loopback endpoint that proxy settings would capture.
export NO_PROXY=127.0.0.1,localhost no_proxy=127.0.0.1,localhost

if [ "$like_hf" = 1 ]; then
  work=$(mktemp -d "$data/fetch-bench.XXXXXX")
  hub_pid=
  cleanup() {
    [ -n "$hub_pid" ] && kill "$hub_pid" 2> /dev/null || true
    rm -rf "$work"
  }
  trap cleanup EXIT
  hub_cpu=() worker_cpu=()
  if command -v taskset > /dev/null && [ "$(nproc)" -ge 2 ]; then
    hub_cpu=(taskset -c 1) worker_cpu=(taskset -c 0)
  fi
  results=$work/results.txt
  for rtt in ${RTTS:-0 30 100}; do
    # The Hub prints its URL, then the CDN's, on stdout once it listens.
    RUST_LOG=warn "${hub_cpu[@]}" "$bin" hub serve "$hub_dir" --listen 127.0.0.1:0 --like-hf \
      --plan free --latency-ms "$rtt" --throttle "$mbps" > "$work/hub.out" 2> "$work/hub.log" &
    hub_pid=$!
    for _ in $(seq 300); do
      [ "$(wc -l < "$work/hub.out")" -ge 2 ] && break
      sleep 0.1
    done
    endpoint=$(head -1 "$work/hub.out")
    [ -n "$endpoint" ] || { cat "$work/hub.log"; exit 1; }
    echo "== round trip $rtt ms: the Hub at $endpoint, $mbps MB/s, a free account's limits"
    # The stand-in hashes the file on its first resolve (seconds): not a cost of any run.
    "${worker_cpu[@]}" "$bench" --endpoint "$endpoint" --revision step0 --layer-sample 32 \
      --repo "$repo" --seeds 0..1 --cache "$work/warm-up" --plan-gaps 4096 > /dev/null
    rm -rf "$work/warm-up"
    for mode in $(yes ranges | head -n "$repeat") full; do
      cache=$work/cache-$rtt-$mode
      "${worker_cpu[@]}" "$bench" --endpoint "$endpoint" --revision step0 --layer-sample 32 \
        --repo "$repo" --seeds 0..10 --mode "$mode" --cache "$cache" \
        | sed "s/^fetch /fetch rtt=$rtt /" | tee -a "$results"
      rm -rf "$cache"
    done
    python3 -c 'import json, sys, urllib.request
s = json.load(urllib.request.urlopen(sys.argv[1] + "/_stand-in/stats"))
print("  stand-in: 429s %d, CDN requests %d, Authorization at the CDN %d"
      % (s["rate_limited"], s["cdn_requests"], s["cdn_authorization"]))' "$endpoint"
    kill "$hub_pid"
    wait "$hub_pid" 2> /dev/null || true
    hub_pid=
  done
  python3 - "$results" "$mbps" <<'PY'
import sys
runs = {}
for line in open(sys.argv[1]):
    kind, *fields = line.split()
    if kind != "fetch":
        continue
    kv = dict(f.split("=", 1) for f in fields)
    runs.setdefault((int(kv["rtt"]), kv["mode"]), []).append(kv)
print(f"\n{'rtt':>5} {'mode':7} {'downloaded':>12} {'of file':>8} {'requests':>9} {'resolvers':>9} "
      f"{'api':>4} {'wall (median)':>14}  runs")
# The median run (the lower of the middle two for an even count) gives every column.
median = {k: sorted(rs, key=lambda r: float(r["wall_s"]))[(len(rs) - 1) // 2]
          for k, rs in runs.items()}
wall = {k: float(r["wall_s"]) for k, r in median.items()}
for (rtt, mode), r in sorted(median.items()):
    print(f"{rtt:>3}ms {mode:7} {int(r['bytes']) / 1e6:>9.1f} MB {100 * float(r['share']):>7.2f}% "
          f"{r['requests']:>9} {r['resolvers']:>9} {r['api']:>4} {wall[(rtt, mode)]:>13.2f}s  "
          + " ".join(f"{float(x['wall_s']):.2f}" for x in runs[(rtt, mode)]))
for rtt in sorted({k[0] for k in runs}):
    if (rtt, "full") in wall and (rtt, "ranges") in wall:
        print(f"{rtt} ms: ranges {wall[(rtt, 'full')] / wall[(rtt, 'ranges')]:.1f}x faster than the whole file")
if (30, "ranges") in runs and (30, "full") in wall:
    r = median[(30, "ranges")]
    ok = lambda good: "met" if good else "MISSED"
    res, api, share = int(r["resolvers"]), int(r["api"]), 100 * float(r["share"])
    speedup = wall[(30, "full")] / wall[(30, "ranges")]
    print(f"target at 30 ms, Resolver requests <= 5: {res} {ok(res <= 5)}")
    print(f"target at 30 ms, API requests <= 3: {api} {ok(api <= 3)}")
    print(f"target at 30 ms, bytes <= 15 % of the file: {share:.2f} % {ok(share <= 15)}")
    print(f"target at 30 ms, ranges >= 5x faster than the whole file: {speedup:.1f}x {ok(speedup >= 5)}")
PY
  exit 0
fi
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
endpoint=http://127.0.0.1:$port
work=$(mktemp -d "$data/fetch-bench.XXXXXX")
hub_cpu=() worker_cpu=()
if command -v taskset > /dev/null && [ "$(nproc)" -ge 2 ]; then
  hub_cpu=(taskset -c 1) worker_cpu=(taskset -c 0)
  echo "== the Hub on CPU 1, the fetches on CPU 0"
fi
RUST_LOG=warn "${hub_cpu[@]}" "$bin" hub serve "$hub_dir" --listen "127.0.0.1:$port" --throttle "$mbps" \
  > "$work/hub.log" 2>&1 &
hub_pid=$!
cleanup() {
  kill "$hub_pid" 2> /dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do
  if (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null; then break; fi
  sleep 0.1
done

common=(--endpoint "$endpoint" --revision step0 --layer-sample 32)
# The first request makes the server hash the file (seconds); the plans are worth seeing anyway.
echo "== plans (no weights downloaded)"
for seeds in 0..1 0..10; do
  "$bench" "${common[@]}" --repo "$repo" --seeds "$seeds" --cache "$work/plan" \
    --plan-gaps 0,256,1024,4096,16384,65536
  "$bench" "${common[@]}" --repo "$bin_repo" --seeds "$seeds" --cache "$work/plan-bin" \
    --plan-gaps 4096
done

echo "== fetches through the Hub at $mbps MB/s"
results=$work/results.txt
for seeds in 0..1 0..10; do
  for run in "safetensors ranges $repo" "pytorch-bin ranges $bin_repo" "safetensors full $repo"; do
    read -r format mode name <<< "$run"
    for _ in $(seq "$repeat"); do
      cache=$work/cache-$mode-$seeds
      "${worker_cpu[@]}" "$bench" "${common[@]}" --repo "$name" --seeds "$seeds" --mode "$mode" \
        --cache "$cache" --analyze | sed "s/^fetch /fetch format=$format /" | tee -a "$results"
      rm -rf "$cache"
    done
  done
done

python3 - "$results" "$mbps" <<'PY'
import statistics
import sys
runs, alphas = {}, {}
for line in open(sys.argv[1]):
    kind, *fields = line.split()
    kv = dict(f.split("=", 1) for f in fields)
    if kind == "fetch":
        n = len(range(*map(int, kv["seeds"].split(".."))))
        runs.setdefault((kv["format"], kv["mode"], n), []).append(kv)
    elif kind == "analyze":
        alphas.setdefault(kv["seeds"], set()).add(kv["alpha0_first"])
mbps = float(sys.argv[2])
print(f"\n{'format':12} {'mode':7} {'seeds':6} {'downloaded':>12} {'of file':>8} {'requests':>9} "
      f"{'wall (median)':>14}  runs")
wall, share = {}, {}
for key, rs in sorted(runs.items()):
    fmt, mode, n = key
    walls = sorted(float(r["wall_s"]) for r in rs)
    wall[key] = statistics.median(walls)
    # Bytes and requests of the median run (the lower of the middle two for an even count).
    mid = sorted(rs, key=lambda r: float(r["wall_s"]))[(len(rs) - 1) // 2]
    share[key] = 100 * float(mid["share"])
    print(f"{fmt:12} {mode:7} {n:<6} {int(mid['bytes']) / 1e6:>9.1f} MB {share[key]:>7.2f}% "
          f"{mid['requests']:>9} {wall[key]:>13.2f}s  " + " ".join(f"{w:.2f}" for w in walls))
file_bytes = int(runs[("safetensors", "full", 1)][0]["file_bytes"])
print(f"file: {file_bytes / 1e6:.1f} MB; its transfer alone at {mbps:g} MB/s takes "
      f"{file_bytes / (mbps * 1e6):.1f} s")
st = lambda n: ("safetensors", "ranges", n)
speedup = wall[("safetensors", "full", 10)] / wall[st(10)]
ok = lambda good: "met" if good else "MISSED"
one, ten = share[st(1)], share[st(10)]
print(f"target ranges, 1 seed  <= 2 %:   {one:.2f} % {ok(one <= 2)}")
print(f"target ranges, 10 seeds <= 10 %: {ten:.2f} % {ok(ten <= 10)}")
print(f"target full/ranges at 10 seeds >= 10x (medians): {speedup:.1f}x {ok(speedup >= 10)}")
for n in (1, 10):
    b = ("pytorch-bin", "ranges", n)
    share_ratio, wall_ratio = share[b] / share[st(n)], wall[b] / wall[st(n)]
    print(f"target .bin against safetensors, {n} seed(s), within 10 %: share {share[b]:.2f} % "
          f"({share_ratio:.3f}x) {ok(share_ratio <= 1.1)}, time {wall[b]:.2f} s "
          f"({wall_ratio:.3f}x) {ok(wall_ratio <= 1.1)}")
same = all(len(v) == 1 for v in alphas.values())
print(f"alpha0 of the first seed, every run and format: {'identical' if same else 'DIFFERENT'} "
      f"{ {k: sorted(v) for k, v in alphas.items()} }")
PY
