#!/usr/bin/env bash
# Benchmarks privitty-init (release build, --plain) next to Debian's tini, in the same run, each as
# PID 1 of a fresh PID namespace:
#   - RSS of the init, idle, with a sleeping child;
#   - signal-forward latency: kill(init, SIGUSR1) until the child has it (p50/p99/max);
#   - orphan reaping: N orphans released at once until the init has reaped them all.
# Prints a table. Needs root (unshare --pid). Usage: tests/bench/init-bench.sh [SAMPLES] [ORPHANS]
set -euo pipefail

SAMPLES=${1:-2000}
ORPHANS=${2:-1000}
ROUNDS=${ROUNDS:-3}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

if [[ $(id -u) != 0 ]]; then
    echo "init-bench: needs root for unshare --pid" >&2
    exit 1
fi
if ! command -v tini >/dev/null; then
    echo "init-bench: installing Debian's tini for the comparison" >&2
    apt-get install -y tini >/dev/null || { apt-get update >/dev/null && apt-get install -y tini >/dev/null; }
fi

echo "building release binaries…" >&2
(cd "$ROOT" && cargo build --release -q -p supervisor --bin privitty-init &&
    cargo build --release -q -p privitty-tests --bin privitty-testproc)
INIT="$ROOT/target/release/privitty-init"
TESTPROC="$ROOT/target/release/privitty-testproc"
TINI=$(command -v tini)

WORK=$(mktemp -d)
LAUNCHER=""
cleanup() {
    if [[ -n $LAUNCHER ]]; then kill -KILL "$LAUNCHER" 2>/dev/null || true; fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# start NAME CMD… : runs CMD as PID 1 of a new namespace; sets LAUNCHER and INIT_PID.
start() {
    local name=$1
    shift
    unshare --pid --fork --mount-proc --kill-child "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" &
    LAUNCHER=$!
    INIT_PID=""
    for _ in $(seq 1 5000); do
        INIT_PID=$(cat "/proc/$LAUNCHER/task/$LAUNCHER/children" 2>/dev/null | awk '{print $1}')
        [[ -n $INIT_PID ]] && return 0
        sleep 0.001
    done
    echo "init-bench: $name did not start" >&2
    cat "$WORK/$name.err" >&2
    exit 1
}

stop() {
    kill -KILL "$LAUNCHER" 2>/dev/null || true
    wait "$LAUNCHER" 2>/dev/null || true
    LAUNCHER=""
}

# wait_child : until INIT_PID has a child that has exec'd (its comm is no longer the init's).
wait_child() {
    local comm
    for _ in $(seq 1 5000); do
        comm=$(cat "/proc/$INIT_PID/task/$INIT_PID/children" 2>/dev/null | awk '{print $1}')
        if [[ -n $comm ]] && [[ $(cat "/proc/$comm/comm" 2>/dev/null) == "$1" ]]; then
            return 0
        fi
        sleep 0.001
    done
    echo "init-bench: child $1 did not start" >&2
    exit 1
}

# "VmRSS/RssAnon" in KiB: the total counts shared library and executable pages; anon is the
# init's own memory.
rss_kib() { awk '/^VmRSS:/ {t=$2} /^RssAnon:/ {a=$2} END {print t "/" a}' "/proc/$1/status"; }

declare -A RSS LAT REAP
for init in privitty-init tini; do
    case $init in
        privitty-init) cmd=("$INIT" --plain --) ;;
        tini) cmd=("$TINI" -s --) ;;
    esac

    start "$init-idle" "${cmd[@]}" sleep infinity
    wait_child sleep
    RSS[$init]=$(rss_kib "$INIT_PID")
    stop

    mkfifo "$WORK/fifo-$init"
    start "$init-latency" "${cmd[@]}" "$TESTPROC" latency-child "$WORK/fifo-$init"
    wait_child privitty-testpr
    LAT[$init]=$("$TESTPROC" latency-driver "$INIT_PID" "$WORK/fifo-$init" --samples "$SAMPLES")
    stop

    for round in $(seq 1 "$ROUNDS"); do
        rm -f "$WORK/orphans-$init"
        start "$init-orphans" "${cmd[@]}" "$TESTPROC" orphans "$ORPHANS" "$WORK/orphans-$init"
        result=$("$TESTPROC" reap-driver "$INIT_PID" "$WORK/orphans-$init")
        stop
        rate=$(sed -E 's/.*orphans_per_s=([0-9]+).*/\1/' <<<"$result")
        ms=$(sed -E 's/.*reaped_in_ms=([0-9.]+).*/\1/' <<<"$result")
        REAP[$init]="${REAP[$init]:-} ${rate}/s (${ms} ms)"
    done
done

field() { sed -E "s/.*$2=([0-9.]+).*/\1/" <<<"$1"; }

printf '\n%s, %s, %s cores\n' "$(uname -sr)" "$(date -u +%FT%TZ)" "$(nproc)"
printf '%-15s %14s %12s %12s %12s   %s\n' "init" "RSS/anon KiB" "sig p50 µs" "sig p99 µs" "sig max µs" \
    "reaping $ORPHANS orphans released at once (${ROUNDS} rounds)"
for init in privitty-init tini; do
    printf '%-15s %14s %12s %12s %12s  %s\n' "$init" "${RSS[$init]}" \
        "$(field "${LAT[$init]}" p50_us)" "$(field "${LAT[$init]}" p99_us)" \
        "$(field "${LAT[$init]}" max_us)" "${REAP[$init]}"
done
printf '(signal latency over %s samples: kill(init, SIGUSR1) until the child has written one byte to a FIFO)\n' "$SAMPLES"
