#!/usr/bin/env bash
# Sets up the benchmarks' multi-file C project in DEST: Lua 5.4's C sources (vendored by the
# crates.io package lua-src, fetched with scripts/crate_src.sh) and a Makefile that builds
# liblua.a, one compile per file, with `$(CC)` (so `make CC='distc gcc'` wraps each one).
#
#   scripts/lua_project.sh DEST      then: make -C DEST -j2 CC='distc gcc'; make -C DEST clean
set -euo pipefail
[ $# = 1 ] || { echo "usage: $0 DEST" >&2; exit 2; }
src=$("$(dirname "$0")/crate_src.sh" lua-src 547.1.0 lua-5.4.7)
cp -r "$src" "$1"
cat >"$1/Makefile" <<'MAKE'
CC ?= gcc
CFLAGS = -O2 -Wall -DLUA_USE_LINUX -g
OBJS = $(patsubst %.c,%.o,$(wildcard *.c))
liblua.a: $(OBJS)
	ar rcs $@ $(OBJS)
%.o: %.c
	$(CC) $(CFLAGS) -c $< -o $@
clean:
	rm -f *.o liblua.a
MAKE
