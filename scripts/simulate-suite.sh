#!/usr/bin/env bash
# The Pythia suite end to end on the virtual Hub: `neuromfa hub serve --virtual pythia
# --like-hf` (302s to a CDN, a free account's rate limits), a coordinator and WORKERS workers
# as separate processes of a release build, examples/pythia-suite.toml (only MODELS if given)
# under `duplicates = "reuse"`, every task, then the exports and the report. Prints per model
# the tasks, bytes fetched and their share of the checkpoints' bytes, the workers' Hub
# requests, fetch and compute seconds; for the run the Hub's requests per bucket and 429s,
# wall time, peak RSS of the coordinator and of a worker, and a projection to a cluster
# (8 machines x 16 cores, 1 Gbit/s each, a free account) saying which bound dominates.
#
#   scripts/simulate-suite.sh [WORKERS] [MODELS...]    # e.g. 2 pythia-14m pythia-70m-deduped
#
# Environment:
#   NEUROMFA_SIM_DIR    where state, logs and caches go (default: a new temporary directory;
#                       removed at the end unless given)
#   NEUROMFA_SIM_STEPS  a TOML list of steps instead of all 154 (e.g. "[0, 1000, 143000]")
#   NEUROMFA_SIM_SEEDS  seeds per checkpoint instead of 10
#   NEUROMFA_SIM_KILLS  N > 0: run once cleanly, then again while a seeded loop SIGKILLs the
#                       coordinator or a worker N times (restarting it), and fail unless the
#                       exports are byte-identical (as scripts/chaos.sh checks its demo sweep)
#   NEUROMFA_SIM_LEASE_SECONDS  the spec's coordinator.lease_seconds instead of its 1800
#                       (30 under kills, so that a killed worker's tasks soon go to another)
#   NEUROMFA_SIM_FETCH_MODE  the spec's hub.fetch_mode (default: the spec's, `auto`)
#   NEUROMFA_SIM_SEED   the kill loop's seed (default: random, printed)
#   NEUROMFA_SIM_FACTS  the virtual Hub's content hashes (default: its own default file; the
#                       models' hashes are precomputed there first, once)
#   NEUROMFA_SIM_LINK_MBPS  the machine's link to the Hub in MB/s (default 125: 1 Gbit/s,
#                       a cluster machine's), the virtual Hub's --throttle; workers choose
#                       ranged reads or whole files by what this link makes cheaper
#   NEUROMFA_SIM_CACHE_GB  each worker's bound on its downloaded checkpoints (default 6:
#                       one pythia-2.8b checkpoint); the caches are removed at the end
#   NEUROMFA_SIM_VIRTUAL  a virtual Hub description (docs/stand-in-hub.md) instead of the
#                       built-in `pythia` (its repos named as in examples/pythia-suite.toml)
#   NEUROMFA_BIN        a neuromfa binary to use instead of building the release one
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

workers="${1:-2}"
shift || true
models=("$@")
kills="${NEUROMFA_SIM_KILLS:-0}"
virtual="${NEUROMFA_SIM_VIRTUAL:-pythia}"

if [ -z "${NEUROMFA_BIN:-}" ]; then
    cargo build --release --quiet --bin neuromfa
    NEUROMFA_BIN="$root/target/release/neuromfa"
fi
bin="$NEUROMFA_BIN"
export NEUROMFA_BIN

if [ -n "${NEUROMFA_SIM_DIR:-}" ]; then
    work="$NEUROMFA_SIM_DIR"
    mkdir -p "$work"
else
    work=$(mktemp -d /tmp/simulate-suite.XXXXXX)
    trap 'rm -rf "$work"' EXIT
fi

if [ "$kills" -gt 0 ]; then
    # The clean run, then the same sweep under kills; their exports must be the same bytes.
    # A killed worker's leases run out before its tasks go to another: short ones here.
    export NEUROMFA_SIM_LEASE_SECONDS="${NEUROMFA_SIM_LEASE_SECONDS:-30}"
    NEUROMFA_SIM_KILLS=0 NEUROMFA_SIM_DIR="$work/clean" "$0" "$workers" "${models[@]}"
    NEUROMFA_SIM_KILLS=0 NEUROMFA_SIM_UNDER_KILLS="$kills" NEUROMFA_SIM_DIR="$work/killed" \
        "$0" "$workers" "${models[@]}"
    # As chaos.sh compares: every export but fetch.* (attempts, workers) and summary.md.
    for f in tasks.csv tasks.json aggregates.csv aggregates.json spectra.csv spectra.json; do
        if ! cmp -s "$work/clean/state/exports/$f" "$work/killed/state/exports/$f"; then
            echo "simulate-suite: exports/$f differs after $kills kills (kept in $work)" >&2
            trap - EXIT
            exit 1
        fi
    done
    echo "simulate-suite: exports byte-identical after $kills kills"
    exit 0
fi
under_kills="${NEUROMFA_SIM_UNDER_KILLS:-0}"

# --- the spec: the suite, restricted to MODELS, on the virtual Hub, under reuse ----------
model_list=""
if [ "${#models[@]}" -gt 0 ]; then
    model_list=$(IFS=,; echo "${models[*]}")
fi
spec="$work/pythia-suite.toml"
awk -v keep="$model_list" -v state="$work/state" \
    -v seeds="${NEUROMFA_SIM_SEEDS:-}" -v steps="${NEUROMFA_SIM_STEPS:-}" \
    -v lease="${NEUROMFA_SIM_LEASE_SECONDS:-}" -v fetch="${NEUROMFA_SIM_FETCH_MODE:-}" '
    BEGIN {
        n = split(keep, names, ",")
        for (i = 1; i <= n; i++) wanted[names[i]] = 1
        print "duplicates = \"reuse\""
    }
    /^\[\[models\]\]/ { in_model = 1; block = $0 "\n"; next }
    in_model && /^repo = / {
        repo = $3; gsub(/"/, "", repo); name = repo; sub(/.*\//, "", name)
        take = (n == 0 || (name in wanted) || (repo in wanted))
        if (take) printf "%s%s\n", block, $0
        next
    }
    in_model { if (take) print; next }
    /^state_dir = / { print "state_dir = \"" state "\""; next }
    /^seeds = / && seeds != "" { print "seeds = " seeds; next }
    /^steps = / && steps != "" { print "steps = " steps; next }
    /^\[hub\]/ {
        print; print "endpoint = \"@HUB@\""
        if (fetch != "") print "fetch_mode = \"" fetch "\""
        next
    }
    /^lease_seconds = / && lease != "" { print "lease_seconds = " lease; next }
    { print }
' examples/pythia-suite.toml > "$spec.in"
repos=$(awk '/^repo = / { r = $3; gsub(/"/, "", r); print r }' "$spec.in")
if [ -z "$repos" ]; then
    echo "simulate-suite: no model of examples/pythia-suite.toml matches: ${models[*]}" >&2
    exit 2
fi
names=$(for r in $repos; do echo "${r#*/}"; done | paste -sd, -)

facts_args=()
[ -n "${NEUROMFA_SIM_FACTS:-}" ] && facts_args=(--facts "$NEUROMFA_SIM_FACTS")
step_args=()
if [ -n "${NEUROMFA_SIM_STEPS:-}" ]; then
    step_args=(--steps "$(echo "$NEUROMFA_SIM_STEPS" | tr -d '[] ')")
fi

# The checkpoints' bytes (duplicates counted) per model, as the virtual Hub counts them.
: > "$work/checkpoint-bytes"
for r in $repos; do
    line=$("$bin" hub precompute --virtual "$virtual" --models "${r#*/}" "${step_args[@]}" \
        "${facts_args[@]}" --dry-run 2>/dev/null | tail -1)
    echo "$r ${line#revisions serve }" >> "$work/checkpoint-bytes"
done
# Content hashes once, ahead (a revision's first request would otherwise wait for them).
"$bin" hub precompute --virtual "$virtual" --models "$names" "${step_args[@]}" "${facts_args[@]}" \
    2> "$work/precompute.log"

export NEUROMFA_TOKEN="simulate-suite"
started=$(date +%s.%N)

# --- the Hub -----------------------------------------------------------------------------
# Emptied here, not by the redirection: that happens in the background process, after
# first_line may have read a URL left by an earlier run in the same NEUROMFA_SIM_DIR.
: > "$work/hub.out"
"$bin" hub serve --virtual "$virtual" --like-hf --models "$names" "${step_args[@]}" \
    "${facts_args[@]}" --throttle "${NEUROMFA_SIM_LINK_MBPS:-125}" \
    --listen 127.0.0.1:0 > "$work/hub.out" 2> "$work/hub.log" &
hub_pid=$!
pids=("$hub_pid")
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"/cache-*
}
trap 'cleanup; [ -z "${NEUROMFA_SIM_DIR:-}" ] && rm -rf "$work"' EXIT

# Waits until FILE's first line is there (a process prints its URL once it listens).
first_line() {
    local file=$1 pid=$2
    while ! [ -s "$file" ]; do
        kill -0 "$pid" 2>/dev/null || { echo "simulate-suite: $file: process $pid exited" >&2; return 1; }
        sleep 0.1
    done
    head -1 "$file"
}
hub=$(first_line "$work/hub.out" "$hub_pid")
sed "s|@HUB@|$hub|" "$spec.in" > "$spec"

# --- coordinator and workers, each under /usr/bin/time for its peak RSS and CPU ------------
# `time` writes "maxrss_kib user_s system_s" for each process it ran.
# Without GNU time (a minimal machine) the process runs alone and peak RSS is not measured.
timed() {
    local out=$1
    shift
    if [ -x /usr/bin/time ]; then
        exec /usr/bin/time -f '%M %U %S' -o "$out" "$@"
    fi
    exec "$@"
}
coordinator_port=0
runs=0
start_coordinator() {
    runs=$((runs + 1))
    : > "$work/coordinator.out"
    timed "$work/time-coordinator.$runs" "$bin" coordinator "$spec" \
        --listen "127.0.0.1:$coordinator_port" --exit-when-done \
        > "$work/coordinator.out" 2>> "$work/coordinator.log" &
    coordinator_pid=$!
    local url
    url=$(first_line "$work/coordinator.out" "$coordinator_pid")
    coordinator_url="$url"
    coordinator_port="${url##*:}"
}
declare -A worker_pid
start_worker() {
    local i=$1
    runs=$((runs + 1))
    timed "$work/time-worker-$i.$runs" "$bin" worker --coordinator "$coordinator_url" \
        --cache-dir "$work/cache-$i" --cache-max-gb "${NEUROMFA_SIM_CACHE_GB:-6}" \
        --give-up-after 120 \
        > /dev/null 2>> "$work/worker-$i.log" &
    worker_pid[$i]=$!
}
start_coordinator
for i in $(seq 1 "$workers"); do start_worker "$i"; done

# The process `time` runs (what a kill must hit, so that `time` reports it).
# Without GNU time the process is the one started.
child_of() {
    if [ ! -x /usr/bin/time ]; then
        echo "$1"
    elif command -v pgrep > /dev/null; then
        pgrep -P "$1" | head -1
    else
        cut -d' ' -f1 "/proc/$1/task/$1/children" 2>/dev/null
    fi
}

if [ "$under_kills" -gt 0 ]; then
    seed="${NEUROMFA_SIM_SEED:-$(od -An -N2 -tu2 /dev/urandom | tr -d ' ')}"
    echo "simulate-suite: $under_kills kills, seed $seed (again: NEUROMFA_SIM_SEED=$seed)"
    RANDOM=$seed
    done_kills=0
    while kill -0 "$coordinator_pid" 2>/dev/null && [ "$done_kills" -lt "$under_kills" ]; do
        sleep "$((2 + RANDOM % 6))"
        victim=$((RANDOM % (workers + 1)))
        if [ "$victim" -eq 0 ]; then
            child=$(child_of "$coordinator_pid") || true
            [ -n "$child" ] || continue
            kill -9 "$child" 2>/dev/null || continue
            wait "$coordinator_pid" 2>/dev/null || true
            start_coordinator
        else
            child=$(child_of "${worker_pid[$victim]}") || true
            [ -n "$child" ] || continue
            kill -9 "$child" 2>/dev/null || continue
            wait "${worker_pid[$victim]}" 2>/dev/null || true
            start_worker "$victim"
        fi
        done_kills=$((done_kills + 1))
    done
    echo "simulate-suite: $done_kills kills done"
fi

coordinator_status=0
wait "$coordinator_pid" || coordinator_status=$?
# Workers hear that the sweep is over at their next lease; one still busy is stopped.
for i in "${!worker_pid[@]}"; do
    for _ in $(seq 1 300); do
        kill -0 "${worker_pid[$i]}" 2>/dev/null || break
        sleep 0.1
    done
    child=$(child_of "${worker_pid[$i]}") || true
    [ -n "$child" ] && kill "$child" 2>/dev/null
    wait "${worker_pid[$i]}" 2>/dev/null || true
done
sweep_end=$(date +%s.%N)
rm -rf "$work"/cache-*
if [ "$coordinator_status" -ne 0 ]; then
    echo "simulate-suite: the coordinator exited with $coordinator_status (log: $work/coordinator.log)" >&2
    trap - EXIT
    cleanup
    exit 1
fi
python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1]).read().decode())' \
    "$hub/_stand-in/stats" > "$work/hub-stats.json"
report_started=$(date +%s.%N)
"$bin" report "$work/state" > /dev/null 2> "$work/report.log"
report_end=$(date +%s.%N)

python3 - "$work" "$workers" "$started" "$sweep_end" "$report_started" "$report_end" <<'EOF'
import csv, glob, json, math, os, re, sys

work, workers = sys.argv[1], int(sys.argv[2])
started, sweep_end, report_started, report_end = map(float, sys.argv[3:7])
exports = os.path.join(work, "state", "exports")
units = {"B": 1, "kB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12}
served = {}
for line in open(os.path.join(work, "checkpoint-bytes")):
    repo, rest = line.split(" ", 1)
    m = re.match(r"([\d.]+) (\w+)", rest)
    served[repo] = float(m.group(1)) * units.get(m.group(2), 1) if m else float("nan")
states = {}
for t in csv.DictReader(open(os.path.join(exports, "tasks.csv"))):
    states.setdefault(t["model"], {}).setdefault(t["state"], 0)
    states[t["model"]][t["state"]] += 1
rows = list(csv.DictReader(open(os.path.join(exports, "fetch_by_model.csv"))))
hub = json.load(open(os.path.join(work, "hub-stats.json")))

def times(pattern):
    out = []
    for path in glob.glob(os.path.join(work, pattern)):
        fields = open(path).read().split()[-3:]
        try:
            out.append((int(fields[0]), float(fields[1]) + float(fields[2])))
        except (ValueError, IndexError):
            pass
    return out

coordinator, worker = times("time-coordinator.*"), times("time-worker-*")
worker_cpu = sum(c for _, c in worker)
wall = sweep_end - started
print(f"{'model':<32} {'tasks':>6} {'done':>6} {'reused':>6} {'fetched':>10} {'of ckpts':>9} "
      f"{'requests':>8} {'fetch s':>8} {'compute s':>9}")
total_done = total_bytes = total_served = 0
for r in rows:
    model = r["model"]
    s = states.get(model, {})
    done, bytes_ = int(r["tasks"]), int(r["bytes_fetched"])
    share = bytes_ / served[model] if served.get(model) else float("nan")
    total_done += done; total_bytes += bytes_; total_served += served.get(model, 0)
    print(f"{model:<32} {sum(s.values()):>6} {done:>6} {s.get('skipped', 0):>6} "
          f"{bytes_/1e6:>8.0f}MB {share:>8.1%} {int(r['requests']):>8} "
          f"{int(r['fetch_ms'])/1000:>8.1f} {int(r['compute_ms'])/1000:>9.1f}")
print(f"hub: {hub['resolver_requests']} resolver and {hub['api_requests']} API requests, "
      f"{hub['rate_limited']} answered 429, {hub['redirects']} redirects to the CDN, "
      f"{hub['cdn_requests']} CDN requests")
print(f"run: {wall:.0f} s wall for the sweep ({workers} workers), report {report_end - report_started:.1f} s; "
      f"fetched {total_bytes/1e9:.3f} GB of {total_served/1e9:.1f} GB served")
if coordinator and worker:
    print(f"peak RSS: coordinator {max(m for m, _ in coordinator)/1024:.0f} MiB, "
          f"a worker {max(m for m, _ in worker)/1024:.0f} MiB; "
          f"workers' CPU {worker_cpu:.0f} s ({worker_cpu/max(total_done,1):.2f} s a task)")
else:
    print("peak RSS and CPU: not measured (no /usr/bin/time)")

# The cluster: 8 machines x 16 cores, 1 Gbit/s each, a free account (5,000 resolver and
# 1,000 API requests per 300 s). Each bound is the time that resource alone needs.
cores, link = 8 * 16, 8 * 125e6
bounds = {
    "compute": worker_cpu / cores,
    "bytes": total_bytes / link,
    "budget": 300 * max(hub["resolver_requests"] / 5000, hub["api_requests"] / 1000),
}
worst = max(bounds, key=bounds.get)
print("cluster projection for these models (8 x 16 cores, 8 Gbit/s, free account): "
      + ", ".join(f"{k} {v/60:.1f} min" for k, v in bounds.items())
      + f"; {worst} bounds it")
EOF
