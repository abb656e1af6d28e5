#!/usr/bin/env bash
# Membership at scale: N in-process peers (one process, each a full libp2p node on its own
# 127.0.0.1 TCP port, the daemon's SWIM timing) for each N, one markdown table.
#
#   scripts/bench_scale.sh              # N = 50 100 200
#   SCALE_NS="50 100" SCALE_IDLE=20 scripts/bench_scale.sh
#
# Per N (the `scale_bench` example of distc-peer says exactly what each column measures):
# time from start to one ring everywhere; after one join and after one kill, time until every
# peer agrees; membership bytes per second per peer over SCALE_IDLE seconds of an idle mesh
# (median, max; message bodies as the membership codec counts them, not TCP/Noise/Yamux
# overhead); members each peer holds a connection to (median, max); resident size of the
# process divided by the peers in it; share of keys whose primary owner moved on the join
# (ideal 1/N). The timings are wall clock on whatever else the machine runs: read them as
# orders of magnitude, not to the millisecond.
set -euo pipefail
cd "$(dirname "$0")/.."

ns=${SCALE_NS:-"50 100 200"}
idle=${SCALE_IDLE:-10}
cargo build --release -q -p distc-peer --example scale_bench
bin=target/release/examples/scale_bench

echo "| peers | one ring | join agreed | kill agreed | traffic/peer median | max | connections median | max | RSS/peer | keys moved on join (ideal) |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in $ns; do
    out=$("$bin" "$n" "$idle")
    v() { awk -v m="$1" -F'\t' '$1 == m { print $2 }' <<<"$out"; }
    printf '| %s | %.1f s | %.1f s | %.1f s | %.2f KB/s | %.2f KB/s | %.0f | %.0f | %.1f MB | %.4f (%.4f) |\n' \
        "$n" "$(v ring_all)" "$(v join_agree)" "$(v kill_agree)" \
        "$(v traffic_median)" "$(v traffic_max)" "$(v conns_median)" "$(v conns_max)" \
        "$(v rss_per_peer)" "$(v keys_moved)" "$(v keys_moved_ideal)"
done
