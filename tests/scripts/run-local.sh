#!/usr/bin/env bash
# Runs the whole stack on this machine, no container: privitty-init → privitty-edged → the real
# Delta Chat engine, serving http://127.0.0.1:7200 with a local data dir (default ./data).
#
#   tests/scripts/run-local.sh                 # unlicensed: read-only calls work, gated calls -32001
#   tests/scripts/run-local.sh --demo-license  # also starts the reference license server on loopback,
#                                              # creates a license and activates it at start-up
#   tests/scripts/run-local.sh --demo          # the whole story: license server, loopback mail server
#                                              # (postfix + dovecot, installed when missing: root) and
#                                              # two licensed, secure-joined gateways, alice on :7200
#                                              # and bob on :7201; prints `ready` and the next commands
#                                              # (data in temp dirs; PRIVITTY_DEMO_DIR, default ./demo,
#                                              # gets env.sh; PRIVITTY_DEMO_PORTS="7200 7201")
# Environment: PRIVITTY_ACCOUNTS (default ./data), PRIVITTY_LISTEN (default 127.0.0.1:7200),
# PRIVITTY_LICENSE_URL, and every other PRIVITTY_* variable documented in the README.
set -euo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
# Run from inside `cargo test` (the demo test), the environment carries cargo's per-package
# variables; ring's build script watches CARGO_MANIFEST_DIR, so this build and the next plain one
# would each rebuild it and everything above it.
for var in $(compgen -e | grep -E '^CARGO_(MANIFEST_|PKG_|CRATE_NAME|BIN_|TARGET_TMPDIR|PRIMARY_PACKAGE)' || true); do
  unset "$var"
done
cargo build --locked --workspace --bins >&2
engine=$(tests/scripts/fetch-engine.sh)
export PATH="$top/target/debug:$(dirname "$engine"):$PATH"
export PRIVITTY_ACCOUNTS=${PRIVITTY_ACCOUNTS:-$top/data}
export PRIVITTY_LISTEN=${PRIVITTY_LISTEN:-127.0.0.1:7200}
export PRIVITTY_ENGINE=${PRIVITTY_ENGINE:-$engine}
if [ "${1:-}" = "--demo" ]; then
  exec privitty-demo
fi
mkdir -p "$PRIVITTY_ACCOUNTS"

if [ "${1:-}" = "--demo-license" ]; then
  state="$PRIVITTY_ACCOUNTS/../license-server"
  mkdir -p "$state"
  privitty-license-server serve --state-dir "$state" --listen 127.0.0.1:0 >"$state/serve.out" 2>"$state/serve.err" &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  until [ -s "$state/serve.out" ]; do
    kill -0 $server 2>/dev/null || { cat "$state/serve.err" >&2; exit 1; }
    sleep 0.1
  done
  export PRIVITTY_LICENSE_PUBKEY="$state/license-pubkey.pem"
  if [ ! -f "$PRIVITTY_ACCOUNTS/privitty.lic" ]; then
    PRIVITTY_LICENSE_URL=$(privitty-license-server admin --state-dir "$state" create-license --seats 1)
    export PRIVITTY_LICENSE_URL
  fi
  echo "demo license server: $(head -n1 "$state/serve.out")" >&2
fi

echo "serving on http://$PRIVITTY_LISTEN with data in $PRIVITTY_ACCOUNTS (Ctrl-C stops)" >&2
privitty-init
