#!/usr/bin/env bash
# Rust benchmark: plain cargo vs sccache vs distc (RUSTC_WRAPPER), side by side in one run.
#
#   bash scripts/bench_rust.sh                 # debug and release, 3 runs per measurement
#   BENCH_RUNS=5 bash scripts/bench_rust.sh    # more runs
#   BENCH_PROFILES=release bash scripts/bench_rust.sh
#   BENCH_ONLY=hits bash scripts/bench_rust.sh   # only the single-file hits (BENCH_CALLGRIND=1:
#                                                 # their instructions too)
#
# A generated cargo project depending on regex, serde (derive), serde_json and clap (derive) is
# built cold (empty caches, after `cargo clean`) and warm (caches filled, after `cargo clean`),
# in debug and release, with CARGO_INCREMENTAL=0 for every tool (incremental compiles are not
# cacheable by either wrapper). Prints a markdown table of medians (seconds) and the ratios
# distc/plain and distc/sccache. Then single-file hits (see `single_file_hits`; needs hyperfine,
# gcc, and ccache for its column): `distc build hello.rs` against ccache's hello.c hit, and
# cargo's per-crate call against a C hit of the same output size.
#
# sccache is installed with `cargo install sccache --locked` when missing (this script only).
# crates.io must be reachable for the first run (dependencies are fetched once). Every tool has
# its own empty cache directory; the sccache server started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

runs=${BENCH_RUNS:-3}
profiles=${BENCH_PROFILES:-debug release}
only=${BENCH_ONLY:-}
[ "$only" = hits ] && profiles=""
work=$(mktemp -d)

command -v cargo >/dev/null 2>&1 || { echo "bench_rust: cargo is required" >&2; exit 1; }
if [ -n "$profiles" ] && ! scripts/sccache_bin.sh >/dev/null; then
  echo "bench_rust: sccache not found; installing it with cargo install sccache --locked" >&2
  cargo install sccache --locked >&2 || true
fi
have_sccache=0; sccache=$(scripts/sccache_bin.sh) && have_sccache=1
[ $have_sccache = 1 ] || echo "bench_rust: sccache unavailable, its column stays empty" >&2

cargo build --release --quiet
# A private copy: the shared target dir may be rebuilt by someone else mid-run.
mkdir -p "$work/bin"
cp "$root/target/release/distc" "$work/bin/distc"
distc=$work/bin/distc

export DISTC_DIR=$work/distc DISTC_AUTO_START=0
export SCCACHE_DIR=$work/sccache SCCACHE_SERVER_PORT=$((20000 + RANDOM % 20000)) SCCACHE_IDLE_TIMEOUT=0
export CARGO_INCREMENTAL=0 CARGO_TERM_COLOR=never
export CARGO_TARGET_DIR=$work/target
unset RUSTC_WRAPPER RUSTFLAGS
cleanup() {
  if [ $have_sccache = 1 ]; then "$sccache" --stop-server >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
if [ $have_sccache = 1 ]; then "$sccache" --start-server >/dev/null 2>&1 || have_sccache=0; fi

# --- the project -----------------------------------------------------------------------------
proj=$work/proj
mkdir -p "$proj/src"
cat > "$proj/Cargo.toml" <<'EOF'
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
cat > "$proj/src/main.rs" <<'EOF'
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
[ -z "$profiles" ] || (cd "$proj" && cargo fetch --quiet)
printf 'fn main() {\n    println!("hello");\n}\n' > "$work/hello.rs"

now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR==0) print ""; else if (NR%2) print a[(NR+1)/2]; else printf "%.3f\n", (a[NR/2]+a[NR/2+1])/2}'; }

wrapper_of() {
  case $1 in
    plain) echo "" ;;
    sccache) echo "$sccache" ;;
    distc) echo "$distc" ;;
  esac
}

clear_cache() {
  case $1 in
    sccache) rm -rf "${SCCACHE_DIR:?}"/* ;;
    distc) rm -rf "$DISTC_DIR/store" "$DISTC_DIR/stats" "$DISTC_DIR/manifests" ;;  # keep the memoised rustc identity
  esac
}

build() { # tool profile
  local flag=""; [ "$2" = release ] && flag=--release
  (cd "$proj" && RUSTC_WRAPPER=$(wrapper_of "$1") cargo build --offline --quiet $flag)
}

time_build() { # tool profile -> seconds
  local t0 t1; t0=$(now); build "$1" "$2"; t1=$(now)
  echo "$t1 - $t0" | bc -l
}

declare -A result
for profile in $profiles; do
  for tool in plain sccache distc; do
    [ $tool = sccache ] && [ $have_sccache = 0 ] && continue
    cold=(); warm=()
    for _ in $(seq "$runs"); do
      clear_cache $tool
      (cd "$proj" && cargo clean --quiet)
      cold+=("$(time_build $tool "$profile")")
    done
    for _ in $(seq "$runs"); do
      (cd "$proj" && cargo clean --quiet)
      warm+=("$(time_build $tool "$profile")")
    done
    result[$profile-cold-$tool]=$(printf '%s\n' "${cold[@]}" | median)
    result[$profile-warm-$tool]=$(printf '%s\n' "${warm[@]}" | median)
    echo "bench_rust: $profile $tool cold ${result[$profile-cold-$tool]} s, warm ${result[$profile-warm-$tool]} s" >&2
  done
done

# Single-file hits, side by side in one hyperfine run (medians of wall time, means of CPU):
# `distc build hello.rs`; the wrapper's hit on cargo's own rustc command line for the same
# one-file crate (captured from `cargo build -v`, run as `distc RUSTC ARGS…` in the crate's
# directory); a `distc gcc -c` hit whose object is as large as that executable (a C array of its
# bytes: same size and compressibility); `distc gcc -c hello.c`; ccache's `gcc -c hello.c` hit.
# With BENCH_CALLGRIND=1 also the instructions of each (valgrind; SHA-NI and AVX-512 hidden).
single_file_hits() {
  command -v hyperfine >/dev/null 2>&1 || { echo "bench_rust: hyperfine is required for the single-file hits" >&2; return; }
  local hw=$work/hits
  mkdir -p "$hw/app/src"
  cp "$work/hello.rs" "$hw/hello.rs"
  cp "$work/hello.rs" "$hw/app/src/main.rs"
  cp "$root/demo/hello.c" "$hw/hello.c"
  printf '[package]\nname = "hello"\nversion = "0.1.0"\nedition = "2021"\n' >"$hw/app/Cargo.toml"
  local line
  line=$(cd "$hw/app" && CARGO_TARGET_DIR=$hw/app/target cargo build -v 2>&1 |
    sed -n 's/^ *Running `\(.*rustc --crate-name hello .*\)`$/\1/p' | head -1)
  [ -n "$line" ] || { echo "bench_rust: no rustc command line in cargo build -v" >&2; return 1; }
  local exe
  exe=$(ls "$hw"/app/target/debug/deps/hello-* | grep -v '\.d$' | head -1)
  python3 -c 'import sys; d=open(sys.argv[1],"rb").read(); print("const unsigned char big[%d] = {%s};" % (len(d), ",".join(map(str, d))))' "$exe" >"$hw/big.c"
  local names=(
    "distc build hello.rs"
    "distc rustc: cargo's per-crate call (hello)"
    "distc gcc -c big.c (object as large as hello)"
    "distc gcc -c hello.c"
    "ccache gcc -c hello.c"
  )
  local cmds=(
    "$distc build $hw/hello.rs -o $hw/hello"
    "$distc $line"
    "$distc gcc -O2 -c $hw/big.c -o $hw/big.o"
    "$distc gcc -O2 -c $hw/hello.c -o $hw/h1.o"
    "ccache gcc -O2 -c $hw/hello.c -o $hw/h2.o"
  )
  (
    cd "$hw/app"
    export DISTC_DIR=$work/hits-distc CCACHE_DIR=$work/hits-ccache
    local c args=()
    for i in "${!cmds[@]}"; do
      c=${cmds[$i]}
      [[ $c == ccache* ]] && ! command -v ccache >/dev/null 2>&1 && continue
      eval "$c" >/dev/null && eval "$c" >/dev/null # the miss, then a first hit
      args+=(-n "${names[$i]}" "$c")
    done
    # The miss of `distc build hello.rs`: its store emptied before each run.
    hyperfine -N --warmup 1 --runs 3 --style none --export-json "$work/miss.json" \
      --prepare "rm -rf $DISTC_DIR/store $DISTC_DIR/manifests" \
      -n "distc build hello.rs (miss)" "${cmds[0]}" >/dev/null
    hyperfine -N --warmup 3 --runs $((runs * 10)) --style none --export-json "$work/hits.json" \
      "${args[@]}" >/dev/null
    if [ "${BENCH_CALLGRIND:-0}" = 1 ] && command -v valgrind >/dev/null 2>&1; then
      for i in "${!cmds[@]}"; do
        n=$(eval "valgrind --tool=callgrind --callgrind-out-file=/dev/null ${cmds[$i]}" 2>&1 >/dev/null |
          sed -n 's/.*Collected : \([0-9]*\).*/\1/p')
        printf '%s\t%s\n' "${names[$i]}" "$n"
      done >"$work/instructions.tsv"
    fi
  )
  python3 - "$work/hits.json" "$work/miss.json" "$work/instructions.tsv" <<'PY'
import json, os, statistics, sys
hits, miss, instr = sys.argv[1:4]
res = json.load(open(hits))["results"]
med = {r["command"]: statistics.median(r["times"]) * 1000 for r in res}
cpu = {r["command"]: (r["user"] + r["system"]) * 1000 for r in res}
counts = {}
if os.path.exists(instr):
    for l in open(instr):
        k, _, v = l.rstrip("\n").partition("\t")
        if v:
            counts[k] = int(v)
m = json.load(open(miss))["results"][0]
print(f"\n| hit, one file ({len(res[0]['times'])} runs) | median ms | CPU ms (user + sys, mean) | instructions |")
print("|---|---:|---:|---:|")
for k in med:
    n = f"{counts[k] / 1e6:.2f} M" if k in counts else ""
    print(f"| {k} | {med[k]:.1f} | {cpu[k]:.1f} | {n} |")
print(f"| distc build hello.rs (miss, {len(m['times'])} runs) | {statistics.median(m['times']) * 1000:.0f} | {(m['user'] + m['system']) * 1000:.0f} | |")
def ratio(a, b, what):
    if a in med and b in med:
        extra = f", instructions {counts[a] / counts[b]:.2f}" if a in counts and b in counts else ""
        print(f"- {what}: {med[a] / med[b]:.2f} (median), CPU {cpu[a] / cpu[b]:.2f}{extra}")
print()
ratio("distc build hello.rs", "ccache gcc -c hello.c", "`distc build hello.rs` hit / ccache's hello.c hit")
ratio("distc rustc: cargo's per-crate call (hello)", "distc gcc -c big.c (object as large as hello)", "cargo's per-crate hit / the C hit of the same output size")
PY
}

ratio() { if [ -n "$1" ] && [ -n "$2" ]; then echo "scale=2; $1 / $2" | bc -l | sed 's/^\./0./'; fi; }
fmt() { if [ -n "$1" ]; then printf '%.2f' "$1"; fi; }

echo
echo "rustc $(rustc -V | cut -d' ' -f2), $(nproc) CPUs, $runs runs per cell, medians in seconds"
if [ -n "$profiles" ]; then
echo
echo "| build | cargo | sccache | distc | distc / cargo | distc / sccache |"
echo "|---|---:|---:|---:|---:|---:|"
for profile in $profiles; do
  for kind in cold warm; do
    p=${result[$profile-$kind-plain]:-}; s=${result[$profile-$kind-sccache]:-}; d=${result[$profile-$kind-distc]:-}
    echo "| $profile $kind | $(fmt "$p") | $(fmt "$s") | $(fmt "$d") | $(ratio "$d" "$p") | $(ratio "$d" "$s") |"
  done
done
fi
single_file_hits
