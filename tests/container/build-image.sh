#!/usr/bin/env bash
# Builds the image offline: static binaries on the host, the pinned engine from its wheel, the host's
# CA store, staged under target/image/, then `podman build --target runtime-prebuilt`.
# Also builds the static privitty-testproc the container test bind-mounts (never part of the image)
# at target/container-test/privitty-testproc.
# Usage: tests/container/build-image.sh [IMAGE_TAG]   (default privitty/edge:latest)
#   PRIVITTY_IMAGE_PROFILE   cargo profile of the binaries (default: image, see the root Cargo.toml)
# Prints each binary's size, and the image size on its last line.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
tag=${1:-privitty/edge:latest}
profile=${PRIVITTY_IMAGE_PROFILE:-image}
triple=x86_64-unknown-linux-gnu
bins=(privitty-init privitty-edged privitty-edge)

# One cargo invocation, so the shared dependencies are built once for all four binaries.
RUSTFLAGS='-C target-feature=+crt-static' \
  cargo build --locked --profile "$profile" --target "$triple" \
  --bin privitty-init --bin privitty-edged --bin privitty-edge --bin privitty-testproc
engine=$(tests/scripts/fetch-engine.sh)
out="target/$triple/$profile"
[ "$profile" = dev ] && out="target/$triple/debug"

stage=target/image
rm -rf "$stage"
# The directory skeleton: modes here are what the image gets (COPY keeps them; --chmod is not
# supported by every builder); /var/lib/privitty itself is created owned by uid 1000 (--chown).
mkdir -p "$stage/bin" "$stage/certs" "$stage/skel/var/lib" "$stage/skel/tmp" "$stage/data"
chmod 0755 "$stage/skel/var" "$stage/skel/var/lib"
chmod 1777 "$stage/skel/tmp"
for b in "${bins[@]}"; do
  install -m 0755 "$out/$b" "$stage/bin/$b"
done
install -m 0755 "$engine" "$stage/bin/deltachat-rpc-server"
cp /etc/ssl/certs/ca-certificates.crt "$stage/certs/ca-certificates.crt"
mkdir -p target/container-test
install -m 0755 "$out/privitty-testproc" target/container-test/privitty-testproc

for f in "$stage"/bin/* "$stage/certs/ca-certificates.crt"; do
  printf '%-28s %9d bytes\n' "$(basename "$f")" "$(stat -c %s "$f")"
done

# shellcheck source=tests/container/podman-env.sh
source tests/container/podman-env.sh
podman build --quiet --pull=never --format docker --target runtime-prebuilt -t "$tag" . >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$tag")
echo "image $tag size ${size} bytes ($((size / 1000000)) MB)"
