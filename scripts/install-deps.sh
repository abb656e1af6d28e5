#!/usr/bin/env bash
# Installs what distc's tests and demos use: C/C++ compilers, make, CMake, ccache (for
# comparisons), iproute2 (network namespaces for the mDNS and slow-link tests), nftables (a
# firewall inside one of those namespaces, for the blocked-UDP test), bubblewrap (the sandbox a peer
# compiles for others in; without it the offload tests skip), tmux (drives `distc top` in a
# real terminal), and Python's prometheus_client (its parser checks the `/metrics` format).
# Debian/Ubuntu via apt when run as root; elsewhere it lists what is missing and leaves the
# choice to you.
set -euo pipefail

if command -v python3 >/dev/null 2>&1 && ! python3 -c 'import prometheus_client' 2>/dev/null; then
  echo "distc: installing prometheus_client (pip)" >&2
  python3 -m pip install -q prometheus_client >/dev/null 2>&1 ||
    echo "distc: cannot install prometheus_client with pip; the metrics format test will SKIP" >&2
fi

need=()
for tool in gcc g++ make cmake ccache ip nft bwrap tmux; do
  command -v "$tool" >/dev/null 2>&1 || need+=("$tool")
done
[ ${#need[@]} -eq 0 ] && exit 0

pkgs=()
for tool in "${need[@]}"; do
  case "$tool" in
    ip) pkgs+=(iproute2) ;;
    bwrap) pkgs+=(bubblewrap) ;;
    nft) pkgs+=(nftables) ;;
    *) pkgs+=("$tool") ;;
  esac
done

if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "distc: installing ${pkgs[*]} (apt)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq "${pkgs[@]}" >/dev/null
else
  echo "distc: missing tools: ${need[*]} — install ${pkgs[*]} with your package manager;" >&2
  echo "       tests that need them print SKIP and pass without them." >&2
fi
