#!/usr/bin/env bash
# The mesh benchmark: one command, one markdown table of medians and ratios from one run.
#
#   scripts/bench_mesh.sh                 # everything
#   BENCH_RUNS=20 scripts/bench_mesh.sh   # runs per hit measurement (default 15)
#   BENCH_BASELINE=/path/to/older/distc scripts/bench_mesh.sh
#                                         # also a second mesh of the older binary, its hits
#                                         # in the same hyperfine runs (before / after table)
#
# (a) Hits on demo/hello.c (gcc -O2) and on a large C++ translation unit (g++ -O2, <regex>,
#     <map>, <iostream>…), side by side in one hyperfine run each, against a 3-peer mesh on
#     127.0.0.1 (scripts/run_nodes.sh: one shared key, own dirs and ports):
#       - distc local hit: node1 holds the entry (and its direct-mode manifest);
#       - distc remote hit, own manifest: node3's wrapper has the direct-mode manifest but not
#         the entry, so its peer fetches the entry from another peer (node3's store is emptied
#         before each run);
#       - distc remote hit, shared manifest: node3 has neither (store and manifests emptied
#         before each run: the first compile of the file on this machine), so the wrapper
#         fetches the manifest node1 shared through the mesh, checks every header against its
#         own files, then fetches the entry;
#       - distc remote hit, preprocessor: the same with DISTC_DIRECT_MODE=0, the wrapper runs
#         the preprocessor for the key first, then asks its peer (how a first remote hit was
#         served before manifests were shared);
#       - ccache local hit.
#     Re-verification is off for these hits (DISTC_VERIFY_RATE=0): they measure the hit itself.
# (b) Throughput of one 20 MB entry between two nodes on loopback with a mesh key (pnet +
#     Noise + Yamux), node level: the `mesh_bench` example of distc-peer.
# (c) Time from start to a stable ring (every node sees all members) for 3 and 10 nodes.
# (e) What `verify_rate` costs a warm make build (make -j2, 40 C sources, every object produced
#     on node1 and kept on node3, so every hit on node3 is one re-verification may sample):
#     verify_rate 0, the default 0.01 and 1 side by side in one hyperfine run.
# (d) What provenance costs per entry: signing on first send, the signature check of a remote
#     hit beside the digest check it always had (`mesh_bench sign`).
# Needs hyperfine, ccache, gcc, g++, python3. Stops every peer it starts (by pid files).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
runs=${BENCH_RUNS:-15}
for t in hyperfine ccache gcc g++ python3; do
  command -v "$t" >/dev/null 2>&1 || { echo "bench_mesh: $t is required" >&2; exit 1; }
done

(cd "$root" && cargo build --release --locked --quiet -p distc -p distc-peer --bin distc --example mesh_bench)
bin="$root/target/release/distc"
nb="$root/target/release/examples/mesh_bench"

base_bin="${BENCH_BASELINE:-}"
[ -z "$base_bin" ] || [ -x "$base_bin" ] || { echo "bench_mesh: BENCH_BASELINE=$base_bin is not executable" >&2; exit 1; }

work="$(mktemp -d)"
export DISTC_NODES_DIR="$work/nodes" DISTC_BIN="$bin" BASE_PORT="${BASE_PORT:-27878}"
stop_all() {
  "$root/scripts/stop_nodes.sh" >/dev/null 2>&1
  [ -z "$base_bin" ] || DISTC_NODES_DIR="$work/base-nodes" "$root/scripts/stop_nodes.sh" >/dev/null 2>&1
}
trap 'stop_all; rm -rf "$work"' EXIT
DISTC_LOG="info,distc_peer=debug" "$root/scripts/run_nodes.sh" 3 >/dev/null
if [ -n "$base_bin" ]; then
  DISTC_NODES_DIR="$work/base-nodes" DISTC_BIN="$base_bin" BASE_PORT=$((BASE_PORT + 10)) \
    "$root/scripts/run_nodes.sh" 3 >/dev/null
fi
export DISTC_CONFIG_DIR="$work/nodes/config" DISTC_AUTO_START=0 DISTC_VERIFY_RATE=0
n1="$work/nodes/node1" n3="$work/nodes/node3"
b1="$work/base-nodes/node1" b3="$work/base-nodes/node3" bcfg="$work/base-nodes/config"
for _ in $(seq 1 100); do
  [ -e "$n1/peer.mesh" ] && [ -e "$n3/peer.mesh" ] && { [ -z "$base_bin" ] || [ -e "$b3/peer.mesh" ]; } && break
  sleep 0.1
done
[ -e "$n3/peer.mesh" ] || { echo "bench_mesh: the 3 nodes did not form a mesh" >&2; exit 1; }
[ -z "$base_bin" ] || [ -e "$b3/peer.mesh" ] || { echo "bench_mesh: the 3 baseline nodes did not form a mesh" >&2; exit 1; }

cd "$work"
cp "$root/demo/hello.c" hello.c
cp "$root/scripts/bench_large.cpp" large.cpp
mkdir -p ccache

hits() { # hits LABEL COMPILER SOURCE
  local label=$1 cc=$2 src=$3
  local c="$cc -O2 -c $src -o"
  DISTC_DIR="$n1" "$bin" $c "$label-1.o"          # miss: stored on node1, replicated
  DISTC_DIR="$n1" "$bin" $c "$label-1.o"          # node1 writes its manifest
  sleep 1                                          # replication is asynchronous
  DISTC_DIR="$n3" "$bin" $c "$label-3.o"          # node3 learns the manifest
  CCACHE_DIR="$work/ccache" ccache $c "$label-c.o" # warm ccache
  local base=()
  if [ -n "$base_bin" ]; then
    for d in "$b1" "$b1"; do DISTC_CONFIG_DIR="$bcfg" DISTC_DIR="$d" "$base_bin" $c "$label-b1.o"; done
    sleep 1
    DISTC_CONFIG_DIR="$bcfg" DISTC_DIR="$b3" "$base_bin" $c "$label-b3.o"
    base=(--prepare true --prepare "sh -c 'rm -rf $b3/store/??'"
      --prepare "sh -c 'rm -rf $b3/store/?? $b3/manifests'"
      -n base-local -n base-remote-manifest -n base-remote-preprocessor
      "env DISTC_CONFIG_DIR=$bcfg DISTC_DIR=$b1 $base_bin $c $label-b1.o"
      "env DISTC_CONFIG_DIR=$bcfg DISTC_DIR=$b3 $base_bin $c $label-b3.o"
      "env DISTC_CONFIG_DIR=$bcfg DISTC_DIR=$b3 DISTC_DIRECT_MODE=0 $base_bin $c $label-b3.o")
  fi
  local before after
  before=$(grep -c "remote hit" "$n3/peer.log" || true)
  hyperfine -N --warmup 2 --runs "$runs" --style basic --export-json "$work/$label.json" \
    --prepare true --prepare "sh -c 'rm -rf $n3/store/??'" \
    --prepare "sh -c 'rm -rf $n3/store/?? $n3/manifests'" \
    --prepare "sh -c 'rm -rf $n3/store/?? $n3/manifests'" --prepare true \
    -n local -n remote-manifest -n remote-shared -n remote-preprocessor -n ccache \
    "env DISTC_DIR=$n1 $bin $c $label-1.o" \
    "env DISTC_DIR=$n3 $bin $c $label-3.o" \
    "env DISTC_DIR=$n3 $bin $c $label-3.o" \
    "env DISTC_DIR=$n3 DISTC_DIRECT_MODE=0 $bin $c $label-3.o" \
    "env CCACHE_DIR=$work/ccache ccache $c $label-c.o" \
    "${base[@]}" \
    >"$work/$label.log" 2>&1 || { cat "$work/$label.log" >&2; exit 1; }
  # Every remote run must have been served by another peer (node3's peer logs each one): one
  # entry per run, two (manifest + entry) per shared-manifest run.
  after=$(grep -c "remote hit" "$n3/peer.log" || true)
  echo "$label: $((after - before)) remote hits served to node3, $((4 * (runs + 2))) expected" >"$work/$label.check"
}
echo "bench_mesh: hello.c hits" >&2
hits hello gcc hello.c
echo "bench_mesh: large C++ TU hits" >&2
hits large g++ large.cpp
echo "bench_mesh: warm make build, verify_rate 0 / 0.01 / 1" >&2
mkdir -p proj
for i in $(seq 1 40); do
  printf '#include <stdio.h>\n#include <string.h>\n#include <stdlib.h>\nint f%d(const char *s) { char b[64]; snprintf(b, sizeof b, "%%s-%d", s); return (int)strlen(b) + atoi(s); }\n' "$i" "$i" >"proj/f$i.c"
done
printf 'int main(void) { return 0; }\n' >proj/main.c
printf 'OBJS := $(patsubst %%.c,%%.o,$(wildcard *.c))\napp: $(OBJS)\n\t$(CC) -o $@ $(OBJS)\n%%.o: %%.c\n\t$(CC) -O2 -c $< -o $@\nclean:\n\trm -f app *.o\n' >proj/Makefile
(cd proj && DISTC_DIR="$n1" make -s -j2 CC="$bin gcc" && make -s clean)
sleep 1
(cd proj && DISTC_DIR="$n3" make -s -j2 CC="$bin gcc" && make -s clean)
(cd proj && hyperfine -N --warmup 1 --runs "$runs" --style basic --export-json "$work/make.json" \
  --prepare "make -s clean" -n rate-0 -n rate-0.01 -n rate-1 \
  "env DISTC_DIR=$n3 DISTC_VERIFY_RATE=0 make -s -j2 CC='$bin gcc'" \
  "env DISTC_DIR=$n3 DISTC_VERIFY_RATE=0.01 make -s -j2 CC='$bin gcc'" \
  "env DISTC_DIR=$n3 DISTC_VERIFY_RATE=1 make -s -j2 CC='$bin gcc'" \
  >"$work/make.log" 2>&1) || { cat "$work/make.log" >&2; exit 1; }
stop_all

echo "bench_mesh: 20 MB transfer" >&2
"$nb" transfer 20 9 >"$work/node.tsv"
echo "bench_mesh: ring convergence, 3 and 10 nodes" >&2
"$nb" converge 3 5 >>"$work/node.tsv"
"$nb" converge 10 5 >>"$work/node.tsv"
echo "bench_mesh: signing and signature checks" >&2
"$nb" sign >>"$work/node.tsv"

python3 - "$work" "$runs" <<'EOF'
import json, os, statistics, sys
work, runs = sys.argv[1], sys.argv[2]
print(f"| hit (median ms, {runs} runs) | distc local | distc remote, own manifest | distc remote, shared manifest | distc remote, preprocessor | ccache local | local / ccache | remote+own / ccache | remote+shared / ccache | remote+preproc / ccache |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for label, name in [("hello", "hello.c (gcc -O2)"), ("large", "large C++ TU (g++ -O2)")]:
    res = {r["command"]: statistics.median(r["times"]) * 1000
           for r in json.load(open(os.path.join(work, label + ".json")))["results"]}
    l, rm, rs, rp, c = (res[k] for k in ("local", "remote-manifest", "remote-shared", "remote-preprocessor", "ccache"))
    print(f"| {name} | {l:.1f} | {rm:.1f} | {rs:.1f} | {rp:.1f} | {c:.1f} | {l / c:.2f} | {rm / c:.2f} | {rs / c:.2f} | {rp / c:.2f} |")
for label in ("hello", "large"):
    print("\n" + open(os.path.join(work, label + ".check")).read().strip(), end="")
print("\n")
base = {}
for label in ("hello", "large"):
    res = {r["command"]: statistics.median(r["times"]) * 1000
           for r in json.load(open(os.path.join(work, label + ".json")))["results"]}
    if "base-local" in res:
        base[label] = res
if base:
    print("| same run, median ms | baseline | this build | difference |")
    print("|---|---:|---:|---:|")
    for label, name in [("hello", "hello.c"), ("large", "large C++ TU")]:
        if label not in base:
            continue
        res = base[label]
        for k, what in [("local", "local hit"), ("remote-manifest", "remote hit, own manifest"),
                        ("remote-preprocessor", "remote hit, preprocessor")]:
            b, a = res["base-" + k], res[k]
            print(f"| {name}: {what} | {b:.2f} | {a:.2f} | {a - b:+.2f} |")
    print()
res = {r["command"]: statistics.median(r["times"]) * 1000
       for r in json.load(open(os.path.join(work, "make.json")))["results"]}
z = res["rate-0"]
print(f"| warm make -j2, 40 sources + link, every hit another machine's (median ms, {runs} runs) | verify_rate 0 | 0.01 (default) | 1 | 0.01 − 0 |")
print("|---|---:|---:|---:|---:|")
print(f"| node3 | {z:.0f} | {res['rate-0.01']:.0f} | {res['rate-1']:.0f} | {res['rate-0.01'] - z:+.0f} ({(res['rate-0.01'] / z - 1) * 100:+.1f} %) |")
print()
print("| node level | median | rate | detail |")
print("|---|---:|---:|---|")
for line in open(os.path.join(work, "node.tsv")):
    m, ms, rate, detail = line.rstrip("\n").split("\t")
    label = {"transfer": "20 MB entry, one Get between two peers",
             "get+verify": "20 MB entry, Node::get (transfer + digest and signature checks)",
             "transfer-1.0": "20 MB entry, one Get, /distc/1.0.0 framing",
             "transfer-nokey": "20 MB entry, one Get, no mesh key (Noise + Yamux only)",
             "converge-3": "start to stable ring, 3 peers",
             "converge-10": "start to stable ring, 10 peers",
             "sign-4KB": "4 KB entry: signing on first send",
             "digest-4KB": "4 KB entry: digest check of a remote hit",
             "verify-4KB": "4 KB entry: signature check of a remote hit",
             "sign-20MB": "20 MB entry: signing on first send",
             "digest-20MB": "20 MB entry: digest check of a remote hit",
             "verify-20MB": "20 MB entry: signature check of a remote hit"}.get(m, m)
    print(f"| {label} | {ms} ms | {rate + ' MB/s' if rate else ''} | {detail} |")
EOF
