#!/usr/bin/env python3
"""Lines up a traced swap-bench run's slow requests with the swaps that caused them.

Usage: tests/bench/swap-trace.py [--alternate] DIR [DIR ...]
  DIR: what `SWAP_BENCH_TRACE=DIR tests/bench/swap-bench.sh --release` left there: `stack.log`
  (privitty-init's JSON log, the generations' lines in it) and `slow-<connections>-<route>.txt`
  (privitty-load's requests over 2 ms: `<unix time it was due, us> <latency, us>`).
  --alternate: the run alternated builds (`SWAP_BENCH_ALTERNATE`): swaps into an odd generation
  started the build under test, swaps into an even one the other build; their figures are
  printed apart, on lines marked `this-build` and `alternate`.

Prints, for each file, per swap (the SIGHUP's "swapping to a new generation" line):
  - the slowest request due in the 60 ms after it (median and 90th percentile over the swaps);
  - the old generation's "stopping: no new connections" to the new one's "ready" (the log's own
    timestamps; requests handed over are served from the moment the new one has its service,
    which it logs as `ready` right after);
  - how many requests due in those 60 ms took over 3 ms (median over the swaps), and over 5 ms
    (median and mean over the swaps: the p99 goal of 5 ms holds while fewer than 1 % of the
    requests between two swaps take longer; the mean shows the rare swap whose catch-up lasts
    tens of milliseconds on a busy machine).
  - how many of the swaps woke a spare (`from_spare`) rather than spawning the generation; when
    some did and some did not (`SWAP_BENCH_SPARE=alternate`), the two kinds are printed apart.
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
GOAL_US = 5_000
MESSAGES = {
    "swapping to a new generation": "swap",
    "generation started": "started",
    "stopping: no new connections; finishing in-flight requests": "stop",
    "ready": "ready",
    "spare started: it waits, idle, to become the next generation": "spare",
}


def timestamp_us(entry):
    ts = entry["timestamp"].replace("Z", "+00:00")
    return datetime.datetime.fromisoformat(ts).timestamp() * 1e6


def swaps(path):
    """Each swap in the log: when it was asked for, the number of the generation it started, and
    the time from the old generation's last accept to the new one's `ready` (None if cut)."""
    found = []
    spares = set()
    with open(path) as f:
        for line in f:
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            kind = MESSAGES.get(entry.get("message"))
            if kind == "spare":
                spares.add(entry.get("pid"))
            elif kind == "swap":
                found.append({"at": timestamp_us(entry)})
            elif not found:
                continue
            elif kind == "started" and "generation" not in found[-1]:
                found[-1]["generation"] = entry.get("generation")
                found[-1]["spare"] = entry.get("pid") in spares
            elif kind == "stop" and "stop" not in found[-1]:
                found[-1]["stop"] = timestamp_us(entry)
            elif (
                kind == "ready"
                and "stop" in found[-1]
                and entry.get("generation") == found[-1].get("generation")
            ):
                found[-1]["ready"] = timestamp_us(entry)
    return found


def quantile(values, q):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


def print_figures(directory, name, label, rows):
    peaks = [r["peak"] for r in rows]
    gaps = [r["gap"] for r in rows if r["gap"] is not None]
    print(
        f"swap-trace: {directory} {name:12}{label} swaps={len(rows)}"
        f" slowest_ms median={quantile(peaks, 0.5):.1f} p90={quantile(peaks, 0.9):.1f}"
        f" stop_to_ready_ms median={statistics.median(gaps) if gaps else 0:.2f}"
        f" p90={quantile(gaps, 0.9) if gaps else 0:.2f}"
        f" over_3ms_per_swap median={quantile([r['over_3'] for r in rows], 0.5)}"
        f" over_5ms_per_swap median={quantile([r['over_5'] for r in rows], 0.5)}"
        f" mean={statistics.mean(r['over_5'] for r in rows):.1f}"
        f" from_spare={sum(1 for r in rows if r['spare'])}"
    )


def report(directory, alternate):
    found = swaps(os.path.join(directory, "stack.log"))
    for path in sorted(glob.glob(os.path.join(directory, "slow-*.txt"))):
        with open(path) as f:
            requests = sorted(tuple(map(int, line.split())) for line in f if line.strip())
        if not requests:
            continue
        first, last = requests[0][0], requests[-1][0]
        rows = []
        for swap in found:
            at = swap["at"]
            if not first + 100_000 < at < last - 100_000:
                continue
            lo = bisect.bisect_left(requests, (at, 0))
            hi = bisect.bisect_left(requests, (at + WINDOW_US, 0))
            window = [latency for _, latency in requests[lo:hi]]
            gap = swap["ready"] - swap["stop"] if "ready" in swap else None
            rows.append(
                {
                    "generation": swap.get("generation"),
                    "spare": swap.get("spare", False),
                    "peak": max(window, default=0) / 1000,
                    "gap": gap / 1000 if gap is not None else None,
                    "over_3": sum(1 for latency in window if latency > SLOW_US),
                    "over_5": sum(1 for latency in window if latency > GOAL_US),
                }
            )
        name = os.path.basename(path)[len("slow-") : -len(".txt")]
        groups = [("", rows)]
        if alternate:
            # Split by build even when a swap or two found no spare (`from_spare` says so).
            groups = [
                (" this-build", [r for r in rows if (r["generation"] or 0) % 2 == 1]),
                (" alternate ", [r for r in rows if (r["generation"] or 0) % 2 == 0]),
            ]
        elif any(r["spare"] for r in rows) and not all(r["spare"] for r in rows):
            # SWAP_BENCH_SPARE=alternate: swaps that woke the spare, and those that did not.
            groups = [
                (" spare      ", [r for r in rows if r["spare"]]),
                (" no spare   ", [r for r in rows if not r["spare"]]),
            ]
        for label, group in groups:
            if group:
                print_figures(directory, name, label, group)


def main():
    args = sys.argv[1:]
    alternate = "--alternate" in args
    directories = [a for a in args if a != "--alternate"]
    if not directories:
        sys.exit(__doc__)
    for directory in directories:
        report(directory, alternate)


if __name__ == "__main__":
    main()
