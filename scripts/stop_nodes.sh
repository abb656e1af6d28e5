#!/usr/bin/env bash
# Stops exactly the peers run_nodes.sh started (by their pid files), nothing else.
#
#   scripts/stop_nodes.sh          (DISTC_NODES_DIR as for run_nodes.sh)
set -uo pipefail

nodes="${DISTC_NODES_DIR:-$PWD/.distc-nodes}"
shopt -s nullglob
pids=()
for f in "$nodes"/node*.pid; do
  pid="$(cat "$f")"
  # Only signal the process if it is still the distc peer we started.
  if [ -n "$pid" ] && grep -qa "peer" "/proc/$pid/cmdline" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
  fi
  rm -f "$f"
done
# A peer hands its entries on before it exits (at most leave_timeout_secs, 30 by default).
for pid in "${pids[@]}"; do
  for _ in $(seq 1 400); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    kill -KILL "$pid" 2>/dev/null
  fi
done
echo "stopped ${#pids[@]} peer(s) in $nodes"
