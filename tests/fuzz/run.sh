#!/usr/bin/env bash
# Fuzzes every target (or the ones named as arguments) for FUZZ_SECONDS each, on a temp copy of
# the committed seed corpus, and fails on any crash, panic, hang or allocation over the cap.
#
#   tests/fuzz/run.sh                      # all four targets, 60 s each
#   FUZZ_SECONDS=600 tests/fuzz/run.sh prv_reader
#
# Caps (README.md): MEM_CAP_MB for -rss_limit_mb (the whole process) and -malloc_limit_mb (any
# single allocation), INPUT_TIMEOUT_S per input (-timeout; longer counts as a hang).
#
# Toolchain: the stable one. cargo-fuzz builds with AddressSanitizer (-Zsanitizer=address), which
# stable rustc accepts under RUSTC_BOOTSTRAP=1; ASan is also what makes -malloc_limit_mb work
# (libFuzzer's malloc hooks need a sanitizer runtime). The build goes to tests/fuzz/target, never
# the main workspace's target dir, so it does not wait for the main build's lock.
#
# Environment: FUZZ_SECONDS (default 60), FUZZ_JOBS (targets at once, default one per core), FUZZ_WORKDIR (keep the grown corpora and logs there
# instead of a deleted temp dir). Crash inputs are written to tests/fuzz/artifacts/<target>/ and
# printed in base64 in the log, so a CI run's failure can be reproduced from its log alone.
# The committed corpus is never modified.
set -euo pipefail

FUZZ_DIR="$(cd "$(dirname "$0")" && pwd)"
CARGO_FUZZ_VERSION=0.13.2
FUZZ_SECONDS=${FUZZ_SECONDS:-60}
MEM_CAP_MB=512
INPUT_TIMEOUT_S=10
TARGET_DIR="$FUZZ_DIR/target"
TRIPLE="$(rustc -vV | sed -n 's/^host: //p')"
ALL_TARGETS=(rpc_parse license_jwt prv_reader license_files)
declare -A MAX_LEN=([rpc_parse]=16384 [license_jwt]=8192 [prv_reader]=8192 [license_files]=8192)

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=("${ALL_TARGETS[@]}")
for t in "${targets[@]}"; do
  [ -n "${MAX_LEN[$t]:-}" ] || { echo "run.sh: unknown target '$t' (known: ${ALL_TARGETS[*]})" >&2; exit 2; }
done

export RUSTC_BOOTSTRAP=1
# detect_odr_violation=0: what cargo-fuzz sets itself (Rust generics trip it); the smaller
# quarantine keeps ASan's own memory well under the RSS cap over a long run.
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_odr_violation=0:quarantine_size_mb=64}"

started=$SECONDS
echo "== cargo-fuzz $CARGO_FUZZ_VERSION"
if ! cargo fuzz --version 2>/dev/null | grep -qx "cargo-fuzz $CARGO_FUZZ_VERSION"; then
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi
rustc --version

echo "== build (AddressSanitizer, release with debug assertions)"
# Cargo caches rustc's answers in .rustc_info.json without keying them on RUSTC_BOOTSTRAP: a build
# once tried without it would keep failing with "the option `Z` is only accepted on nightly".
rm -f "$TARGET_DIR/.rustc_info.json"
build_started=$SECONDS
for t in "${targets[@]}"; do
  cargo fuzz build --fuzz-dir "$FUZZ_DIR" --target-dir "$TARGET_DIR" --target "$TRIPLE" "$t"
done
echo "build: $((SECONDS - build_started)) s"

if [ -n "${FUZZ_WORKDIR:-}" ]; then
  work="$FUZZ_WORKDIR"
  mkdir -p "$work"
else
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
fi

# One target's run: its report goes to $work/$t.report, its exit code to $work/$t.rc.
fuzz_one() {
  local t=$1
  local corpus="$work/corpus/$t" artifacts="$FUZZ_DIR/artifacts/$t" log="$work/$t.log" out="$work/$t.report"
  rm -rf "$corpus"
  mkdir -p "$corpus" "$artifacts"
  cp -R "$FUZZ_DIR/corpus/$t/." "$corpus/"
  local seeds rc=0
  seeds=$(find "$corpus" -type f | wc -l)
  find "$artifacts" -type f | sort >"$work/$t.artifacts-before"
  # The binary `cargo fuzz run` would start, started directly so that nothing is rebuilt inside
  # the time box. The outer timeout only catches libFuzzer itself getting stuck; -timeout catches
  # a slow input.
  timeout --kill-after=10 $((FUZZ_SECONDS + 60)) \
    "$TARGET_DIR/$TRIPLE/release/$t" \
      -max_total_time="$FUZZ_SECONDS" \
      -rss_limit_mb="$MEM_CAP_MB" -malloc_limit_mb="$MEM_CAP_MB" \
      -timeout="$INPUT_TIMEOUT_S" \
      -max_len="${MAX_LEN[$t]}" \
      -print_final_stats=1 \
      -artifact_prefix="$artifacts/" \
      "$corpus" >"$log" 2>&1 || rc=$?
  local done_line execs rate rss cov units
  done_line=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -1 || true)
  execs=$(sed -n 's/^stat::number_of_executed_units:[[:space:]]*//p' "$log")
  rate=$(sed -n 's/^stat::average_exec_per_sec:[[:space:]]*//p' "$log")
  rss=$(sed -n 's/^stat::peak_rss_mb:[[:space:]]*//p' "$log")
  cov=$(grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+' <<<"$done_line" || true)
  units=$(find "$corpus" -type f | wc -l)
  echo "$t: exit $rc, ${execs:-?} execs, ${rate:-?} exec/s, ${cov:-no DONE line}, seeds $seeds → $units inputs, peak RSS ${rss:-?} MB" >"$out"
  if [ "$rc" -ne 0 ]; then
    {
      echo "-- $t FAILED (exit $rc); the end of its log:"
      grep -nE 'panicked at|ERROR: libFuzzer|ERROR: AddressSanitizer|SUMMARY|Test unit written' "$log" | head -20 || true
      tail -n 60 "$log"
      find "$artifacts" -type f | sort | comm -13 "$work/$t.artifacts-before" - |
        while read -r a; do
          echo "-- input $a ($(wc -c <"$a") bytes), base64:"
          base64 -w 100 "$a"
        done
    } >>"$out"
  fi
  echo "$rc" >"$work/$t.rc"
}

# Each libFuzzer process uses one core: FUZZ_JOBS targets run at once (default: one per core),
# so the wall time is about ceil(targets / jobs) × FUZZ_SECONDS; each target still gets its full
# FUZZ_SECONDS.
jobs=${FUZZ_JOBS:-$(nproc)}
echo "== fuzz ${targets[*]} for ${FUZZ_SECONDS} s each, $jobs at a time"
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n || true
    running=$((running - 1))
  fi
  fuzz_one "$t" &
  running=$((running + 1))
done
wait || true

failed=()
summary=()
for t in "${targets[@]}"; do
  echo "== fuzz $t"
  cat "$work/$t.report" 2>/dev/null || echo "$t: no report (the run did not finish)"
  summary+=("$(head -1 "$work/$t.report" 2>/dev/null || echo "$t: no report")")
  if [ "$(cat "$work/$t.rc" 2>/dev/null || echo 1)" != 0 ]; then
    failed+=("$t")
  fi
done

echo "== summary (wall time $((SECONDS - started)) s; caps: ${MEM_CAP_MB} MB RSS and per allocation, ${INPUT_TIMEOUT_S} s per input)"
printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzzing found a problem in: ${failed[*]} (inputs under tests/fuzz/artifacts/; README.md says how to reproduce)"
  exit 1
fi
echo "no crash, hang or allocation over ${MEM_CAP_MB} MB"
