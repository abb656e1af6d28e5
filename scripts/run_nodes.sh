#!/usr/bin/env bash
# Starts N distc peers on 127.0.0.1 (default 3), each with its own cache dir and port, one
# shared mesh key, every peer bootstrapping from the first. Stop them with stop_nodes.sh.
#
#   scripts/run_nodes.sh [N]
#
# Environment: DISTC_NODES_DIR (default: ./.distc-nodes), DISTC_BIN (default: distc on PATH,
# else target/release or target/debug of this checkout), BASE_PORT (default 17878).
set -euo pipefail

n="${1:-3}"
case "$n" in ''|*[!0-9]*) echo "usage: $0 [N]" >&2; exit 2 ;; esac
root="$(cd "$(dirname "$0")/.." && pwd)"
nodes="${DISTC_NODES_DIR:-$PWD/.distc-nodes}"
base="${BASE_PORT:-17878}"

bin="${DISTC_BIN:-}"
if [ -z "$bin" ]; then
  for c in "$root/target/release/distc" "$root/target/debug/distc" "$(command -v distc || true)"; do
    if [ -n "$c" ] && [ -x "$c" ]; then bin="$c"; break; fi
  done
fi
[ -n "$bin" ] || { echo "distc binary not found: run 'cargo build' or set DISTC_BIN" >&2; exit 1; }

if ls "$nodes"/node*/peer.pid >/dev/null 2>&1; then
  echo "nodes already running in $nodes: run scripts/stop_nodes.sh first" >&2
  exit 1
fi
mkdir -p "$nodes/config"
chmod 700 "$nodes" "$nodes/config"
export DISTC_CONFIG_DIR="$nodes/config"
[ -f "$nodes/config/swarm.key" ] || "$bin" mesh init >/dev/null 2>&1

first=""
for i in $(seq 1 "$n"); do
  dir="$nodes/node$i"
  mkdir -p "$dir"
  port=$((base + i - 1))
  args=(peer --no-mdns --listen "/ip4/127.0.0.1/tcp/$port")
  [ -n "$first" ] && args+=(--bootstrap "$first")
  DISTC_DIR="$dir" DISTC_AUTO_START=0 setsid "$bin" "${args[@]}" \
    </dev/null >"$dir/peer.log" 2>&1 &
  echo $! >"$nodes/node$i.pid"
  for _ in $(seq 1 100); do
    [ -S "$dir/peer.sock" ] && break
    sleep 0.05
  done
  [ -S "$dir/peer.sock" ] || { echo "node$i did not start; see $dir/peer.log" >&2; exit 1; }
  if [ -z "$first" ]; then
    id="$(DISTC_DIR="$dir" DISTC_AUTO_START=0 "$bin" status --json | sed -n 's/^  "id": "\(.*\)",$/\1/p')"
    first="/ip4/127.0.0.1/tcp/$port/p2p/$id"
  fi
  echo "node$i: port $port, DISTC_DIR=$dir"
done

cat <<MSG

$n peers running (key in $nodes/config). Point a build at one of them, e.g.:
  DISTC_DIR=$nodes/node1 DISTC_CONFIG_DIR=$nodes/config make CC="distc gcc"
  DISTC_DIR=$nodes/node2 DISTC_CONFIG_DIR=$nodes/config distc status
Stop them with: scripts/stop_nodes.sh
MSG
