#!/usr/bin/env bash
# The team benchmark: does the second machine's build come from the first one's?
#
#   scripts/bench_team.sh                  # everything
#   BENCH_KINDS=rust BENCH_PROFILES=release scripts/bench_team.sh   # a part (cpp, rust; debug, release)
#   BENCH_KEEP=1 scripts/bench_team.sh     # keep the work directory (caches, logs) for a look
#
# Two machines on 127.0.0.1: two peers with one mesh key (scripts/run_nodes.sh 2), two
# DISTC_DIRs, and two checkouts of the same sources at different paths and depths
# (…/alice/src/app and …/bob/work/clones/app), base_dir set to the directory holding both (the
# recipe of docs/mesh.md). Projects:
#   - a generated CMake C/C++ project (16 C and 16 C++ sources, a library and a program),
#     Debug (-g, with -fdebug-prefix-map of the build directory) and Release;
#   - the cargo project of scripts/bench_rust.sh (regex, serde with derive, serde_json, clap
#     with derive), debug and release, CARGO_INCREMENTAL=0, target dir inside each checkout.
# Each is built: cold on machine one (empty caches everywhere), then on machine two (its own
# cache empty: served by machine one's peer), then again on machine two after a clean (its own
# cache warm), and once with the cache disabled (plain compiler). Reported: machine two's share
# of compiles served by machine one's results (target >= 95 %; compiles that fail, which are
# never cached, are counted apart) and its build time against cold and local-warm; every
# compile of machine two that was not a hit is printed on stderr with its outcome.
# Single-file hits are measured by `BENCH_ONLY=hits scripts/bench_rust.sh`.
# Needs cmake, make, gcc, g++, cargo (crates fetched once), python3.
# Stops every peer it starts (by pid files).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
for t in cmake make gcc g++ cargo python3; do
  command -v "$t" >/dev/null 2>&1 || { echo "bench_team: $t is required" >&2; exit 1; }
done

(cd "$root" && cargo build --release --locked --quiet -p distc --bin distc)
work="$(mktemp -d)"
mkdir -p "$work/bin"
# A private copy: the shared target dir may be rebuilt by someone else mid-run.
cp "$root/target/release/distc" "$work/bin/distc"
bin="$work/bin/distc"
export DISTC_NODES_DIR="$work/nodes" DISTC_BIN="$bin" BASE_PORT="${BASE_PORT:-28878}"
trap '"$root/scripts/stop_nodes.sh" >/dev/null 2>&1; if [ -n "${BENCH_KEEP:-}" ]; then echo "bench_team: kept $work" >&2; else rm -rf "$work"; fi' EXIT
"$root/scripts/run_nodes.sh" 2 >/dev/null
export DISTC_CONFIG_DIR="$work/nodes/config" DISTC_AUTO_START=0 DISTC_BASE_DIR="$work"
export CARGO_INCREMENTAL=0 CARGO_TERM_COLOR=never
unset RUSTC_WRAPPER RUSTFLAGS CARGO_TARGET_DIR
m1="$work/nodes/node1" m2="$work/nodes/node2"
for _ in $(seq 1 100); do
  [ -e "$m1/peer.mesh" ] && [ -e "$m2/peer.mesh" ] && break
  sleep 0.1
done
[ -e "$m2/peer.mesh" ] || { echo "bench_team: the 2 nodes did not form a mesh" >&2; exit 1; }

# --- the sources -----------------------------------------------------------------------------
proto="$work/proto"
mkdir -p "$proto/cpp/src" "$proto/cpp/include" "$proto/rust/src"
cat >"$proto/cpp/CMakeLists.txt" <<'EOF'
cmake_minimum_required(VERSION 3.10)
project(team_bench C CXX)
file(GLOB C_SOURCES src/*.c)
file(GLOB CXX_SOURCES src/*.cpp)
add_library(parts STATIC ${C_SOURCES})
target_include_directories(parts PUBLIC include)
add_executable(team_app ${CXX_SOURCES})
target_link_libraries(team_app PRIVATE parts)
EOF
echo '#pragma once
#include <stddef.h>
#define PART_FILE __FILE__' >"$proto/cpp/include/part.h"
for i in $(seq 1 16); do
  cat >"$proto/cpp/src/part$i.c" <<EOF
#include <assert.h>
#include <stdio.h>
#include <string.h>
#include "part.h"
int part$i(const char *s) {
  assert(s != NULL);
  size_t n = strlen(s);
  char buf[64];
  snprintf(buf, sizeof buf, "%s:%zu:%d", PART_FILE, n, $i);
  return (int)strlen(buf);
}
EOF
  cat >"$proto/cpp/src/unit$i.cpp" <<EOF
#include <algorithm>
#include <map>
#include <sstream>
#include <string>
#include <vector>
extern "C" int part$i(const char *s);
std::string unit$i(const std::vector<std::string> &words) {
  std::map<std::string, int> counts;
  for (const auto &w : words) counts[w] += part$i(w.c_str());
  std::ostringstream out;
  for (const auto &[w, n] : counts) out << w << '=' << n << ';';
  std::string s = out.str();
  std::reverse(s.begin(), s.end());
  return s;
}
EOF
done
{
  echo '#include <iostream>'
  echo '#include <string>'
  echo '#include <vector>'
  for i in $(seq 1 16); do echo "std::string unit$i(const std::vector<std::string> &);"; done
  echo 'int main() { std::vector<std::string> w{"a", "bb", "a"}; size_t n = 0;'
  for i in $(seq 1 16); do echo "  n += unit$i(w).size();"; done
  echo '  std::cout << n << std::endl; }'
} >"$proto/cpp/src/main.cpp"
cat >"$proto/rust/Cargo.toml" <<'EOF'
[package]
name = "benchapp"
version = "0.1.0"
edition = "2021"

[dependencies]
regex = "1"
serde = { version = "1", features = ["derive"] }
serde_json = "1"
clap = { version = "4", features = ["derive"] }
EOF
cat >"$proto/rust/src/main.rs" <<'EOF'
use clap::Parser;
use serde::{Deserialize, Serialize};

#[derive(Parser)]
struct Args {
    #[arg(long, default_value = "a1b22c333")]
    text: String,
}

#[derive(Serialize, Deserialize)]
struct Found {
    numbers: Vec<String>,
}

fn main() {
    let args = Args::parse();
    let re = regex::Regex::new(r"\d+").expect("valid regex");
    let found = Found {
        numbers: re.find_iter(&args.text).map(|m| m.as_str().to_string()).collect(),
    };
    println!("{}", serde_json::to_string(&found).expect("serialisable"));
}
EOF
(cd "$proto/rust" && cargo fetch --quiet)
one="$work/alice/src/app" two="$work/bob/work/clones/app"
for ck in "$one" "$two"; do mkdir -p "$ck" && cp -r "$proto/." "$ck/"; done

now() { date +%s.%N; }
elapsed() { echo "$(now) - $1" | bc -l; }
json() { DISTC_DIR=$1 "$bin" stats --json; }

# build KIND PROFILE CHECKOUT MACHINE-DIR [env…]: one clean build, prints seconds.
build() {
  local kind=$1 profile=$2 ck=$3 dir=$4; shift 4
  local t0
  if [ "$kind" = cpp ]; then
    local bt=Release flags=""
    [ "$profile" = debug ] && bt=Debug && flags="-fdebug-prefix-map=$ck/cpp/build=."
    rm -rf "$ck/cpp/build"
    env "$@" cmake -S "$ck/cpp" -B "$ck/cpp/build" -DCMAKE_BUILD_TYPE=$bt \
      -DCMAKE_C_COMPILER_LAUNCHER="$bin" -DCMAKE_CXX_COMPILER_LAUNCHER="$bin" \
      -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" >/dev/null
    t0=$(now)
    env DISTC_DIR="$dir" "$@" cmake --build "$ck/cpp/build" -j 2 >/dev/null
  else
    local flag=""; [ "$profile" = release ] && flag=--release
    (cd "$ck/rust" && cargo clean --quiet)
    t0=$(now)
    (cd "$ck/rust" && env DISTC_DIR="$dir" RUSTC_WRAPPER="$bin" "$@" cargo build --offline --quiet $flag)
  fi
  elapsed "$t0"
}

rows="$work/rows.tsv"
: >"$rows"
for kind in ${BENCH_KINDS:-cpp rust}; do
  for profile in ${BENCH_PROFILES:-debug release}; do
    echo "bench_team: $kind $profile" >&2
    for d in "$m1" "$m2"; do DISTC_DIR=$d "$bin" flush >/dev/null 2>&1 || true; rm -rf "$d/manifests"; done
    plain=$(build $kind $profile "$one" "$m1" DISTC_DISABLE=1)
    cold=$(build $kind $profile "$one" "$m1")
    sleep 2 # replication to the other peer is asynchronous
    DISTC_DIR=$m2 "$bin" stats --zero >/dev/null
    crates="$work/crates-$kind-$profile.log"
    remote=$(build $kind $profile "$two" "$m2" DISTC_CRATE_LOG="$crates")
    # Every compile of machine two that was not a hit, and why (Rust: the per-crate log).
    if [ -s "$crates" ]; then
      grep -v '^\(hit\|remote-hit\) ' "$crates" | sed "s/^/bench_team: $kind $profile, machine two: /" >&2 || true
    fi
    # Compiles that fail are never cached (proc-macro2's build script probes rustc for nightly
    # features with a compile meant to fail on stable): counted apart, not in the share.
    counts=$(json "$m2" | python3 -c 'import json,sys; d=json.load(sys.stdin); u=d["uncacheable"]; f=u.get("compile-failed", 0); print(d["remote_hits"], d["hits"], d["hits"] + d["misses"] + sum(u.values()) - f, f)')
    errors=$(json "$m2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["errors_by_kind"] or "none")')
    echo "bench_team: $kind $profile, machine two: cache errors: $errors" >&2
    warm=$(build $kind $profile "$two" "$m2")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$kind" "$profile" "$plain" "$cold" "$remote" "$warm" "$counts" >>"$rows"
  done
done

python3 - "$rows" <<'EOF'
import json, statistics, sys
rows = sys.argv[1]
# With two peers and replication 2, machine one's peer pushes every entry it stores into
# machine two's store: machine two's hits are then reads of its own store (entries it never
# compiled), and only entries not yet replicated are fetched from the peer at lookup.
print("| project | plain (s) | cold, machine one (s) | machine two, from the mesh (s) | machine two, local warm (s) | two / cold | two / local warm | machine two: hits / compiles | of which fetched at lookup | failing compiles (not counted) |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for line in open(rows):
    kind, profile, plain, cold, remote, warm, counts = line.rstrip("\n").split("\t")
    rh, hits, total, failed = (int(x) for x in counts.split())
    plain, cold, remote, warm = (float(x) for x in (plain, cold, remote, warm))
    name = {"cpp": "CMake C/C++ (33 sources)", "rust": "cargo app (regex, serde, clap)"}[kind]
    share = 100.0 * hits / total if total else 0.0
    print(f"| {name}, {profile} | {plain:.2f} | {cold:.2f} | {remote:.2f} | {warm:.2f} | {remote / cold:.2f} | {remote / warm:.2f} | {hits} / {total} ({share:.0f} %) | {rh} | {failed} |")
EOF
