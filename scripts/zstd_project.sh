#!/usr/bin/env bash
# Sets up a benchmark C project in DEST: the zstd library's C sources (vendored by the crates.io
# package zstd-sys, fetched with scripts/crate_src.sh) and a Makefile that builds libzstd.a, one
# compile per file, with `$(CC)` (so `make CC='distc gcc'` wraps each one). The x86-64 assembler
# decoder is left out (ZSTD_DISABLE_ASM): every compile is C.
#
#   scripts/zstd_project.sh DEST      then: make -C DEST -j2 CC='distc gcc' libzstd.a
set -euo pipefail
[ $# = 1 ] || { echo "usage: $0 DEST" >&2; exit 2; }
src=$("$(dirname "$0")/crate_src.sh" zstd-sys 2.0.10+zstd.1.5.6 zstd)/lib
mkdir -p "$1"
cp -r "$src/." "$1"
rm -f "$1/Makefile"
cat >"$1/Makefile" <<'MAKE'
CC ?= gcc
CFLAGS = -O2 -Wall -g
CPPFLAGS = -DZSTD_DISABLE_ASM
SRCS = $(wildcard common/*.c compress/*.c decompress/*.c dictBuilder/*.c)
OBJS = $(SRCS:.c=.o)
libzstd.a: $(OBJS)
	ar rcs $@ $(OBJS)
%.o: %.c
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@
clean:
	rm -f $(OBJS) libzstd.a
MAKE
