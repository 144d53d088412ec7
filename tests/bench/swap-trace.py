#!/usr/bin/env python3
"""Lines up a traced swap-bench run's slow requests with the swaps that caused them.

Usage: tests/bench/swap-trace.py DIR [DIR ...]
  DIR: what `SWAP_BENCH_TRACE=DIR tests/bench/swap-bench.sh --release` left there: `stack.log`
  (privitty-init's JSON log, the generations' lines in it) and `slow-<connections>-<route>.txt`
  (privitty-load's requests over 2 ms: `<unix time it was due, us> <latency, us>`).

Prints, for each file, per swap (the SIGHUP's "swapping to a new generation" line):
  - the slowest request due in the 60 ms after it (median and 90th percentile over the swaps);
  - the old generation's "stopping: no new connections" to the new one's "ready" (the log's own
    timestamps; requests handed over are served from the moment the new one has its service,
    which it logs as `ready` right after);
  - how many requests due in those 60 ms took over 3 ms (median over the swaps).
Swaps within 100 ms of either end of the run are left out (their window is cut).
"""

import bisect
import datetime
import glob
import json
import os
import statistics
import sys

WINDOW_US = 60_000
SLOW_US = 3_000


def log_times(path):
    """Timestamps (us) of the lines that matter, by message."""
    wanted = {
        "swapping to a new generation": "swap",
        "stopping: no new connections; finishing in-flight requests": "stop",
        "ready": "ready",
    }
    times = {v: [] for v in wanted.values()}
    with open(path) as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            kind = wanted.get(entry.get("message"))
            if kind:
                ts = entry["timestamp"].replace("Z", "+00:00")
                times[kind].append(datetime.datetime.fromisoformat(ts).timestamp() * 1e6)
    return {k: sorted(v) for k, v in times.items()}


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def after(times, t):
    """The first of `times` at or after `t`, or None."""
    i = bisect.bisect_left(times, t)
    return times[i] if i < len(times) else None


def report(directory):
    times = log_times(os.path.join(directory, "stack.log"))
    for path in sorted(glob.glob(os.path.join(directory, "slow-*.txt"))):
        with open(path) as f:
            requests = sorted(tuple(map(int, line.split())) for line in f if line.strip())
        if not requests:
            continue
        first, last = requests[0][0], requests[-1][0]
        peaks, gaps, counts = [], [], []
        for swap in times["swap"]:
            if not first + 100_000 < swap < last - 100_000:
                continue
            stop = after(times["stop"], swap)
            ready = after(times["ready"], stop) if stop is not None else None
            if ready is not None:
                gaps.append((ready - stop) / 1000)
            lo = bisect.bisect_left(requests, (swap, 0))
            hi = bisect.bisect_left(requests, (swap + WINDOW_US, 0))
            window = [latency for _, latency in requests[lo:hi]]
            peaks.append(max(window, default=0) / 1000)
            counts.append(sum(1 for latency in window if latency > SLOW_US))
        if not peaks:
            continue
        name = os.path.basename(path)[len("slow-"):-len(".txt")]
        print(
            f"swap-trace: {directory} {name:12} swaps={len(peaks)}"
            f" slowest_ms median={quantile(peaks, 0.5):.1f} p90={quantile(peaks, 0.9):.1f}"
            f" stop_to_ready_ms median={statistics.median(gaps) if gaps else 0:.2f}"
            f" p90={quantile(gaps, 0.9) if gaps else 0:.2f}"
            f" over_3ms_per_swap median={quantile(counts, 0.5)}"
        )


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for directory in sys.argv[1:]:
        report(directory)


if __name__ == "__main__":
    main()
