#!/usr/bin/env bash
# The mesh benchmark: one command, one markdown table of medians and ratios from one run.
#
#   scripts/bench_mesh.sh                 # everything
#   BENCH_RUNS=20 scripts/bench_mesh.sh   # runs per hit measurement (default 15)
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
# (b) Throughput of one 20 MB entry between two nodes on loopback with a mesh key (pnet +
#     Noise + Yamux), node level: the `mesh_bench` example of distc-peer.
# (c) Time from start to a stable ring (every node sees all members) for 3 and 10 nodes.
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

work="$(mktemp -d)"
export DISTC_NODES_DIR="$work/nodes" DISTC_BIN="$bin" BASE_PORT="${BASE_PORT:-27878}"
trap '"$root/scripts/stop_nodes.sh" >/dev/null 2>&1; rm -rf "$work"' EXIT
DISTC_LOG="info,distc_peer=debug" "$root/scripts/run_nodes.sh" 3 >/dev/null
export DISTC_CONFIG_DIR="$work/nodes/config" DISTC_AUTO_START=0
n1="$work/nodes/node1" n3="$work/nodes/node3"
for _ in $(seq 1 100); do
  [ -e "$n1/peer.mesh" ] && [ -e "$n3/peer.mesh" ] && break
  sleep 0.1
done
[ -e "$n3/peer.mesh" ] || { echo "bench_mesh: the 3 nodes did not form a mesh" >&2; exit 1; }

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
"$root/scripts/stop_nodes.sh" >/dev/null 2>&1

echo "bench_mesh: 20 MB transfer" >&2
"$nb" transfer 20 9 >"$work/node.tsv"
echo "bench_mesh: ring convergence, 3 and 10 nodes" >&2
"$nb" converge 3 5 >>"$work/node.tsv"
"$nb" converge 10 5 >>"$work/node.tsv"

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
print("| node level | median | rate | detail |")
print("|---|---:|---:|---|")
for line in open(os.path.join(work, "node.tsv")):
    m, ms, rate, detail = line.rstrip("\n").split("\t")
    label = {"transfer": "20 MB entry, one Get between two peers",
             "get+verify": "20 MB entry, Node::get (transfer + digest check)",
             "transfer-1.0": "20 MB entry, one Get, /distc/1.0.0 framing",
             "transfer-nokey": "20 MB entry, one Get, no mesh key (Noise + Yamux only)",
             "converge-3": "start to stable ring, 3 peers",
             "converge-10": "start to stable ring, 10 peers"}.get(m, m)
    print(f"| {label} | {ms} ms | {rate + ' MB/s' if rate else ''} | {detail} |")
EOF
