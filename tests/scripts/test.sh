#!/usr/bin/env bash
# The project's test command: builds every binary the system tests start, then runs all tests.
set -euo pipefail
cd "$(dirname "$0")/../.."
tests/scripts/fetch-engine.sh >/dev/null
cargo build --locked --workspace --bins
cargo test --locked --workspace "$@"
