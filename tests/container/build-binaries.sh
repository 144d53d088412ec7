#!/usr/bin/env bash
# Builds the image's executable on the host: the multi-call `privitty` (supervisor/multicall),
# static, non-PIE, with the `image` profile (root Cargo.toml), plus the static privitty-testproc the
# container test bind-mounts (never part of the image). Prints the output directory on stdout.
# The Dockerfile's `builder` stage runs the same cargo command (keep the two in step).
# Usage: tests/container/build-binaries.sh
#   PRIVITTY_IMAGE_PROFILE   cargo profile (default: image)
#
# Why these flags: crt-static makes binaries that run FROM scratch; relocation-model=static makes
# them non-PIE, so the kernel maps them at a fixed address and nothing is relocated at start-up (a
# static-pie rewrites ~10 000 pointers and dirties every page they sit on: anonymous memory in
# every process, PID 1 included; see supervisor/README.md, "Where the memory goes").
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
profile=${PRIVITTY_IMAGE_PROFILE:-image}
triple=x86_64-unknown-linux-gnu
RUSTFLAGS='-C target-feature=+crt-static -C relocation-model=static' \
  cargo build --locked --profile "$profile" --target "$triple" \
  --bin privitty --bin privitty-testproc >&2
out="target/$triple/$profile"
[ "$profile" = dev ] && out="target/$triple/debug"
echo "$top/$out"
