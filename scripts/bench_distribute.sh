#!/usr/bin/env bash
# Compiling on idle peers (issue 15): a cold `make -jN` of Lua 5.4 (scripts/lua_project.sh)
# on "machine one" — make, its wrappers and its peer pinned to core 0 with taskset, its own
# DISTC_DIR — (a) alone (offload = false), (b) with "machine two" (another DISTC_DIR and peer,
# pinned to core 1, in the same closed mesh on 127.0.0.1) serving its compiles, and (c) with
# distcc instead (DISTCC_HOSTS="localhost/1 127.0.0.1:PORT/1", distccd pinned to core 1,
# listening on 127.0.0.1 only). Also (d) plain gcc on core 0, for reference.
#
# Cold means: `distc flush` empties both machines' stores (and manifests) before every run.
# Lua is built without -g here: compiles with debug info stay local (docs/distribute.md).
# Printed: the median wall time of each, speedups over (a), the share of (b)'s compiles that
# ran on machine two, and the compile-protocol bytes machine one sent and received.
#
#   scripts/bench_distribute.sh                 # 3 runs of each, make -j4
#   BENCH_RUNS=5 BENCH_JOBS=6 scripts/bench_distribute.sh
#
# Every process started here is stopped by pid on exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
runs=${BENCH_RUNS:-3}
jobs=${BENCH_JOBS:-4}
base=${BASE_PORT:-31878}
for t in make gcc taskset distcc distccd python3 /usr/bin/time; do
  command -v "$t" >/dev/null 2>&1 || { echo "bench_distribute: $t is required" >&2; exit 1; }
done
[ "$(nproc --all)" -ge 2 ] || { echo "bench_distribute: needs 2 cores" >&2; exit 1; }

(cd "$root" && cargo build --release --locked --quiet -p distc --bin distc)
work="$(mktemp -d)"
mkdir -p "$work/bin" "$work/config" "$work/one" "$work/two"
# A private copy: the shared target dir may be rebuilt by someone else mid-run.
cp "$root/target/release/distc" "$work/bin/distc"
bin="$work/bin/distc"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$root/scripts/lua_project.sh" "$work/lua"
proj="$work/lua"
cflags="-O2 -Wall -DLUA_USE_LINUX"
export DISTC_CONFIG_DIR="$work/config" DISTC_AUTO_START=0
"$bin" mesh init >/dev/null 2>&1

# peer NAME CORE PORT [BOOTSTRAP]: a peer pinned to CORE (its guests' compiles inherit it).
peer() {
  local args=(peer --no-mdns --listen "/ip4/127.0.0.1/tcp/$3")
  [ $# -ge 4 ] && args+=(--bootstrap "$4")
  DISTC_DIR="$work/$1" taskset -c "$2" "$bin" "${args[@]}" </dev/null >"$work/$1.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 200); do [ -S "$work/$1/peer.sock" ] && break; sleep 0.05; done
  [ -S "$work/$1/peer.sock" ] || { echo "peer $1 did not start:" >&2; cat "$work/$1.log" >&2; exit 1; }
}
peer one 0 "$base"
id=$(DISTC_DIR="$work/one" "$bin" status --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
peer two 1 $((base + 1)) "/ip4/127.0.0.1/tcp/$base/p2p/$id"
for _ in $(seq 1 600); do
  [ -e "$work/one/peer.mesh" ] && [ "$(cat "$work/one/peer.slots" 2>/dev/null || echo 0)" != 0 ] && break
  sleep 0.05
done
[ "$(cat "$work/one/peer.slots" 2>/dev/null || echo 0)" != 0 ] ||
  { echo "bench_distribute: machine one never saw machine two's slots" >&2; exit 1; }

dport=$((base + 2))
taskset -c 1 distccd --no-detach --daemon --allow 127.0.0.1 --listen 127.0.0.1 --port "$dport" \
  --jobs 1 --log-stderr --user nobody 2>"$work/distccd.log" &
pids+=($!)
sleep 0.5

# build MODE: one cold build of Lua on core 0; prints its wall time in ms.
build() {
  make -s -C "$proj" clean
  local cc env=()
  case "$1" in
    alone) cc="$bin gcc"; env=(DISTC_DIR="$work/one" DISTC_OFFLOAD=0) ;;
    mesh) cc="$bin gcc"; env=(DISTC_DIR="$work/one" DISTC_OFFLOAD=1) ;;
    distcc) cc="distcc gcc"; env=(DISTCC_HOSTS="localhost/1 127.0.0.1:$dport/1" DISTCC_DIR="$work/distcc") ;;
    gcc) cc="gcc" ;;
  esac
  if [ "$1" = alone ] || [ "$1" = mesh ]; then
    DISTC_DIR="$work/one" "$bin" flush >/dev/null
    DISTC_DIR="$work/one" "$bin" stats --zero >/dev/null
  fi
  env "${env[@]}" /usr/bin/time -f '%e' -o "$work/time.txt" \
    taskset -c 0 make -s -C "$proj" -j"$jobs" CC="$cc" CFLAGS="$cflags" liblua.a >/dev/null 2>"$work/make.err" ||
    { cat "$work/make.err" >&2; exit 1; }
  awk '{ printf "%d\n", $1 * 1000 }' "$work/time.txt"
}

slots_json() { DISTC_DIR="$work/one" "$bin" slots --json; }

# Warm-up: compiler identities, the page cache, distcc's state.
for m in alone mesh distcc gcc; do build "$m" >/dev/null; done
: >"$work/times.tsv"
: >"$work/shares.tsv"
before=$(slots_json)
for i in $(seq 1 "$runs"); do
  # Rotate the order, so drift on a shared machine hits every mode alike.
  case $((i % 4)) in
    1) order="alone mesh distcc gcc" ;; 2) order="mesh distcc gcc alone" ;;
    3) order="distcc gcc alone mesh" ;; 0) order="gcc alone mesh distcc" ;;
  esac
  for m in $order; do
    ms=$(build "$m")
    printf '%s\t%s\t%s\n' "$m" "$i" "$ms" >>"$work/times.tsv"
    if [ "$m" = mesh ]; then
      DISTC_DIR="$work/one" "$bin" stats --json |
        python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["offloaded"], s["misses"])' >>"$work/shares.tsv"
    fi
  done
done
after=$(slots_json)
served=$(grep -c "compiled a job for a peer" "$work/two.log" || true)

python3 - "$work/times.tsv" "$work/shares.tsv" "$runs" "$jobs" "$served" "$before" "$after" <<'PY'
import json, statistics, sys
times, shares, runs, jobs, served = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
before, after = json.loads(sys.argv[6]), json.loads(sys.argv[7])
t = {}
for line in open(times):
    m, _, ms = line.split()
    t.setdefault(m, []).append(int(ms))
med = {m: statistics.median(v) for m, v in t.items()}
print(f"Lua 5.4, cold make -j{jobs}, machine one on core 0; {runs} runs each, medians (ms):")
for m, label in [("gcc", "plain gcc, core 0 alone"), ("alone", "distc, machine one alone"),
                 ("mesh", "distc, machine two serving"), ("distcc", "distcc, distccd on core 1")]:
    print(f"  {label:<30} {med[m]:>7.0f}   runs {t[m]}   speedup over distc alone {med['alone'] / med[m]:.2f}x")
off = [tuple(map(int, l.split())) for l in open(shares)]
share = sum(o for o, _ in off) / max(1, sum(n for _, n in off))
print(f"  offloaded: {share * 100:.0f} % of machine one's misses (per run: {off}); machine two's log lists {served} jobs")
sent = after["bytes_out"] - before["bytes_out"]
recv = after["bytes_in"] - before["bytes_in"]
print(f"  compile protocol over the {runs} mesh runs: {sent / runs / 1e6:.1f} MB sent, {recv / runs / 1e6:.1f} MB received per build")
print(f"  distc (machine two serving) vs distcc: {med['distcc'] / med['mesh']:.2f}x")
PY
