#!/usr/bin/env bash
# Rust benchmark: plain cargo vs sccache vs distc (RUSTC_WRAPPER), side by side in one run.
#
#   bash scripts/bench_rust.sh                 # debug and release, 3 runs per measurement
#   BENCH_RUNS=5 bash scripts/bench_rust.sh    # more runs
#   BENCH_PROFILES=release bash scripts/bench_rust.sh
#
# A generated cargo project depending on regex, serde (derive), serde_json and clap (derive) is
# built cold (empty caches, after `cargo clean`) and warm (caches filled, after `cargo clean`),
# in debug and release, with CARGO_INCREMENTAL=0 for every tool (incremental compiles are not
# cacheable by either wrapper). Then `distc build hello.rs`, miss vs hit. Prints a markdown table
# of medians (seconds) and the ratios distc/plain and distc/sccache.
#
# sccache is installed with `cargo install sccache --locked` when missing (this script only).
# crates.io must be reachable for the first run (dependencies are fetched once). Every tool has
# its own empty cache directory; the sccache server started here is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

runs=${BENCH_RUNS:-3}
profiles=${BENCH_PROFILES:-debug release}
work=$(mktemp -d)

command -v cargo >/dev/null 2>&1 || { echo "bench_rust: cargo is required" >&2; exit 1; }
if ! scripts/sccache_bin.sh >/dev/null; then
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
(cd "$proj" && cargo fetch --quiet)
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

# distc build hello.rs: miss (empty store) vs hit.
miss=(); hit=()
for _ in $(seq $((runs * 3))); do
  clear_cache distc
  t0=$(now); (cd "$work" && "$distc" build hello.rs -o hello >/dev/null); t1=$(now)
  miss+=("$(echo "$t1 - $t0" | bc -l)")
  t0=$(now); (cd "$work" && "$distc" build hello.rs -o hello >/dev/null); t1=$(now)
  hit+=("$(echo "$t1 - $t0" | bc -l)")
done
hello_miss=$(printf '%s\n' "${miss[@]}" | median)
hello_hit=$(printf '%s\n' "${hit[@]}" | median)

ratio() { if [ -n "$1" ] && [ -n "$2" ]; then echo "scale=2; $1 / $2" | bc -l | sed 's/^\./0./'; fi; }
fmt() { if [ -n "$1" ]; then printf '%.2f' "$1"; fi; }

echo
echo "rustc $(rustc -V | cut -d' ' -f2), $(nproc) CPUs, $runs runs per cell, medians in seconds"
echo
echo "| build | cargo | sccache | distc | distc / cargo | distc / sccache |"
echo "|---|---:|---:|---:|---:|---:|"
for profile in $profiles; do
  for kind in cold warm; do
    p=${result[$profile-$kind-plain]:-}; s=${result[$profile-$kind-sccache]:-}; d=${result[$profile-$kind-distc]:-}
    echo "| $profile $kind | $(fmt "$p") | $(fmt "$s") | $(fmt "$d") | $(ratio "$d" "$p") | $(ratio "$d" "$s") |"
  done
done
echo
echo "| distc build hello.rs | miss | hit | hit / miss |"
echo "|---|---:|---:|---:|"
echo "| | $(fmt "$hello_miss") | $(fmt "$hello_hit") | $(ratio "$hello_hit" "$hello_miss") |"
