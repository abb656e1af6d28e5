#!/usr/bin/env bash
# Prints the path of the sccache executable the benchmarks compare with: $SCCACHE_BIN when
# set, else `sccache` on PATH. A version manager's shim (pyenv's, asdf's: a shell script that
# finds the real binary on every call, ~150 ms) is resolved to the binary it runs, so that
# sccache is timed and not the shim. Exits 1, printing nothing, when there is no sccache.
set -euo pipefail
bin=${SCCACHE_BIN:-$(command -v sccache || true)}
[ -n "$bin" ] && [ -x "$bin" ] || exit 1
if [ "$(head -c 2 "$bin")" = '#!' ]; then
  real=""
  command -v pyenv >/dev/null 2>&1 && real=$(pyenv which sccache 2>/dev/null || true)
  [ -z "$real" ] && command -v asdf >/dev/null 2>&1 && real=$(asdf which sccache 2>/dev/null || true)
  [ -n "$real" ] && [ -x "$real" ] && bin=$real
fi
echo "$bin"
