#!/usr/bin/env bash
# Benchmarks privitty-edged (release build) against a minimal hyper server in the same run:
# /health, /metrics (the Prometheus scrape), a gate-rejected /rpc call and an engine-forwarded
# get_config at 1, 16 and 64 connections, the same two on a second edged with the API token
# required (auth_*: the cost of the token check and the method policy); /rpc with per-request
# metrics recording against a third edged started with the benchmark-only
# --bench-no-metrics-recording (norec_*), alternating ROUNDS times; idle and loaded RSS; the gate,
# auth and policy micro-benchmark. Prints figures for edged/README.md.
#
#   tests/bench/edged-bench.sh            # builds release binaries first
#   NO_BUILD=1 PROFILE=debug DURATION=2s CONNECTIONS="1 4" ROUNDS=1 tests/bench/edged-bench.sh   # smoke run
set -euo pipefail
cd "$(dirname "$0")/../.."
top=$(pwd)
duration=${DURATION:-5s}
conns_list=${CONNECTIONS:-"1 16 64"}
rounds=${ROUNDS:-8}

if [ -z "${NO_BUILD:-}" ]; then
  cargo build --release -p edged -p privitty-tests --bin privitty-edged --bin privitty-load
  cargo build --release -p edged --example gate_bench
fi
engine=$(tests/scripts/fetch-engine.sh)
rel="$top/target/${PROFILE:-release}"
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Waits (up to 30 s) for a log line matching $2 in file $1, then prints the first match.
wait_log() {
  local file=$1 pattern=$2 i
  for i in $(seq 1 600); do
    if grep -q -- "$pattern" "$file" 2>/dev/null; then grep -m1 -- "$pattern" "$file"; return 0; fi
    sleep 0.05
  done
  echo "timed out waiting for $pattern in $file" >&2; cat "$file" >&2; return 1
}
rss_kb() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }
engine_pid_of() { cat "/proc/$1/task/"*/children 2>/dev/null | tr ' ' '\n' | grep -m1 . ; }

"$rel/privitty-load" baseline-server --listen 127.0.0.1:0 2>"$work/baseline.err" &
pids+=($!)
baseline_addr=$(wait_log "$work/baseline.err" 'listening addr=' | sed 's/.*addr=//')

PRIVITTY_ENGINE="$engine" PRIVITTY_LOG=warn,edged=info PRIVITTY_LOG_FORMAT=json PRIVITTY_PROFILE=bench \
  "$rel/privitty-edged" --listen 127.0.0.1:0 --accounts "$work/data" 2>"$work/edged.err" &
edged_pid=$!
pids+=($edged_pid)
wait_log "$work/edged.err" '"message":"ready"' >/dev/null
edged_addr=$(grep -m1 '"message":"listening"' "$work/edged.err" | sed 's/.*"addr":"\([^"]*\)".*/\1/')
engine_pid=$(engine_pid_of "$edged_pid")

# The same daemon with the API token required (what the image runs): the cost of auth + policy.
printf 'bench-token-0123456789abcdefghijklmnopqrstuv\n' >"$work/token"
PRIVITTY_ENGINE="$engine" PRIVITTY_LOG=warn,edged=info PRIVITTY_LOG_FORMAT=json PRIVITTY_PROFILE=bench \
  PRIVITTY_API_AUTH=required PRIVITTY_API_TOKEN_FILE="$work/token" \
  "$rel/privitty-edged" --listen 127.0.0.1:0 --accounts "$work/data-auth" 2>"$work/edged-auth.err" &
auth_pid=$!
pids+=($auth_pid)
wait_log "$work/edged-auth.err" '"message":"ready"' >/dev/null
auth_addr=$(grep -m1 '"message":"listening"' "$work/edged-auth.err" | sed 's/.*"addr":"\([^"]*\)".*/\1/')

# The same daemon recording no per-request metrics (a hidden, benchmark-only flag): the cost of
# recording is the difference on /rpc.
PRIVITTY_ENGINE="$engine" PRIVITTY_LOG=warn,edged=info PRIVITTY_LOG_FORMAT=json PRIVITTY_PROFILE=bench \
  "$rel/privitty-edged" --bench-no-metrics-recording --listen 127.0.0.1:0 --accounts "$work/data-norec" \
  2>"$work/edged-norec.err" &
norec_pid=$!
pids+=($norec_pid)
wait_log "$work/edged-norec.err" '"message":"ready"' >/dev/null
norec_addr=$(grep -m1 '"message":"listening"' "$work/edged-norec.err" | sed 's/.*"addr":"\([^"]*\)".*/\1/')

echo "== privitty-edged benchmark ($(date -u +%FT%TZ), $(nproc) cores, ${duration} per run)"
echo "edged $edged_addr (pid $edged_pid, engine pid $engine_pid), baseline $baseline_addr"
echo "idle RSS: edged $(rss_kb "$edged_pid") kB, engine $(rss_kb "$engine_pid") kB"

rejected='{"jsonrpc":"2.0","method":"privitty_send_file","params":[1,10,10,"/tmp/x",true,true,1],"id":1}'
get_config='{"jsonrpc":"2.0","method":"get_config","params":[1,"displayname"],"id":1}'
load() { "$rel/privitty-load" run --duration "$duration" "$@"; }

for c in $conns_list; do
  load --label "baseline_health" --connections "$c" --url "http://$baseline_addr/health"
  load --label "edged_health    " --connections "$c" --url "http://$edged_addr/health"
  load --label "edged_metrics   " --connections "$c" --url "http://$edged_addr/metrics"
  load --label "edged_rejected  " --connections "$c" --url "http://$edged_addr/rpc" --body "$rejected"
  load --label "auth_health     " --connections "$c" --url "http://$auth_addr/health"
  load --label "auth_get_config " --connections "$c" --url "http://$auth_addr/rpc" --body "$get_config" --token-file "$work/token"
  if [ "$c" = "$(echo $conns_list | awk '{print $NF}')" ]; then
    load --label "edged_get_config" --connections "$c" --url "http://$edged_addr/rpc" --body "$get_config" &
    lp=$!
    sleep "$(( ${duration%s} / 2 ))"
    loaded="edged $(rss_kb "$edged_pid") kB, engine $(rss_kb "$engine_pid") kB"
    wait "$lp"
  else
    load --label "edged_get_config" --connections "$c" --url "http://$edged_addr/rpc" --body "$get_config"
  fi
done
echo "loaded RSS (during get_config at the highest connection count): $loaded"

# Recording vs not, alternating so that both see the same machine load; the median of each. Besides
# throughput (noisy on a shared machine), edged's own CPU time per request (utime + stime from
# /proc, which other processes' load disturbs much less).
echo "== /rpc with metrics recording (edged) vs without (norec), $rounds alternating rounds each"
rps_of() { sed -n 's/.* rps=\([0-9]*\).*/\1/p'; }
requests_of() { sed -n 's/.* requests=\([0-9]*\).*/\1/p'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick_us=$(( 1000000 / $(getconf CLK_TCK) ))
median() { sort -n | awk '{v[NR]=$1} END {print v[int((NR+1)/2)]}'; }
pct() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%+.1f %%", (a - b) * 100 / b}'; }
# Runs one load against edged pid $1; prints the line, then "rps cpu_ns_per_request" on fd 3.
measured() {
  local pid=$1 before after line
  shift
  before=$(cpu_ticks "$pid")
  line=$(load "$@")
  after=$(cpu_ticks "$pid")
  echo "$line"
  echo "$(echo "$line" | rps_of) $(( (after - before) * tick_us * 1000 / $(echo "$line" | requests_of) ))" >&3
}
first_c=$(echo $conns_list | awk '{print $1}')
last_c=$(echo $conns_list | awk '{print $NF}')
for c in $(echo "$first_c $last_c" | tr ' ' '\n' | sort -un); do
  for kind in get_config rejected; do
    if [ "$kind" = get_config ]; then body=$get_config; else body=$rejected; fi
    : >"$work/rec" ; : >"$work/norec"
    for r in $(seq 1 "$rounds"); do
      # A B, then B A: neither always runs first.
      if [ $((r % 2)) = 1 ]; then order="rec norec"; else order="norec rec"; fi
      for which in $order; do
        if [ "$which" = rec ]; then
          measured "$edged_pid" --label "edged_$kind" --connections "$c" --url "http://$edged_addr/rpc" --body "$body" 3>>"$work/rec"
        else
          measured "$norec_pid" --label "norec_$kind" --connections "$c" --url "http://$norec_addr/rpc" --body "$body" 3>>"$work/norec"
        fi
      done
    done
    rps_rec=$(awk '{print $1}' "$work/rec" | median)
    rps_norec=$(awk '{print $1}' "$work/norec" | median)
    cpu_rec=$(awk '{print $2}' "$work/rec" | median)
    cpu_norec=$(awk '{print $2}' "$work/norec" | median)
    echo "recording cost $kind conns=$c: throughput $rps_rec vs $rps_norec req/s ($(pct "$rps_rec" "$rps_norec")), edged CPU $cpu_rec vs $cpu_norec ns/request ($(pct "$cpu_rec" "$cpu_norec"))"
  done
done

echo "== gate micro-benchmark (release)"
mkdir -p "$work/lic"
"$rel/privitty-load" make-license --accounts "$work/lic" --pubkey-out "$work/lic.pem"
PRIVITTY_LICENSE_PUBKEY="$work/lic.pem" "$rel/examples/gate_bench" "$work/lic"
"$rel/examples/gate_bench"
