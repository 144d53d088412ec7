#!/usr/bin/env bash
# Builds the image offline: the multi-call executable on the host (build-binaries.sh), the pinned
# engine from its wheel, the host's CA store, staged under target/image/, then
# `podman build --target runtime-prebuilt`. Also installs the static privitty-testproc the container
# test bind-mounts (never part of the image) at target/container-test/privitty-testproc.
# Usage: tests/container/build-image.sh [IMAGE_TAG]   (default privitty/edge:latest)
#   PRIVITTY_IMAGE_PROFILE   cargo profile of the binaries (default: image, see the root Cargo.toml)
# Prints the image's contents with their sizes, and the image size on its last line.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
tag=${1:-privitty/edge:latest}

out=$(tests/container/build-binaries.sh)
engine=$(tests/scripts/fetch-engine.sh)

stage=target/image
rm -rf "$stage"
# The directory skeleton: modes here are what the image gets (COPY keeps them; --chmod is not
# supported by every builder); /var/lib/privitty itself is created owned by uid 1000 (--chown).
mkdir -p "$stage/bin" "$stage/certs" "$stage/skel/var/lib" "$stage/skel/tmp" "$stage/data"
chmod 0755 "$stage/skel/var" "$stage/skel/var/lib"
chmod 1777 "$stage/skel/tmp"
# One executable; the other names are symlinks to it (COPY keeps symlinks; the image has no `ln`).
install -m 0755 "$out/privitty" "$stage/bin/privitty-init"
for name in privitty-edged privitty-edge licensectl; do
  ln -s privitty-init "$stage/bin/$name"
done
install -m 0755 "$engine" "$stage/bin/deltachat-rpc-server"
cp /etc/ssl/certs/ca-certificates.crt "$stage/certs/ca-certificates.crt"
mkdir -p target/container-test
install -m 0755 "$out/privitty-testproc" target/container-test/privitty-testproc

# shellcheck source=tests/container/podman-env.sh
source tests/container/podman-env.sh
podman build --quiet --pull=never --format docker --target runtime-prebuilt -t "$tag" . >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$tag")

# The breakdown: every file the image holds, from the staged tree and rootfs/ (the image's only
# other content), largest first.
mb() { awk -v b="$1" -v w="${2:-6}" 'BEGIN { printf "%*.2f MB", w, b / 1000000 }'; }
{
  for f in "$stage"/bin/*; do
    name=/usr/local/bin/$(basename "$f")
    if [ -L "$f" ]; then
      printf '%s\t%s\t-> %s\n' 0 "$name" "$(readlink "$f")"
    else
      printf '%s\t%s\t\n' "$(stat -c %s "$f")" "$name"
    fi
  done
  printf '%s\t%s\t\n' "$(stat -c %s "$stage/certs/ca-certificates.crt")" /etc/ssl/certs/ca-certificates.crt
  printf '%s\t%s\t\n' "$(find rootfs -type f -printf '%s\n' | awk '{s += $1} END {print s + 0}')" \
    "rootfs/ (passwd, group, nsswitch.conf, notes)"
} | sort -t$'\t' -k1,1nr | while IFS=$'\t' read -r bytes name note; do
  printf '  %-48s %10s bytes %s %s\n' "$name" "$bytes" "$(mb "$bytes")" "$note"
done
echo "image $tag size ${size} bytes ($(mb "$size" 0))"
