#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit tests and end-to-end tests with real
# compilers, make, CMake and real peers on loopback. Usage: bash scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo build --workspace --all-targets --locked
# Multi-peer tests start real peers and compilers; on a small machine, four at a time keeps
# each one's peers from being starved into timeouts that a real mesh would not see.
# --no-fail-fast: one failing test binary does not hide what fails in the others.
cargo test --workspace --all-targets --locked --no-fail-fast -- --test-threads=4
