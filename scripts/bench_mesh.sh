#!/usr/bin/env bash
# Remote hit vs local hit vs ccache's local hit on one C file, with a local 3-peer mesh on
# 127.0.0.1. Needs hyperfine and ccache; uses target/release/distc (cargo build --release).
#
#   scripts/bench_mesh.sh [SOURCE.c]      (default demo/hello.c)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
src="$(realpath "${1:-$root/demo/hello.c}")"
bin="${DISTC_BIN:-$root/target/release/distc}"
work="$(mktemp -d)"
export DISTC_NODES_DIR="$work/nodes" DISTC_BIN="$bin" BASE_PORT="${BASE_PORT:-27878}"
trap '"$root/scripts/stop_nodes.sh" >/dev/null; rm -rf "$work"' EXIT
"$root/scripts/run_nodes.sh" 3 >/dev/null
export DISTC_CONFIG_DIR="$work/nodes/config" DISTC_AUTO_START=0
n1="$work/nodes/node1" n3="$work/nodes/node3"
cd "$work"
cp "$src" src.c
sleep 1
DISTC_DIR="$n1" "$bin" gcc -c src.c -o a.o          # miss: stored on node1, replicated
sleep 1
mkdir -p ccache
CCACHE_DIR="$work/ccache" ccache gcc -c src.c -o c.o  # warm ccache
hyperfine -N --warmup 3 --export-markdown "$work/table.md" \
  -n "distc local hit" "env DISTC_DIR=$n1 $bin gcc -c src.c -o a.o" \
  -n "distc remote hit" --prepare "sh -c 'rm -rf $n3/store/??'" \
     "env DISTC_DIR=$n3 $bin gcc -c src.c -o b.o" \
  -n "ccache local hit" "env CCACHE_DIR=$work/ccache ccache gcc -c src.c -o c.o"
cat "$work/table.md"
