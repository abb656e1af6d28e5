#!/usr/bin/env bash
# Sets up a benchmark C++ project in DEST: LevelDB 1.22's sources (vendored by the crates.io
# package leveldb-sys, fetched with scripts/crate_src.sh), the port_config.h its CMake build
# would generate for Linux (fdatasync, no crc32c or snappy), and a Makefile that builds
# libleveldb.a, one compile per file, with `$(CXX)` (so `make CXX='distc g++'` wraps each one).
#
#   scripts/leveldb_project.sh DEST   then: make -C DEST -j2 CXX='distc g++' libleveldb.a
set -euo pipefail
[ $# = 1 ] || { echo "usage: $0 DEST" >&2; exit 2; }
src=$("$(dirname "$0")/crate_src.sh" leveldb-sys 2.0.9 deps)/leveldb-1.22
mkdir -p "$1"
cp -r "$src/." "$1"
cat >"$1/port/port_config.h" <<'H'
#ifndef STORAGE_LEVELDB_PORT_PORT_CONFIG_H_
#define STORAGE_LEVELDB_PORT_PORT_CONFIG_H_
#define HAVE_FDATASYNC 1
#define HAVE_FULLFSYNC 0
#define HAVE_CRC32C 0
#define HAVE_SNAPPY 0
#define LEVELDB_IS_BIG_ENDIAN 0
#endif
H
cat >"$1/Makefile" <<'MAKE'
CXX ?= g++
CXXFLAGS = -O2 -Wall -g -std=c++11
CPPFLAGS = -I. -Iinclude -DLEVELDB_PLATFORM_POSIX=1 -DLEVELDB_COMPILE_LIBRARY
SRCS = $(filter-out %_test.cc %_bench.cc db/leveldbutil.cc util/env_windows.cc \
	util/testharness.cc util/testutil.cc, $(wildcard db/*.cc table/*.cc util/*.cc)) \
	helpers/memenv/memenv.cc
OBJS = $(SRCS:.cc=.o)
libleveldb.a: $(OBJS)
	ar rcs $@ $(OBJS)
%.o: %.cc
	$(CXX) $(CPPFLAGS) $(CXXFLAGS) -c $< -o $@
clean:
	rm -f $(OBJS) libleveldb.a
MAKE
