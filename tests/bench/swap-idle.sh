#!/usr/bin/env bash
# SIGHUP -> new generation ready on an idle managed stack, with the spare (PRIVITTY_SPARE=on, the
# default) and without it (off), alternating in one run: ROUNDS rounds of each, SWAPS swaps per
# round, 300 ms apart (the spare starts 100 ms after a generation is ready). Times are the log's
# own: privitty-init's "swapping to a new generation" to its "generation ready".
# Usage: tests/bench/swap-idle.sh [SWAPS] [ROUNDS]   (release build; default 40 swaps, 2 rounds)
set -euo pipefail
cd "$(dirname "$0")/../.."
swaps="${1:-40}"
rounds="${2:-2}"
tests/scripts/fetch-engine.sh >/dev/null
cargo build --locked --release -p supervisor -p edged --bins
engine="$PWD/target/engine/deltachat-rpc-server"

measure() {
    local spare="$1" work pid deadline
    work=$(mktemp -d)
    env PRIVITTY_SPARE="$spare" PRIVITTY_ACCOUNTS="$work/accounts" PRIVITTY_LISTEN=127.0.0.1:0 \
        PRIVITTY_ENGINE="$engine" PRIVITTY_LOG=info PRIVITTY_LOG_FORMAT=json \
        PRIVITTY_LICENSE_SYNC_INTERVAL=0 PRIVITTY_PROFILE=swap-idle \
        target/release/privitty-init >/dev/null 2>"$work/log" &
    pid=$!
    deadline=$((SECONDS + 30))
    until grep -q '"generation ready"' "$work/log"; do
        if [ $SECONDS -ge $deadline ]; then
            echo "the first generation was not ready in 30 s" >&2; cat "$work/log" >&2; kill "$pid"
            exit 1
        fi
        sleep 0.05
    done
    # Pacing, not waiting for an outcome: each swap must find the spare started.
    sleep 0.5
    for _ in $(seq "$swaps"); do
        kill -HUP "$pid"
        sleep 0.3
    done
    kill -TERM "$pid"
    wait "$pid" || true
    python3 - "$work/log" "$spare" <<'PY'
import datetime, json, statistics, sys

def ms(entry):
    ts = entry["timestamp"].replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(ts).timestamp() * 1000

asked, took, woken = None, [], 0
spares = set()
for line in open(sys.argv[1]):
    if not line.startswith("{"):
        continue
    entry = json.loads(line)
    message = entry.get("message")
    if message == "spare started: it waits, idle, to become the next generation":
        spares.add(entry.get("pid"))
    elif message == "swapping to a new generation":
        asked = ms(entry)
    elif message == "generation started" and asked is not None:
        woken += entry.get("pid") in spares
    elif message == "generation ready" and asked is not None:
        took.append(ms(entry) - asked)
        asked = None
took.sort()
print(
    f"swap-idle: spare={sys.argv[2]:3} SIGHUP -> new generation ready: median {statistics.median(took):.2f} ms,"
    f" p90 {took[int(len(took) * 0.9)]:.2f} ms, max {took[-1]:.2f} ms ({len(took)} swaps, {woken} woke a spare)"
)
PY
    rm -rf "$work"
}

for _ in $(seq "$rounds"); do
    measure off
    measure on
done
