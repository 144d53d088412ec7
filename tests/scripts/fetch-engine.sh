#!/usr/bin/env bash
# Installs the pinned Delta Chat engine (deltachat-rpc-server, a static binary inside its PyPI wheel)
# at target/engine/deltachat-rpc-server, checking the wheel's hash. Idempotent.
set -euo pipefail
version=2.65.0
sha256=f2ec9f161ad0ebd3352791a7f8a72d5a1a0e4f3babbd3f12ca8cef40ad8b8aa0
top=$(cd "$(dirname "$0")/../.." && pwd)
dest="$top/target/engine"
bin="$dest/deltachat-rpc-server"
if [ -x "$bin" ] && [ "$("$bin" --version 2>/dev/null)" = "$version" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "deltachat-rpc-server==$version --hash=sha256:$sha256" >"$work/req.txt"
python3 -m pip download --quiet --no-deps --require-hashes --only-binary=:all: \
  --platform manylinux2014_x86_64 --python-version 3.11 -r "$work/req.txt" -d "$work" >&2
python3 - "$work" "$bin.tmp" <<'PY'
import sys, zipfile, glob, shutil, os
wheel = glob.glob(os.path.join(sys.argv[1], "*.whl"))[0]
with zipfile.ZipFile(wheel) as z, z.open("deltachat_rpc_server/deltachat-rpc-server") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
chmod 0755 "$bin.tmp"
mv "$bin.tmp" "$bin"
echo "$bin"
