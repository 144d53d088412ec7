#!/usr/bin/env bash
# Peer protocol timings against the mail hop, same run (issue: protected files between gateways):
# starts the loopback mail server and complete gateways, then prints handshake, send → the peer
# can decrypt and revoke → the peer refuses next to a plain message's delivery time.
#
#   tests/bench/peer-bench.sh                       # release build, 8 rounds, 3 handshakes
#   NO_BUILD=1 PROFILE=debug ROUNDS=2 PAIRS=1 tests/bench/peer-bench.sh   # smoke run
set -euo pipefail
cd "$(dirname "$0")/../.."
profile=${PROFILE:-release}
if [ -z "${NO_BUILD:-}" ]; then
  flag=(); [ "$profile" = release ] && flag=(--release)
  cargo build "${flag[@]}" --workspace --bins
fi
tests/scripts/fetch-engine.sh >/dev/null
exec "target/$profile/privitty-peer-bench"
