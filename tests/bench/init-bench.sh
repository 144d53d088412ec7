#!/usr/bin/env bash
# Benchmarks privitty-init as the image ships it (the multi-call executable of
# tests/container/build-binaries.sh: static, non-PIE, `image` profile) next to Debian's tini and
# tini-static, all in one run, each as PID 1 of a fresh PID namespace:
#   - memory, idle: VmRSS and RssAnon of the init. Plain mode runs `sleep infinity`; managed mode
#     runs the real privitty-edged (the same executable) and engine, and is measured once its
#     first generation is ready and a few license polls have passed: unlicensed, and once more
#     after start-up activation over HTTPS against the reference license server (which PID 1
#     leaves to a `privitty-edge license activate` child);
#   - signal forwarding: kill(init, SIGUSR1) until the child has written one byte to a FIFO. The
#     inits run side by side and are sampled in interleaved batches, so the machine's load falls on
#     all of them alike; p50 and p99 are the medians of the batches' own, max the largest sample;
#   - orphan reaping: ORPHANS orphans released at once until the init has reaped them all
#     (observed through /proc/<init>/task/*/children); ROUNDS rounds, interleaved.
# Prints a table, then each privitty-init row against tini's. Needs root (unshare --pid).
# Usage: tests/bench/init-bench.sh [SAMPLES] [ORPHANS]
#   ROUNDS                   reaping rounds (default 5); BATCHES latency batches (default 10)
#   PRIVITTY_BENCH_BIN_DIR   measure the privitty-init, privitty-edged and privitty-edge of this
#                            directory (an image's /usr/local/bin, e.g. target/image/bin) instead
#                            of building them
#   PRIVITTY_BENCH_TESTPROC  privitty-testproc to use (default: the one built with them, else
#                            target/container-test/privitty-testproc)
set -euo pipefail

SAMPLES=${1:-2000}
ORPHANS=${2:-1000}
ROUNDS=${ROUNDS:-5}
BATCHES=${BATCHES:-10}
ROOT=$(cd "$(dirname "$0")/../.." && pwd)

if [[ $(id -u) != 0 ]]; then
    echo "init-bench: needs root for unshare --pid" >&2
    exit 1
fi
if ! command -v tini >/dev/null || [[ ! -x /usr/bin/tini-static ]]; then
    echo "init-bench: installing Debian's tini (tini and tini-static) for the comparison" >&2
    apt-get install -y tini >/dev/null || { apt-get update >/dev/null && apt-get install -y tini >/dev/null; }
fi

WORK=$(mktemp -d)
if [[ -n ${PRIVITTY_BENCH_BIN_DIR:-} ]]; then
    BIN=$(cd "$PRIVITTY_BENCH_BIN_DIR" && pwd)
    TESTPROC=${PRIVITTY_BENCH_TESTPROC:-$ROOT/target/container-test/privitty-testproc}
else
    echo "building the image's executable (tests/container/build-binaries.sh)…" >&2
    out=$("$ROOT/tests/container/build-binaries.sh")
    TESTPROC=${PRIVITTY_BENCH_TESTPROC:-$out/privitty-testproc}
    # The image's layout: privitty-init and its links side by side.
    BIN=$WORK/bin
    mkdir -p "$BIN"
    install -m 0755 "$out/privitty" "$BIN/privitty-init"
    for name in privitty-edged privitty-edge; do ln -s privitty-init "$BIN/$name"; done
fi
ENGINE=$("$ROOT/tests/scripts/fetch-engine.sh")
TINI=$(command -v tini)
TINI_STATIC=/usr/bin/tini-static
INIT=$BIN/privitty-init

LAUNCHERS=()
EXTRA_ENV=()
SERVER=""
cleanup() {
    for l in "${LAUNCHERS[@]}" $SERVER; do kill -KILL "$l" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

INITS=(plain managed tini tini-static)
declare -A LABEL=([plain]="privitty-init --plain" [managed]="privitty-init managed"
    [activated]="privitty-init managed, activated"
    [tini]="tini $(dpkg-query -W -f '${Version}' tini 2>/dev/null | cut -d- -f1)"
    [tini-static]="tini-static")

# start NAME LOG CMD… : runs the init NAME with CMD as PID 1 of a new namespace; sets INIT_PID.
# Managed mode gets a data directory, a loopback port and a long ready timeout (a stand-in command
# never reports ready).
start() {
    local name=$1 log=$2
    shift 2
    local cmd
    case $name in
        plain) cmd=("$INIT" --plain -- "$@") ;;
        managed | activated) cmd=("$INIT" -- "$@") ;;
        tini) cmd=("$TINI" -s -- "$@") ;;
        tini-static) cmd=("$TINI_STATIC" -s -- "$@") ;;
    esac
    local accounts
    accounts=$(mktemp -d -p "$WORK")
    env PRIVITTY_ACCOUNTS="$accounts" PRIVITTY_LISTEN=127.0.0.1:0 PRIVITTY_ENGINE="$ENGINE" \
        PRIVITTY_READY_TIMEOUT=1h PRIVITTY_LOG_FORMAT=text "${EXTRA_ENV[@]}" \
        unshare --pid --fork --mount-proc --kill-child "${cmd[@]}" >"$log.out" 2>"$log.err" &
    local launcher=$!
    LAUNCHERS+=("$launcher")
    INIT_PID=""
    for _ in $(seq 1 5000); do
        INIT_PID=$(awk '{print $1}' "/proc/$launcher/task/$launcher/children" 2>/dev/null || true)
        [[ -n $INIT_PID ]] && return 0
        sleep 0.001
    done
    echo "init-bench: $name did not start" >&2
    cat "$log.err" >&2
    exit 1
}

stop_all() {
    for l in "${LAUNCHERS[@]}"; do
        kill -KILL "$l" 2>/dev/null || true
        wait "$l" 2>/dev/null || true
    done
    LAUNCHERS=()
}

# wait_child PID COMM : until PID has a child whose comm is COMM (it has exec'd).
wait_child() {
    local child
    for _ in $(seq 1 20000); do
        for child in $(cat /proc/"$1"/task/*/children 2>/dev/null); do
            [[ $(cat "/proc/$child/comm" 2>/dev/null) == "$2" ]] && return 0
        done
        sleep 0.001
    done
    echo "init-bench: child $2 of $1 did not start" >&2
    exit 1
}

# "VmRSS RssAnon" in KiB: the total counts the pages of the executable (and of libc, for the
# dynamically linked tini) it has mapped; anon is the init's own memory.
mem_kib() { awk '/^VmRSS:/ {t=$2} /^RssAnon:/ {a=$2} END {print t, a}' "/proc/$1/status"; }
median() { sort -g | awk '{v[NR]=$1} END {print (NR % 2) ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2}'; }
field() { sed -E "s/.*$2=([0-9.]+).*/\1/" <<<"$1"; }

# --- memory, idle
declare -A RSS ANON
for name in plain tini tini-static; do
    start "$name" "$WORK/$name-idle" sleep infinity
    wait_child "$INIT_PID" sleep
    read -r "RSS[$name]" "ANON[$name]" < <(mem_kib "$INIT_PID")
    stop_all
done
# idle NAME : managed mode with the real privitty-edged until its first generation is ready, then
# past a few license polls (every 2 s); sets RSS[NAME] and ANON[NAME].
idle() {
    local name=$1 log=$WORK/$1-idle
    start "$name" "$log" "$BIN/privitty-edged"
    for _ in $(seq 1 600); do
        grep -q "generation ready" "$log.err" && break
        sleep 0.1
    done
    grep -q "generation ready" "$log.err" || {
        echo "init-bench: $name did not get ready" >&2
        cat "$log.err" >&2
        exit 1
    }
    sleep 5
    read -r "RSS[$name]" "ANON[$name]" < <(mem_kib "$INIT_PID")
    stop_all
}
idle managed
# The reference license server on HTTPS with its own CA, as the container test runs it.
(cd "$ROOT" && cargo build -q --locked -p privitty-tests --bin privitty-license-server)
server_bin=$ROOT/target/debug/privitty-license-server
state=$WORK/license-server
"$server_bin" serve --state-dir "$state" --tls --tls-names 127.0.0.1 >"$WORK/server.out" 2>"$WORK/server.err" &
SERVER=$!
for _ in $(seq 1 600); do
    grep -q '^listening ' "$WORK/server.out" && break
    sleep 0.1
done
url=$("$server_bin" admin --state-dir "$state" create-license)
EXTRA_ENV=(PRIVITTY_LICENSE_URL="$url" PRIVITTY_LICENSE_PUBKEY="$state/license-pubkey.pem"
    SSL_CERT_FILE="$state/ca.pem")
idle activated
grep -q "license activated" "$WORK/activated-idle.err" || {
    echo "init-bench: start-up activation failed" >&2
    cat "$WORK/activated-idle.err" >&2
    exit 1
}
EXTRA_ENV=()
kill -KILL "$SERVER"
SERVER=""

# --- signal forwarding, all inits at once, interleaved batches
declare -A PID FIFO P50S P99S MAX
for name in "${INITS[@]}"; do
    FIFO[$name]=$WORK/fifo-$name
    mkfifo "${FIFO[$name]}"
    start "$name" "$WORK/$name-latency" "$TESTPROC" latency-child "${FIFO[$name]}"
    PID[$name]=$INIT_PID
done
for name in "${INITS[@]}"; do wait_child "${PID[$name]}" privitty-testpr; done
per_batch=$(( (SAMPLES + BATCHES - 1) / BATCHES ))
for _ in $(seq 1 "$BATCHES"); do
    for name in "${INITS[@]}"; do
        r=$("$TESTPROC" latency-driver "${PID[$name]}" "${FIFO[$name]}" --samples "$per_batch")
        P50S[$name]="${P50S[$name]:-} $(field "$r" p50_us)"
        P99S[$name]="${P99S[$name]:-} $(field "$r" p99_us)"
        m=$(field "$r" max_us)
        MAX[$name]=$(awk -v a="${MAX[$name]:-0}" -v b="$m" 'BEGIN {print (b > a) ? b : a}')
    done
done
stop_all

# --- orphan reaping, interleaved rounds
declare -A RATES
for round in $(seq 1 "$ROUNDS"); do
    for name in "${INITS[@]}"; do
        file=$WORK/orphans-$name-$round
        start "$name" "$WORK/$name-orphans" "$TESTPROC" orphans "$ORPHANS" "$file"
        result=$("$TESTPROC" reap-driver "$INIT_PID" "$file")
        stop_all
        RATES[$name]="${RATES[$name]:-} $(field "$result" orphans_per_s)"
    done
done

median_of() { tr ' ' '\n' <<<"$1" | grep . | median; }
printf '\n%s, %s, %s cores, load %s\n' "$(uname -sr)" "$(date -u +%FT%TZ)" "$(nproc)" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
printf 'privitty-init: %s (%s bytes)\n' "$(readlink -f "$INIT")" "$(stat -L -c %s "$INIT")"
printf "%-32s %9s %9s %9s %9s %10s   %s\n" init "RSS KiB" "anon KiB" "p50 µs" "p99 µs" "max µs" \
    "reaping $ORPHANS orphans released at once, orphans/s ($ROUNDS rounds)"
declare -A P50 REAPMED
for name in "${INITS[@]}"; do
    P50[$name]=$(median_of "${P50S[$name]}")
    REAPMED[$name]=$(median_of "${RATES[$name]}")
    printf '%-32s %9s %9s %9.1f %9.1f %10.1f  %s (median %s)\n' "${LABEL[$name]}" "${RSS[$name]}" \
        "${ANON[$name]}" "${P50[$name]}" "$(median_of "${P99S[$name]}")" "${MAX[$name]}" \
        "${RATES[$name]# }" "${REAPMED[$name]}"
    if [[ $name == managed ]]; then
        printf '%-32s %9s %9s %9s %9s %10s\n' "${LABEL[activated]}" "${RSS[activated]}" \
            "${ANON[activated]}" - - -
    fi
done
printf '(signal latency: %s samples per init in %s interleaved batches; p50/p99: median of the batches)\n' \
    "$SAMPLES" "$BATCHES"
printf '\nagainst tini (goal: RSS and anon <= 2.00x, p50 <= 1.10x, reaping >= 0.90x)\n'
for name in plain managed activated; do
    awk -v l="${LABEL[$name]}" -v r="${RSS[$name]}" -v a="${ANON[$name]}" -v p="${P50[$name]:-}" \
        -v q="${REAPMED[$name]:-}" -v tr="${RSS[tini]}" -v ta="${ANON[tini]}" -v tp="${P50[tini]}" \
        -v tq="${REAPMED[tini]}" 'BEGIN {
            printf "%-32s RSS %.2fx  anon %.2fx", l, r / tr, a / ta
            if (p != "") printf "  p50 %.2fx  reaping %.2fx", p / tp, q / tq
            printf "\n"
        }'
done
