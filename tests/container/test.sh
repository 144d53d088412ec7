#!/usr/bin/env bash
# The container test: builds the image offline (build-image.sh), then runs the `container::` tests (tests/tests/system/container.rs)
# against it with rootful podman (configuration and storage from podman-env.sh, under target/podman).
# Usage: tests/container/test.sh [a test name within container::, e.g. late_activation]
#   PRIVITTY_IMAGE   test this already built image instead of building one
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"

image=${PRIVITTY_IMAGE:-}
if [ -z "$image" ]; then
  image=privitty/edge:test
  tests/container/build-image.sh "$image"
fi
# The test starts the reference license server from the debug build. `--workspace`, as
# tests/scripts/test.sh builds: the same features, so after it nothing is rebuilt.
# Cargo's reason when it rebuilds anything here (first lines only), to keep this step a no-op.
CARGO_LOG=cargo::core::compiler::fingerprint=info cargo build --locked --workspace --bins 2>&1 |
  { grep -E "Compiling|Finished|stale: |dirty: " || true; } | cut -c1-400 | awk 'NR <= 40'

# shellcheck source=tests/container/podman-env.sh
source tests/container/podman-env.sh
# The container tests are #[ignore]d in the workspace run (no image there); here they must run.
PRIVITTY_IMAGE=$image cargo test --locked --workspace --test system -- --ignored --nocapture "container::${1:-}"
