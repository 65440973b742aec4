"""Rollup arithmetic: sums that add up, and ranges split into buckets and raw edges."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from taskplane.tracking.rollups import Granularity, Piece, Sums, bucket_start, plan_range, total

NOW = 1_750_000_000.0 + 1234.5  # not aligned to anything
DAY, HOUR, MINUTE = 86400.0, 3600.0, 60.0
HORIZONS = {
    Granularity.DAY: NOW - 29 * DAY,
    Granularity.HOUR: NOW - 23 * HOUR,
    Granularity.MINUTE: NOW - 58 * MINUTE,
}
RAW_HORIZON = NOW - 7 * DAY + HOUR


def sums_of(points: list[tuple[float, float]], ref: float) -> Sums:
    sums = Sums(ref=ref)
    for t, c in points:
        sums.add_point(t, c, c > 0.5, 10.0)
    return sums


def test_sums_merge_across_references_like_one_pass() -> None:
    rng = random.Random(3)
    points = [(NOW - rng.uniform(0, 5 * DAY), rng.random()) for _ in range(500)]
    whole = sums_of(points, ref=NOW)
    halves = [
        sums_of(points[:200], ref=bucket_start(NOW, Granularity.DAY)),
        sums_of(points[200:], ref=NOW - 3 * DAY),
    ]

    merged = total(halves, ref=NOW)

    assert merged.count == whole.count == 500
    assert merged.mean == pytest.approx(whole.mean)
    assert merged.stddev == pytest.approx(whole.stddev)
    assert merged.success_rate == pytest.approx(whole.success_rate)
    assert merged.trend_per_hour == pytest.approx(whole.trend_per_hour, rel=1e-9)


def test_trend_is_slope_per_hour_even_over_seconds() -> None:
    rising = sums_of([(NOW + i, 0.5 + 0.001 * i) for i in range(10)], ref=NOW - 30 * DAY)
    assert rising.trend_per_hour == pytest.approx(3.6)
    assert Sums().trend_per_hour == 0.0
    assert sums_of([(NOW, 0.4), (NOW, 0.9)], ref=NOW).trend_per_hour == 0.0
    assert sums_of([(NOW, 0.4), (NOW, 0.8)], ref=NOW).stddev == pytest.approx(0.2)


def covered(pieces: list[Piece]) -> float:
    return sum(p.end - p.start for p in pieces)


def test_recent_range_uses_coarse_buckets_inside_and_raw_at_the_edges() -> None:
    start, end = NOW - 20 * HOUR - 123.0, NOW - 17.0
    pieces = plan_range(start, end, horizons=HORIZONS, raw_horizon=RAW_HORIZON)

    # Minute buckets that old may be pruned: raw points up to the next whole hour.
    assert pieces[0] == Piece("raw", start, bucket_start(start, Granularity.HOUR) + HOUR)
    assert pieces[-1] == Piece("raw", bucket_start(end, Granularity.MINUTE), end)
    assert {p.source for p in pieces} == {"raw", "minute", "hour"}
    assert all(a.end == b.start for a, b in itertools.pairwise(pieces))
    assert covered(pieces) == pytest.approx(end - start)
    for piece in pieces:
        if piece.source != "raw":
            size = Granularity(piece.source).seconds
            assert piece.start % size == 0
            assert piece.start >= HORIZONS[Granularity(piece.source)]


def test_everything_kept_is_day_buckets_then_finer_sources() -> None:
    pieces = plan_range(-math.inf, math.inf, horizons=HORIZONS, raw_horizon=RAW_HORIZON)
    cut = math.ceil(RAW_HORIZON / DAY) * DAY
    assert pieces[0] == Piece("day", -math.inf, cut)
    assert pieces[1] == Piece("day", cut, math.inf)
    assert len(pieces) == 2


def test_hour_buckets_are_not_used_past_their_horizon() -> None:
    start, end = NOW - 3 * DAY + 7.0, NOW - 2 * DAY
    pieces = plan_range(start, end, horizons=HORIZONS, raw_horizon=RAW_HORIZON)
    assert pieces == [Piece("raw", start, end)]  # no whole day inside, hours too old


def test_range_before_the_raw_horizon_rounds_out_to_days() -> None:
    start = NOW - 10 * DAY + 500.0
    pieces = plan_range(start, NOW - 9 * DAY, horizons=HORIZONS, raw_horizon=RAW_HORIZON)
    assert pieces == [Piece("day", bucket_start(start, Granularity.DAY), NOW - 9 * DAY)]
