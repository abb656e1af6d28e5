#!/usr/bin/env bash
# The main job on the built-in defaults: builds distc, then builds the demo programs twice
# through the cache — the first time compiles, the second is served from the cache.
# Uses a fresh cache directory so the result is the same on every run; set DISTC_DIR to keep it.
# Usage: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo build --release --locked --quiet
distc="$PWD/target/release/distc"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export DISTC_DIR="${DISTC_DIR:-$work/cache}"
# The demo runs on one machine and leaves nothing running behind it.
export DISTC_AUTO_START=0

for round in 1 2; do
  echo "== round $round =="
  (cd "$work" && "$distc" build "$OLDPWD/demo/hello.c" -o hello-c && ./hello-c)
  (cd "$work" && "$distc" build "$OLDPWD/demo/hello.cpp" -o hello-cpp && ./hello-cpp)
  "$distc" build-project demo/cpp-project -o "$work/cpp-project"
  "$work/cpp-project"
  "$distc" build-project demo/c-project -o "$work/c-project"
  "$work/c-project"
done
echo "== cache statistics =="
"$distc" stats
