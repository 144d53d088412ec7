#!/usr/bin/env bash
# The project's test command: builds every binary the system tests start, then runs all tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
tests/scripts/fetch-engine.sh >/dev/null
cargo build --locked --workspace --bins
# Most system tests wait (for a mail hop, a child process, a license server), not compute: two
# tests per core keep the cores busy. On a 2-core machine the system tests took 215-224 s
# at 2 at a time and 155-159 s at 4, all passing. RUST_TEST_THREADS set by the caller wins.
export RUST_TEST_THREADS="${RUST_TEST_THREADS:-$(( $(nproc) * 2 ))}"
cargo test --locked --workspace "$@"
