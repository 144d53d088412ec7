#!/usr/bin/env bash
# CPU a generation swap costs, by process: privitty-init itself, the generations (the new one's
# start and the old one's stop, reaped by privitty-init), and the engine (the same process all
# along: it is handed over). An idle managed stack, a SIGHUP swap 100 ms after the previous one
# was ready (back to back, a generation would be stopped before its peer agent's first look at the
# account, which is part of what a swap costs).
# Usage: tests/bench/swap-cpu.sh [SWAPS] [BASELINE_BIN_DIR]
#   BASELINE_BIN_DIR: another build's release binaries (privitty-init, privitty-edged), measured
#   in the same run, before this build's.
set -euo pipefail
cd "$(dirname "$0")/../.."
swaps="${1:-200}"
baseline="${2:-}"
tests/scripts/fetch-engine.sh >/dev/null
cargo build --locked --release -p supervisor -p edged --bins
engine="$PWD/target/engine/deltachat-rpc-server"
tck=$(getconf CLK_TCK)

# utime stime cutime cstime of a pid (fields 14-17 of /proc/<pid>/stat, after the comm field).
times_of() { sed 's/^.*) //' "/proc/$1/stat" | awk '{print $12, $13, $14, $15}'; }

measure() {
    local bin="$1" label="$2" work pid ready engine_pid
    work=$(mktemp -d)
    env PRIVITTY_ACCOUNTS="$work/accounts" PRIVITTY_LISTEN=127.0.0.1:0 PRIVITTY_ENGINE="$engine" \
        PRIVITTY_LOG=info PRIVITTY_LOG_FORMAT=json PRIVITTY_LICENSE_SYNC_INTERVAL=0 \
        PRIVITTY_PROFILE=swap-cpu "$bin/privitty-init" >/dev/null 2>"$work/log" &
    pid=$!
    ready() { grep -c '"generation ready"' "$work/log" || true; }
    wait_ready() {
        local deadline=$((SECONDS + 30))
        until [ "$(ready)" -ge "$1" ]; do
            if [ $SECONDS -ge $deadline ]; then
                echo "generation $1 not ready in 30 s" >&2; cat "$work/log" >&2; kill "$pid"; exit 1
            fi
            sleep 0.01
        done
    }
    wait_ready 1
    engine_pid=$(pgrep -n -f "^$engine")
    read -r u s cu cs < <(times_of "$pid")
    read -r eu es _ _ < <(times_of "$engine_pid")
    for i in $(seq 1 "$swaps"); do
        kill -HUP "$pid"
        wait_ready $((i + 1))
        sleep 0.1
    done
    # The last old generation is reaped once it has stopped.
    local deadline=$((SECONDS + 10))
    until [ "$(grep -c '"generation stopped"' "$work/log" || true)" -ge "$swaps" ] || [ $SECONDS -ge $deadline ]; do
        sleep 0.01
    done
    read -r u2 s2 cu2 cs2 < <(times_of "$pid")
    read -r eu2 es2 _ _ < <(times_of "$engine_pid")
    same=$([ "$(pgrep -n -f "^$engine")" = "$engine_pid" ] && echo yes || echo no)
    kill "$pid"
    wait "$pid" 2>/dev/null || true
    rm -rf "$work"
    python3 - "$label" "$swaps" "$tck" "$u" "$s" "$cu" "$cs" "$eu" "$es" "$u2" "$s2" "$cu2" "$cs2" "$eu2" "$es2" "$same" <<'PY'
import sys
label, n, t = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
a = list(map(int, sys.argv[4:10])); b = list(map(int, sys.argv[10:16])); same = sys.argv[16]
ms = lambda i: (b[i] - a[i]) * 1000 / t / n
init, gens, eng = ms(0) + ms(1), ms(2) + ms(3), ms(4) + ms(5)
print(f"swap-cpu: {label:9} per swap: privitty-init {init:5.2f} ms, generations {gens:5.2f} ms, "
      f"engine {eng:5.2f} ms, all {init + gens + eng:5.2f} ms  ({n} swaps; one engine all along: {same})")
PY
}

if [ -n "$baseline" ]; then
    measure "$baseline" baseline
fi
measure "$PWD/target/release" this
