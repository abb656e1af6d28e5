#!/usr/bin/env bash
# Membership at scale: N in-process peers (one process, each a full libp2p node on its own
# 127.0.0.1 TCP port, the daemon's SWIM timing) for each N, one markdown table.
#
#   scripts/bench_scale.sh              # N = 50 100 200
#   SCALE_NS="50 100" SCALE_IDLE=20 scripts/bench_scale.sh
#
# Per N (the `scale_bench` example of distc-peer says exactly what each column measures):
# time from start to one ring everywhere; then until no peer is short of CPU (at most 60 s:
# starting N nodes at once starves the process); after one join and after one kill, time until every
# peer agrees; membership bytes per second per peer over SCALE_IDLE seconds of an idle mesh
# (median, max; message bodies as the membership codec counts them); the same on the wire (every
# byte of each peer's TCP streams: Noise, Yamux, identify and handshakes included) and the TCP
# connections each peer opens or accepts per second; members each peer holds a connection to
# (median, max); the process's CPU time per peer; resident size of the process divided by the
# peers in it; share of keys whose primary owner moved on the join (ideal 1/N); the cores the
# process got and how many peers were short of CPU (timers late), so a starved run says so. A
# run that does not agree prints its error (with the same evidence) in the row instead.
# Membership packets go as UDP datagrams beside each peer's TCP port, as in the daemon;
# SCALE_STREAMS=1 sends them over libp2p streams instead (one connection per probe of a member
# not connected), to compare. SCALE_TRACE=1 prints, every 500 ms of each phase, how many peers agree and how many member
# records are suspect or down. The timings are wall clock on whatever else the machine runs: read them as
# orders of magnitude, not to the millisecond.
set -euo pipefail
cd "$(dirname "$0")/.."

ns=${SCALE_NS:-"50 100 200"}
idle=${SCALE_IDLE:-10}
cargo build --release -q -p distc-peer --example scale_bench
bin=target/release/examples/scale_bench

echo "| peers | one ring | settled | join agreed | kill agreed | membership/peer median | max | TCP/peer median | new TCP conns/peer/s | connections median | max | idle connections max | CPU/peer | process CPU (cores) | peers slowed | RSS/peer | keys moved on join (ideal) |"
echo "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
for n in $ns; do
    if ! out=$("$bin" "$n" "$idle" 2>"target/bench_scale_$n.err"); then
        echo "| $n | $(grep -m1 '^Error' "target/bench_scale_$n.err" || tail -1 "target/bench_scale_$n.err") |"
        continue
    fi
    v() { awk -v m="$1" -F'\t' '$1 == m { print $2 }' <<<"$out"; }
    printf '| %s | %.1f s | %.1f s | %.1f s | %.1f s | %.2f KB/s | %.2f KB/s | %.1f KB/s | %.1f | %.0f | %.0f | %.0f | %.1f ms/s | %.2f | %.0f | %.1f MB | %.4f (%.4f) |\n' \
        "$n" "$(v ring_all)" "$(v settle)" "$(v join_agree)" "$(v kill_agree)" \
        "$(v traffic_median)" "$(v traffic_max)" "$(v tcp_median)" "$(v new_conns_median)" \
        "$(v conns_median)" "$(v conns_max)" "$(v idle_conns_max)" "$(v cpu_per_peer)" \
        "$(v cpu_cores)" "$(v slowed_peers)" \
        "$(v rss_per_peer)" "$(v keys_moved)" "$(v keys_moved_ideal)"
done
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
