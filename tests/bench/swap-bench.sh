#!/usr/bin/env bash
# Generation-swap benchmark for privitty-init managed mode, with the real privitty-edged, engine and
# reference license server. Prints, from one run:
#   - license drop -> new generation ready (median, max)
#   - SIGHUP -> new generation ready (median, max)
#   - request latency p50/p99/max in steady state and during swaps, and the failed-request count
#   - privitty-load at 8 and 64 keep-alive connections (/health, /rpc): closed-loop capacity, then
#     paced at half of it, 21 s each: hyper alone (privitty-load's baseline server, the machine's
#     floor at that rate), steady, and across 100 swaps (p50/p99/max, non-2xx, socket errors, and
#     how busy the machine's cores were, and the share of them the hypervisor took: steal); then a
#     `goal` line: the swapping p99 and max against the goal (5 ms, 25 ms), beside steady's and
#     hyper alone's
# Usage: tests/bench/swap-bench.sh [--release] [SWAPS]   (default 20 swaps, debug build)
# Environment: SWAP_BENCH_LOAD (paced rate as a fraction of capacity, default 0.5),
#   SWAP_BENCH_CONNECTIONS (8 or 64 only), SWAP_BENCH_ROUTE (/health or /rpc only),
#   SWAP_BENCH_INTERVAL_MS (time between two swaps, default 200; the paced phases last 100 of it
#   and a second),
#   SWAP_BENCH_TRACE=DIR (the swapping runs' requests over 2 ms and the stack's log go there; the
#   bench then runs tests/bench/swap-trace.py on them: per swap, the slowest request, and the time
#   from the old generation's last accept to the new one's ready),
#   SWAP_BENCH_ALTERNATE=PATH (another build's privitty-edged: every other generation runs it, so
#   the two builds are compared swap by swap in the same run; with SWAP_BENCH_TRACE the trace prints
#   them apart),
#   SWAP_BENCH_SPARE=alternate (the spare is killed before every other swap, which then starts its
#   generation from scratch: swaps with and without a spare in the same run; with SWAP_BENCH_TRACE
#   the trace prints them apart), PRIVITTY_SPARE=off (no spare at all).
set -euo pipefail
cd "$(dirname "$0")/../.."

profile=()
if [[ "${1:-}" == "--release" ]]; then
    profile=(--release)
    shift
fi
export SWAP_BENCH_SWAPS="${1:-20}"

tests/scripts/fetch-engine.sh >/dev/null
cargo build --locked "${profile[@]}" --workspace --bins
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! cargo test --locked "${profile[@]}" -p privitty-tests --test system init_managed::swap_benchmark \
    -- --ignored --exact --nocapture >"$out" 2>&1; then
    cat "$out"
    exit 1
fi
grep '^swap-bench:' "$out"
# Keep-alive clients across 100 paced swaps at 8 and 64 connections (connection hand-over).
if ! cargo test --locked "${profile[@]}" -p privitty-tests --test system handover::keep_alive_swap_benchmark \
    -- --ignored --exact --nocapture >"$out" 2>&1; then
    cat "$out"
    exit 1
fi
grep '^swap-bench:' "$out"
# With a trace: each swap's slowest request, and the time nobody served, from the log.
if [[ -n "${SWAP_BENCH_TRACE:-}" ]]; then
    if [[ -n "${SWAP_BENCH_ALTERNATE:-}" ]]; then
        tests/bench/swap-trace.py --alternate "$SWAP_BENCH_TRACE"
    else
        tests/bench/swap-trace.py "$SWAP_BENCH_TRACE"
    fi
fi
