#!/usr/bin/env bash
# Fetches a crates.io package with cargo (into cargo's registry cache, once) and prints the
# directory of one of its subdirectories: how the benchmarks get third-party C sources.
#
#   scripts/crate_src.sh CRATE VERSION SUBDIR     e.g. lua-src 547.1.0 lua-5.4.7
set -euo pipefail
[ $# = 3 ] || { echo "usage: $0 CRATE VERSION SUBDIR" >&2; exit 2; }
fetch=$(mktemp -d)
trap 'rm -rf "$fetch"' EXIT
mkdir -p "$fetch/src"
printf '[package]\nname = "fetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\n%s = { version = "=%s", default-features = false }\n' "$1" "$2" >"$fetch/Cargo.toml"
echo 'fn main() {}' >"$fetch/src/main.rs"
(cd "$fetch" && cargo fetch --quiet)
dir=$(find "${CARGO_HOME:-$HOME/.cargo}/registry/src" -maxdepth 3 -type d -path "*$1-$2/$3" | head -n 1)
[ -n "$dir" ] || { echo "$0: $1 $2 sources ($3) not found after cargo fetch" >&2; exit 1; }
echo "$dir"
