#!/usr/bin/env bash
# What a stopped local peer costs a build: Lua 5.4 (scripts/lua_project.sh) with `make -j2`
# through distc, (a) with no peer at all, (b) with the machine's peer in a mesh of two and
# stopped with SIGSTOP (as Ctrl-Z leaves it). Every run is cold (empty store, manifests and
# miss records; the memoised compiler identity stays, as in scripts/bench.sh) and, in (b),
# starts without the `peer.unresponsive` marker, so each run meets the stopped peer afresh.
# The two are alternated; printed: medians of wall time, of CPU time (user + sys of make and
# everything under it: a stopped peer should cost waiting, not work) and of the paired
# differences (run i of (b) minus run i of (a), robust against a machine whose load drifts),
# and the ratio. Target (issue 10): (b) - (a) <= one budget (peer_timeout_ms, 500 ms by
# default) in total.
#
#   scripts/bench_stalled.sh              # 7 runs of each
#   BENCH_RUNS=11 scripts/bench_stalled.sh
#
# The peers run on 127.0.0.1 (scripts/run_nodes.sh 2, node1 is "this machine's" peer: the
# wrapper runs with DISTC_DIR=node1). Every process started is stopped by pid on exit (the
# stopped peer is resumed first, then stopped by scripts/stop_nodes.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
runs=${BENCH_RUNS:-7}
for t in make gcc python3 /usr/bin/time; do
  command -v "$t" >/dev/null 2>&1 || { echo "bench_stalled: $t is required" >&2; exit 1; }
done

(cd "$root" && cargo build --release --locked --quiet -p distc --bin distc)
work="$(mktemp -d)"
mkdir -p "$work/bin"
# A private copy: the shared target dir may be rebuilt by someone else mid-run.
cp "$root/target/release/distc" "$work/bin/distc"
bin="$work/bin/distc"
export DISTC_NODES_DIR="$work/nodes" DISTC_BIN="$bin" BASE_PORT="${BASE_PORT:-29878}"
stopped=""
cleanup() {
  [ -n "$stopped" ] && kill -CONT "$stopped" 2>/dev/null
  "$root/scripts/stop_nodes.sh" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT

"$root/scripts/lua_project.sh" "$work/lua"
proj="$work/lua"
"$root/scripts/run_nodes.sh" 2 >/dev/null
mine="$work/nodes/node1"
export DISTC_CONFIG_DIR="$work/nodes/config" DISTC_AUTO_START=0
# The wrapper asks its peer only while the peer has live members (peer.mesh).
for _ in $(seq 1 200); do [ -e "$mine/peer.mesh" ] && break; sleep 0.05; done
[ -e "$mine/peer.mesh" ] || { echo "bench_stalled: the two peers never formed a mesh" >&2; exit 1; }
stopped=$(cat "$work/nodes/node1.pid")
kill -STOP "$stopped"

budget_ms=${DISTC_PEER_TIMEOUT_MS:-500}

# build DISTC_DIR: one cold `make -j2`; prints its wall and CPU (user + sys) time in ms.
build() {
  rm -rf "$1/store" "$1/manifests" "$1/misses" "$1/misses.log" "$1/misses.log.old" "$1/locks" "$1/key.locks" "$1/peer.unresponsive"
  make -s -C "$proj" clean
  DISTC_DIR="$1" /usr/bin/time -f '%e %U %S' -o "$work/time.txt" \
    make -s -C "$proj" -j2 CC="$bin gcc" >/dev/null 2>"$work/make.err" ||
    { cat "$work/make.err" >&2; exit 1; }
  awk '{ printf "%d\t%d\n", $1 * 1000, ($2 + $3) * 1000 }' "$work/time.txt"
}

nopeer="$work/nopeer"
mkdir -p "$nopeer"
# Warm-up: the compiler identity memo in both dirs, the page cache for the sources.
build "$nopeer" >/dev/null
build "$mine" >/dev/null
: >"$work/times.tsv"
for i in $(seq 1 "$runs"); do
  # Alternate which one goes first, so drift on a shared machine hits both alike.
  if [ $((i % 2)) = 1 ]; then order="nopeer stalled"; else order="stalled nopeer"; fi
  for m in $order; do
    if [ "$m" = nopeer ]; then ms=$(build "$nopeer"); else ms=$(build "$mine"); fi
    printf '%s\t%s\t%s\n' "$m" "$i" "$ms" >>"$work/times.tsv"
  done
done
timeouts=$(DISTC_DIR="$mine" "$bin" stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin).get("errors_by_kind", {}).get("peer-timeout", 0))')

python3 - "$work/times.tsv" "$runs" "$budget_ms" "$timeouts" <<'PY'
import statistics, sys
path, runs, budget, timeouts = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
wall, cpu = {"nopeer": {}, "stalled": {}}, {"nopeer": {}, "stalled": {}}
for line in open(path):
    m, i, w, c = line.split()
    wall[m][int(i)], cpu[m][int(i)] = int(w), int(c)
med = lambda d: statistics.median(d.values())
a, b = med(wall["nopeer"]), med(wall["stalled"])
pairs = [wall["stalled"][i] - wall["nopeer"][i] for i in sorted(wall["nopeer"])]
d = statistics.median(pairs)
print(f"Lua 5.4, make -j2, cold, {runs} alternated runs each (medians, ms)")
print("| build | wall | CPU (user+sys) | wall of each run |")
print("|---|---:|---:|---|")
print(f"| (a) no peer | {a:.0f} | {med(cpu['nopeer']):.0f} | {' '.join(str(wall['nopeer'][i]) for i in sorted(wall['nopeer']))} |")
print(f"| (b) local peer stopped (SIGSTOP) | {b:.0f} | {med(cpu['stalled']):.0f} | {' '.join(str(wall['stalled'][i]) for i in sorted(wall['stalled']))} |")
print(f"| (b) - (a), median of the paired differences | {d:+.0f} | | {' '.join(f'{x:+d}' for x in pairs)} |")
print(f"| (b) / (a) | {b / a:.3f} | | |")
print(f"budget {budget} ms: the median paired difference is {'within' if d <= budget else 'OVER'} one budget")
print(f"peer timeouts counted by the wrappers over all (b) builds (incl. one warm-up): {timeouts}")
PY
