#!/usr/bin/env bash
# Viewer throughput, same run (issue: the viewer API): GET /stream/:msg_id of a 100 MB protected
# file next to privitty_decrypt_file (into the files directory on tmpfs) and next to reading the
# .prv raw, with edged's RSS before, during and after (goal: /stream ≥ 0.8× the decrypt rate, RSS
# flat whatever the file size).
#
#   tests/bench/viewer-bench.sh                              # release build, 100 MB, 5 rounds
#   NO_BUILD=1 PROFILE=debug SIZE_MB=10 ROUNDS=1 tests/bench/viewer-bench.sh   # smoke run
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${PROFILE:-release}
if [ -z "${NO_BUILD:-}" ]; then
  flag=(); [ "$profile" = release ] && flag=(--release)
  cargo build "${flag[@]}" -p edged -p privitty-tests --bins
fi
tests/scripts/fetch-engine.sh >/dev/null
exec "target/$profile/privitty-viewer-bench"
