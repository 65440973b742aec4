"""Confidence tracking at scale: a million points in SQLite, then statistics over them.

Usage::

    python -m bench.bench_tracking [--points 1000000] [--batch 10000] [--db PATH]

Inserts points for one agent (five patterns), spread over the last six days,
into a throw-away SQLite file through the tracker (one transaction per
batch, rollups included), then times ``get_agent_stats`` over the whole
range (median of 5; goal < 200 ms), with a pattern filter, a plain SQL scan
of the raw points for comparison, and the cost of ``TrackingRecorder.add``.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from taskplane.tracking import (
    ConfidenceTracker,
    DataPoint,
    InMemoryTrackingStore,
    SqlTrackingStore,
    TrackingRecorder,
)

DEFAULT_POINTS = 1_000_000
DEFAULT_BATCH = 10_000
SPAN_S = 6 * 86400.0
AGENT = "bench-agent"
PATTERNS = ["summarise", "classify", "extract", "review", ""]
REPEATS = 5
RECORDER_POINTS = 200_000


def median_ms(call: Callable[[], Any], repeats: int = REPEATS) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def make_points(start: int, count: int, total: int, now: float, rng: random.Random) -> list[Any]:
    first = now - SPAN_S
    return [
        DataPoint(
            agent_id=AGENT,
            pattern_name=PATTERNS[i % len(PATTERNS)],
            task_type="agent",
            confidence=min(1.0, max(0.0, 0.6 + 0.2 * i / total + rng.gauss(0, 0.1))),
            success=rng.random() < 0.95,
            timestamp=first + SPAN_S * i / total,
            execution_time=rng.uniform(20, 400),
        )
        for i in range(start, start + count)
    ]


def bench_insert(tracker: ConfidenceTracker, total: int, batch: int, now: float) -> float:
    rng = random.Random(1)
    spent = 0.0
    for start in range(0, total, batch):
        points = make_points(start, min(batch, total - start), total, now, rng)
        began = time.perf_counter()
        tracker.record_many(points)
        spent += time.perf_counter() - began
    return spent


def bench_recorder(tracker: ConfidenceTracker, now: float) -> tuple[float, float]:
    """Per-point cost of add(): buffer only, and with the flushing thread writing SQLite."""
    points = make_points(0, RECORDER_POINTS, RECORDER_POINTS, now, random.Random(2))
    quiet = TrackingRecorder(
        ConfidenceTracker(InMemoryTrackingStore()),
        max_buffered=RECORDER_POINTS,
        background=False,
    )
    began = time.perf_counter()
    for point in points:
        quiet.add(point)
    buffered_us = (time.perf_counter() - began) / RECORDER_POINTS * 1e6
    live = TrackingRecorder(tracker, max_buffered=RECORDER_POINTS)
    began = time.perf_counter()
    for point in points:
        live.add(point)
    flushing_us = (time.perf_counter() - began) / RECORDER_POINTS * 1e6
    live.close()
    return buffered_us, flushing_us


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=DEFAULT_POINTS)
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH)
    parser.add_argument("--db", type=Path, default=None, help="SQLite file (default: temp)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="taskplane-bench-") as scratch:
        path = args.db or Path(scratch) / "tracking.db"
        store = SqlTrackingStore(f"sqlite:///{path}")
        now = time.time()
        tracker = ConfidenceTracker(store, clock=lambda: now)

        insert_s = bench_insert(tracker, args.points, args.batch, now)
        print(f"insert {args.points:,} points in batches of {args.batch:,}: {insert_s:.1f} s")
        print(f"  {args.points / insert_s:,.0f} points/s; file {path.stat().st_size / 1e6:.0f} MB")

        whole = (now - SPAN_S, now + 1)
        stats = tracker.get_agent_stats(AGENT, time_range=whole)
        assert stats["totalExecutions"] == args.points, stats
        figures = {
            "get_agent_stats, everything kept": lambda: tracker.get_agent_stats(AGENT),
            "get_agent_stats, whole range": lambda: tracker.get_agent_stats(AGENT, whole),
            "get_agent_stats, whole range, one pattern": lambda: tracker.get_agent_stats(
                AGENT, whole, pattern_name="review"
            ),
            "get_agent_stats, last 3 h": lambda: tracker.get_agent_stats(
                AGENT, (now - 3 * 3600, now)
            ),
            "get_pattern_stats, whole range": lambda: tracker.get_pattern_stats(
                "review", whole[0], whole[1]
            ),
            "check_anomalies (one agent)": lambda: tracker.check_anomalies(AGENT),
            "for comparison: SQL scan of every raw point": lambda: store.sum_points(
                start=None, end=None, ref=now, agent_id=AGENT
            ),
        }
        print(f"median of {REPEATS} (goal for get_agent_stats: < 200 ms):")
        for name, call in figures.items():
            print(f"  {name}: {median_ms(call):.1f} ms")
        print(f"  stats: {stats}")

        buffered_us, flushing_us = bench_recorder(tracker, now)
        print(f"TrackingRecorder.add: {buffered_us:.2f} µs/point buffered only,")
        print(f"  {flushing_us:.2f} µs/point while its thread writes SQLite")
        store.close()


if __name__ == "__main__":
    main()
