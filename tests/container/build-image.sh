#!/usr/bin/env bash
# Builds the image offline: static release binaries on the host, the pinned engine from its wheel,
# the host's CA store, staged under target/image/, then `podman build --target runtime-prebuilt`.
# Usage: tests/container/build-image.sh [IMAGE_TAG]   (default privitty/edge:latest)
# Prints the image size in bytes and MB on its last line.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
tag=${1:-privitty/edge:latest}
triple=x86_64-unknown-linux-gnu

RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --locked --release --target "$triple" -p supervisor -p edged -p licensectl
engine=$(tests/scripts/fetch-engine.sh)

stage=target/image
rm -rf "$stage"
mkdir -p "$stage/bin" "$stage/certs" "$stage/skel/var/lib/privitty" "$stage/skel/tmp"
for b in privitty-init privitty-edged privitty-edge; do
  install -m 0755 "target/$triple/release/$b" "$stage/bin/$b"
done
install -m 0755 "$engine" "$stage/bin/deltachat-rpc-server"
cp /etc/ssl/certs/ca-certificates.crt "$stage/certs/ca-certificates.crt"

# shellcheck source=tests/container/podman-env.sh
source tests/container/podman-env.sh
podman build --quiet --pull=never --format docker --target runtime-prebuilt -t "$tag" . >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "image $tag size ${size} bytes ($((size / 1000000)) MB)"
