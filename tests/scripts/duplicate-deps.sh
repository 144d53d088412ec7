#!/usr/bin/env bash
# Fails when the workspace links a crate in two versions that is not in KNOWN (CI lint stage): a
# new duplicate is built twice and linked twice, so it needs a reason before it goes in.
#
# Usage: tests/scripts/duplicate-deps.sh      exit 0, or 1 naming each new duplicate
set -euo pipefail
cd "$(dirname "$0")/../.."

# Crates two of our dependencies pull in different major versions of; none is ours to unify.
KNOWN=(base64 getrandom socket2 syn)

roots=$(cargo tree --locked --workspace --duplicates --depth 0 -e normal,build | awk '/^[a-z]/' | sort -u)
status=0
for crate in $(awk '{print $1}' <<<"$roots" | sort -u); do
  if [[ " ${KNOWN[*]} " != *" $crate "* ]]; then
    echo "duplicate-deps: $crate is linked in several versions: $(awk -v c="$crate" '$1 == c {print $2}' <<<"$roots" | tr '\n' ' ')" >&2
    echo "  (see cargo tree --workspace --duplicates; add it to KNOWN with the reason, or unify the versions)" >&2
    status=1
  fi
done
[ "$status" -eq 0 ] && echo "duplicate-deps: only the known duplicates (${KNOWN[*]})"
exit "$status"
