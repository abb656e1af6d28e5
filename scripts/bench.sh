#!/usr/bin/env bash
# distc's benchmark suite: plain compiler vs ccache vs sccache vs distc, side by side in one run.
#
#   bash scripts/bench.sh            # everything
#   BENCH_ONLY=hello bash scripts/bench.sh   # one scenario: hello | large | sqlite | project | rss
#   BENCH_RUNS=20 bash scripts/bench.sh      # more runs per measurement (default 15)
#
# Scenarios: (a) hello.c hit and miss, (b) a large C++ translation unit hit and miss,
# (c) the SQLite amalgamation `sqlite3.c` (9 MB of source in one TU, from the crates.io
# package libsqlite3-sys) hit at -O2 (its miss too with BENCH_SQLITE_MISS_RUNS=N), (d) a real
# multi-file C project (Lua 5.4, the C sources vendored by the crates.io package lua-src)
# built cold and warm with `make -j2`, (e) peak RSS of one wrapper call on a hit.
# Every tool gets its own empty cache directory. Prints a markdown table of medians and ratios;
# the raw hyperfine JSON stays in $BENCH_OUT (default: a temporary directory, printed at the end).
# Missing ccache/sccache are reported and their columns left empty (install: apt-get install
# ccache; cargo install sccache --locked; SCCACHE_BIN=PATH picks one, see scripts/sccache_bin.sh). Nothing is left running: the sccache server it starts
# is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD

runs=${BENCH_RUNS:-15}
only=${BENCH_ONLY:-all}
out=${BENCH_OUT:-$(mktemp -d)}
mkdir -p "$out"
work=$(mktemp -d)

for t in hyperfine gcc g++ make python3 /usr/bin/time; do
  command -v "$t" >/dev/null 2>&1 || { echo "bench: $t is required (apt-get install hyperfine gcc g++ make python3 time)" >&2; exit 1; }
done
have_ccache=0; command -v ccache >/dev/null 2>&1 && have_ccache=1
have_sccache=0; sccache=$(scripts/sccache_bin.sh) && have_sccache=1
[ $have_ccache = 1 ] || echo "bench: ccache not found, its column stays empty" >&2
[ $have_sccache = 1 ] || echo "bench: sccache not found, its column stays empty" >&2

cargo build --release --locked --quiet
distc=$root/target/release/distc

# Separate, empty caches for every tool; no auto-started peer (a local hit never asks one).
export DISTC_DIR=$work/distc DISTC_AUTO_START=0
export CCACHE_DIR=$work/ccache
export SCCACHE_DIR=$work/sccache SCCACHE_SERVER_PORT=$((20000 + RANDOM % 20000)) SCCACHE_IDLE_TIMEOUT=0
cleanup() {
  if [ $have_sccache = 1 ]; then "$sccache" --stop-server >/dev/null 2>&1 || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
if [ $have_sccache = 1 ]; then "$sccache" --start-server >/dev/null 2>&1 || have_sccache=0; fi

# A miss is measured as in a real build: no stored results, but the tools themselves warm.
# For distc that keeps $DISTC_DIR/compilers (the memoised compiler identity and include
# directories, computed once per compiler install); ccache keeps no such state (it checks
# the compiler by mtime), and sccache's server stays up.
clear_caches="rm -rf $DISTC_DIR/store $DISTC_DIR/manifests $DISTC_DIR/misses $DISTC_DIR/misses.log $DISTC_DIR/misses.log.old $DISTC_DIR/locks $DISTC_DIR/key.locks $CCACHE_DIR && mkdir -p $CCACHE_DIR"
[ $have_sccache = 1 ] && clear_caches="$clear_caches && rm -rf $SCCACHE_DIR/*"

# --- inputs --------------------------------------------------------------------------------
cp demo/hello.c "$work/hello.c"
cp scripts/bench_large.cpp "$work/large.cpp"

# --- helpers -------------------------------------------------------------------------------
# measure NAME PREPARE CMD... : one hyperfine run, one command per tool, in one process.
measure() {
  local name=$1 prepare=$2; shift 2
  local args=(-N --warmup 2 --runs "$runs" --export-json "$out/$name.json" --style basic)
  local cmd
  for cmd in "$@"; do
    [ -n "$prepare" ] && args+=(--prepare "bash -c '$prepare'")
    args+=("$cmd")
  done
  hyperfine "${args[@]}" >"$out/$name.log" 2>&1 || { cat "$out/$name.log" >&2; return 1; }
}

# commands FORM... : the same compile under each tool (FORM uses @CC@ for the compiler).
tools=(plain distc)
[ $have_ccache = 1 ] && tools+=(ccache)
[ $have_sccache = 1 ] && tools+=(sccache)
echo "${tools[@]}" >"$out/tools.txt"
wrap() { # wrap TOOL COMPILER
  case $1 in
    plain) echo "$2" ;;
    distc) echo "$distc $2" ;;
    ccache) echo "ccache $2" ;;
    sccache) echo "$sccache $2" ;;
  esac
}

single_tu() { # single_tu LABEL COMPILER SOURCE FLAGS [MISS_RUNS]
  local label=$1 cc=$2 src=$3 flags=$4 t cmds=() hit_runs=$runs
  for t in "${tools[@]}"; do cmds+=("$(wrap "$t" "$cc") $flags -c $src -o $work/$label-$t.o"); done
  # Miss: every run starts from empty caches (MISS_RUNS=0: hit only).
  runs=${5:-$runs}
  [ "$runs" -gt 0 ] && measure "$label-miss" "$clear_caches" "${cmds[@]}"
  runs=$hit_runs
  # Hit: warm every cache once, then measure.
  eval "$clear_caches"
  for c in "${cmds[@]}"; do $c; done
  measure "$label-hit" "" "${cmds[@]}"
}

if [ "$only" = all ] || [ "$only" = hello ]; then
  echo "bench: hello.c hit and miss" >&2
  single_tu hello gcc "$work/hello.c" "-O2"
fi
if [ "$only" = all ] || [ "$only" = large ]; then
  echo "bench: large C++ translation unit hit and miss" >&2
  single_tu large g++ "$work/large.cpp" "-O2"
fi

# crate_src CRATE VERSION SUBDIR: fetch a crates.io package with cargo and print SUBDIR of it.
crate_src() { "$root/scripts/crate_src.sh" "$@"; }

if [ "$only" = all ] || [ "$only" = sqlite ]; then
  echo "bench: sqlite3.c (libsqlite3-sys from crates.io) hit" >&2
  sq=$(crate_src libsqlite3-sys 0.30.1 sqlite3)
  cp "$sq/sqlite3.c" "$sq/sqlite3.h" "$work/"
  # A 9 MB TU compiles for about a minute at -O2, so its miss (2 warm-ups + runs, per tool)
  # is measured only when asked: BENCH_SQLITE_MISS_RUNS=3.
  single_tu sqlite gcc "$work/sqlite3.c" "-O2" "${BENCH_SQLITE_MISS_RUNS:-0}"
fi

if [ "$only" = all ] || [ "$only" = project ]; then
  echo "bench: Lua 5.4 (lua-src from crates.io) with make -j2, cold and warm" >&2
  proj=$work/lua
  "$root/scripts/lua_project.sh" "$proj"
  cmds=()
  for t in "${tools[@]}"; do cmds+=("make -s -C $proj -j2 CC='$(wrap "$t" gcc)'"); done
  measure project-cold "make -s -C $proj clean && $clear_caches" "${cmds[@]}"
  eval "$clear_caches"
  for c in "${cmds[@]}"; do make -s -C "$proj" clean; eval "$c"; done
  measure project-warm "make -s -C $proj clean" "${cmds[@]}"
fi

if [ "$only" = all ] || [ "$only" = rss ]; then
  echo "bench: peak RSS of one wrapper call on a hit" >&2
  eval "$clear_caches"
  : >"$out/rss.tsv"
  for t in "${tools[@]}"; do
    c="$(wrap "$t" gcc) -O2 -c $work/hello.c -o $work/rss-$t.o"
    $c; $c
    kb=()
    for _ in 1 2 3 4 5; do kb+=("$(/usr/bin/time -f %M $c 2>&1 >/dev/null | tail -n 1)"); done
    printf '%s\t%s\n' "$t" "$(printf '%s\n' "${kb[@]}" | sort -n | sed -n 3p)" >>"$out/rss.tsv"
  done
fi

python3 - "$out" <<'EOF'
import json, os, statistics, sys
out = sys.argv[1]
order = ["plain", "ccache", "sccache", "distc"]
tools = open(os.path.join(out, "tools.txt")).read().split()
rows = [("hello-miss", "hello.c miss"), ("hello-hit", "hello.c hit"),
        ("large-miss", "large TU miss"), ("large-hit", "large TU hit"),
        ("sqlite-miss", "sqlite3.c miss"), ("sqlite-hit", "sqlite3.c hit"),
        ("project-cold", "Lua make -j2 cold"), ("project-warm", "Lua make -j2 warm")]
print("| scenario (median ms) | " + " | ".join(order) + " | distc / ccache | distc / plain |")
print("|---|" + "---:|" * (len(order) + 2))
for name, label in rows:
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        continue
    med = {}
    # hyperfine keeps the command order, which is the order of tools.txt.
    for tool, r in zip(tools, json.load(open(path))["results"]):
        med[tool] = statistics.median(r["times"]) * 1000
    cells = [f"{med[t]:.1f}" if t in med else "" for t in order]
    rc = f"{med['distc'] / med['ccache']:.2f}" if "distc" in med and "ccache" in med else ""
    rp = f"{med['distc'] / med['plain']:.2f}" if "distc" in med and "plain" in med else ""
    print(f"| {label} | " + " | ".join(cells) + f" | {rc} | {rp} |")
rss = os.path.join(out, "rss.tsv")
if os.path.exists(rss):
    vals = dict(line.split("\t") for line in open(rss).read().split("\n") if line)
    cells = [f"{int(vals[t]) / 1024:.1f} MiB" if t in vals else "" for t in order]
    rc = f"{int(vals['distc']) / int(vals['ccache']):.2f}" if "distc" in vals and "ccache" in vals else ""
    print("| peak RSS, one hit | " + " | ".join(cells) + f" | {rc} | |")
EOF
echo "bench: raw results in $out (runs per measurement: $runs)" >&2
