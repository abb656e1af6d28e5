#!/usr/bin/env bash
# Compiling on idle peers (issue 15): a cold `make -jN` of Lua 5.4, zstd 1.5.6 and LevelDB 1.22
# (C, C and C++; scripts/lua_project.sh, zstd_project.sh, leveldb_project.sh) on "machine one"
# — make, its wrappers and its peer pinned to core 0 with taskset, its own DISTC_DIR — (a)
# alone (offload = false), (b) with "machine two" (another DISTC_DIR and peer, pinned to
# core 1, in the same closed mesh on 127.0.0.1) serving its compiles, and (c) with distcc
# instead (DISTCC_HOSTS="localhost/1 127.0.0.1:PORT/1", distccd pinned to core 1, listening
# on 127.0.0.1 only, its jobs at nice 10 like distc's guests). Also (d) plain gcc on core 0,
# for reference.
#
# Cold means: `distc flush` empties both machines' stores (and manifests) before every run.
# Built without -g by default; BENCH_EXTRA_FLAGS="-g" adds debug info (offloaded with gcc as
# directives-only input, docs/distribute.md) to every compile of every mode.
# Printed per project: the median wall time of each mode, speedups over (a), the share of
# (b)'s compiles that ran on machine two, the compile-protocol bytes machine one sent and
# received per build, and machine two's median time per job; then the sums over the three.
#
#   scripts/bench_distribute.sh                 # 3 runs of each, make -j4, all three projects
#   BENCH_RUNS=5 BENCH_JOBS=6 BENCH_PROJECTS="lua zstd" scripts/bench_distribute.sh
#   BENCH_EXTRA_FLAGS="-g" scripts/bench_distribute.sh   # the same with debug info
#
# Every process started here is stopped by pid on exit.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
runs=${BENCH_RUNS:-3}
jobs=${BENCH_JOBS:-4}
projects=${BENCH_PROJECTS:-lua zstd leveldb}
extra=${BENCH_EXTRA_FLAGS:-}
base=${BASE_PORT:-31878}
for t in make gcc g++ taskset distcc distccd python3 /usr/bin/time; do
  command -v "$t" >/dev/null 2>&1 || { echo "bench_distribute: $t is required" >&2; exit 1; }
done
[ "$(nproc --all)" -ge 2 ] || { echo "bench_distribute: needs 2 cores" >&2; exit 1; }

(cd "$root" && cargo build --release --locked --quiet -p distc --bin distc)
work="$(mktemp -d)"
mkdir -p "$work/bin" "$work/config" "$work/one" "$work/two" "$work/distcc"
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

for p in $projects; do "$root/scripts/${p}_project.sh" "$work/$p"; done
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
  --jobs 1 --nice 10 --log-stderr --log-level info --user nobody 2>"$work/distccd.log" &
pids+=($!)
sleep 0.5

# build PROJECT MODE: one cold build of PROJECT on core 0; prints its wall time in ms.
build() {
  local proj="$work/$1" target cc env=() vars
  make -s -C "$proj" clean
  case "$1" in
    lua) target=liblua.a ;; zstd) target=libzstd.a ;; leveldb) target=libleveldb.a ;;
  esac
  case "$2" in
    alone) cc="$bin"; env=(DISTC_DIR="$work/one" DISTC_OFFLOAD=0) ;;
    mesh) cc="$bin"; env=(DISTC_DIR="$work/one" DISTC_OFFLOAD=1) ;;
    distcc) cc="distcc"; env=(DISTCC_HOSTS="localhost/1 127.0.0.1:$dport/1" DISTCC_DIR="$work/distcc") ;;
    gcc) cc="" ;;
  esac
  if [ "$1" = leveldb ]; then
    vars=(CXX="${cc:+$cc }g++" CXXFLAGS="-O2 -Wall -std=c++11${extra:+ $extra}")
  else
    vars=(CC="${cc:+$cc }gcc" CFLAGS="-O2 -Wall${extra_cflags[$1]:-}${extra:+ $extra}")
  fi
  if [ "$2" = alone ] || [ "$2" = mesh ]; then
    DISTC_DIR="$work/one" "$bin" flush >/dev/null
    DISTC_DIR="$work/one" "$bin" stats --zero >/dev/null
  fi
  env "${env[@]}" /usr/bin/time -f '%e' -o "$work/time.txt" \
    taskset -c 0 make -s -C "$proj" -j"$jobs" "${vars[@]}" "$target" >/dev/null 2>"$work/make.err" ||
    { cat "$work/make.err" >&2; exit 1; }
  awk '{ printf "%d\n", $1 * 1000 }' "$work/time.txt"
}
declare -A extra_cflags=([lua]=" -DLUA_USE_LINUX")

# The compile protocol's bytes machine one sent and received so far.
bytes() {
  DISTC_DIR="$work/one" "$bin" slots --json |
    python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["bytes_out"], s["bytes_in"])'
}

# Warm-up: compiler identities, the page cache, distcc's state.
for p in $projects; do for m in alone mesh distcc gcc; do build "$p" "$m" >/dev/null; done; done
: >"$work/times.tsv"
: >"$work/shares.tsv"
for i in $(seq 1 "$runs"); do
  # Rotate the order, so drift on a shared machine hits every mode alike.
  case $((i % 4)) in
    1) order="alone mesh distcc gcc" ;; 2) order="mesh distcc gcc alone" ;;
    3) order="distcc gcc alone mesh" ;; 0) order="gcc alone mesh distcc" ;;
  esac
  for p in $projects; do
    for m in $order; do
      [ "$m" = mesh ] && read -r out0 in0 < <(bytes)
      ms=$(build "$p" "$m")
      printf '%s\t%s\t%s\t%s\n' "$p" "$m" "$i" "$ms" >>"$work/times.tsv"
      if [ "$m" = mesh ]; then
        read -r out1 in1 < <(bytes)
        off=$(DISTC_DIR="$work/one" "$bin" stats --json |
          python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["offloaded"], s["misses"])')
        printf '%s\t%s\t%s\t%s\n' "$p" "$off" $((out1 - out0)) $((in1 - in0)) >>"$work/shares.tsv"
      fi
    done
  done
done
grep "compiled a job for a peer" "$work/two.log" >"$work/served.log" || true
distccd_jobs=$(grep -c "COMPILE_OK" "$work/distccd.log" || true)
echo "distccd compiled $distccd_jobs jobs over the runs, warm-up included"

python3 - "$work/times.tsv" "$work/shares.tsv" "$work/served.log" "$runs" "$jobs" "$(uptime)" <<'PY'
import re, statistics, sys
times, shares, served, runs, jobs, up = sys.argv[1:7]
t = {}
for line in open(times):
    p, m, _, ms = line.split()
    t.setdefault(p, {}).setdefault(m, []).append(int(ms))
sh = {}
for line in open(shares):
    p, off, miss, out, inn = line.split()
    sh.setdefault(p, []).append((int(off), int(miss), int(out), int(inn)))
log = open(served).read()
job_ms = [int(m) for m in re.findall(r" ms=(\d+)", log)]
queued_ms = [int(m) for m in re.findall(r"queued_ms=(\d+)", log)]
labels = [("gcc", "plain gcc, core 0 alone"), ("alone", "distc, machine one alone"),
          ("mesh", "distc, machine two serving"), ("distcc", "distcc, distccd on core 1")]
print(f"cold make -j{jobs}, machine one on core 0, machine two / distccd on core 1; {runs} runs each, medians (ms)")
print(f"load when done: {up.strip()}")
total = {m: 0.0 for m, _ in labels}
for p in t:
    med = {m: statistics.median(v) for m, v in t[p].items()}
    for m in total:
        total[m] += med[m]
    print(f"{p}:")
    for m, label in labels:
        print(f"  {label:<30} {med[m]:>7.0f}   runs {t[p][m]}   speedup over distc alone {med['alone'] / med[m]:.2f}x")
    s = sh.get(p, [])
    off, miss = sum(x[0] for x in s), sum(x[1] for x in s)
    n = max(1, len(s))
    print(f"  offloaded: {100 * off / max(1, miss):.0f} % of {miss // n} misses per build (per run {[x[0] for x in s]});"
          f" {sum(x[2] for x in s) / n / 1e6:.2f} MB sent, {sum(x[3] for x in s) / n / 1e6:.2f} MB received per build"
          f" ({sum(x[2] for x in s) / max(1, off) / 1e3:.0f} kB sent per offloaded job)")
    print(f"  distc (machine two serving) vs distcc: {med['distcc'] / med['mesh']:.2f}x")
print("all projects (sum of medians):")
for m, label in labels:
    print(f"  {label:<30} {total[m]:>7.0f}   speedup over distc alone {total['alone'] / total[m]:.2f}x")
print(f"  distc (machine two serving) vs distcc: {total['distcc'] / total['mesh']:.2f}x")
if job_ms:
    run_ms = [a - b for a, b in zip(job_ms, queued_ms)] if len(queued_ms) == len(job_ms) else job_ms
    print(f"  machine two: {len(job_ms)} jobs, per job median {statistics.median(job_ms):.0f} ms from request to answer,"
          f" {statistics.median(run_ms):.0f} ms of it compiling in its sandbox (the rest queued)")
PY
