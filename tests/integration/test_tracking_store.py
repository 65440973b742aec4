"""Tracking store and statistics: one suite, run against memory, SQLite and PostgreSQL."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest
import sqlalchemy as sa

import tests.integration.test_tracking_support as support
from taskplane.tracking import (
    ConfidenceTracker,
    DataPoint,
    Granularity,
    SqlTrackingStore,
    TrackingStore,
)
from tests.integration.test_tracking_support import NOW, FakeClock, StoreFactory, point

pytestmark = pytest.mark.integration

store_factory = support.store_factory
store = support.store

DAY = 86400.0


def tracker_over(store: TrackingStore, clock: FakeClock | None = None) -> ConfidenceTracker:
    return ConfidenceTracker(store, clock=clock or FakeClock())


def brute_stats(points: list[DataPoint]) -> dict[str, float]:
    """Stats the slow, obvious way."""
    n = len(points)
    reported = [p.tokens for p in points if p.tokens is not None]
    if not n:
        return {"totalExecutions": 0, "avgConfidence": 0.0, "confidenceTrend": 0.0}
    mean_t = sum(p.timestamp for p in points) / n
    mean_c = sum(p.confidence for p in points) / n
    sxx = sum((p.timestamp - mean_t) ** 2 for p in points)
    sxy = sum((p.timestamp - mean_t) * (p.confidence - mean_c) for p in points)
    return {
        "totalExecutions": n,
        "avgConfidence": mean_c,
        "successRate": sum(p.success for p in points) / n,
        "avgExecutionTime": sum(p.execution_time for p in points) / n,
        "totalTokens": sum(reported),
        "avgTokens": sum(reported) / len(reported) if reported else 0.0,
        "confidenceTrend": sxy / sxx * 3600 if sxx else 0.0,
    }


def test_query_filters_order_and_limit(store: TrackingStore) -> None:
    tracker = tracker_over(store)
    tracker.record_many(
        [
            point("a", 0.9, NOW - 50, pattern="p1"),
            point("a", 0.4, NOW - 40, pattern="p2"),
            point("b", 0.7, NOW - 30, pattern="p1"),
            point("b", 0.2, NOW - 20),
            point("c", 0.95, NOW - 10, pattern="p1"),
        ]
    )

    everything = tracker.query()
    assert [p.timestamp for p in everything] == [NOW - 10, NOW - 20, NOW - 30, NOW - 40, NOW - 50]
    assert [p.agent_id for p in tracker.query(agent_ids=["a", "b"])] == ["b", "b", "a", "a"]
    assert [p.confidence for p in tracker.query(pattern_names=["p1"])] == [0.95, 0.7, 0.9]
    assert [p.confidence for p in tracker.query(start=NOW - 40, end=NOW - 20)] == [0.7, 0.4]
    assert [p.confidence for p in tracker.query(min_confidence=0.7)] == [0.95, 0.7, 0.9]
    assert [p.confidence for p in tracker.query(max_confidence=0.4)] == [0.2, 0.4]
    assert [p.confidence for p in tracker.query(limit=2)] == [0.95, 0.2]
    assert tracker.query(agent_ids=["nobody"]) == []
    first = everything[0]
    assert first.to_json_dict() == {
        "agentId": "c",
        "patternName": "p1",
        "taskType": "agent",
        "confidence": 0.95,
        "success": True,
        "timestamp": NOW - 10,
        "executionTime": 100.0,
        "tokens": None,
    }


def test_pattern_stats_with_agent_breakdown(store: TrackingStore) -> None:
    tracker = tracker_over(store)
    tracker.record_many(
        [
            point("a", 0.9, NOW - 30, pattern="review"),
            point("a", 0.8, NOW - 20, pattern="review", ms=300.0),
            point("b", 0.3, NOW - 10, pattern="review", success=False),
            point("b", 0.1, NOW - 5, pattern="other"),
        ]
    )

    stats = tracker.get_pattern_stats("review")

    assert stats["totalExecutions"] == 3
    assert stats["avgConfidence"] == pytest.approx(2.0 / 3.0)
    assert stats["successRate"] == pytest.approx(2.0 / 3.0)
    assert stats["agentBreakdown"]["a"]["totalExecutions"] == 2
    assert stats["agentBreakdown"]["a"]["avgConfidence"] == pytest.approx(0.85)
    assert stats["agentBreakdown"]["a"]["avgExecutionTime"] == pytest.approx(200.0)
    assert stats["agentBreakdown"]["b"] == {
        "totalExecutions": 1,
        "avgConfidence": pytest.approx(0.3),
        "successRate": 0.0,
        "avgExecutionTime": pytest.approx(100.0),
        "totalTokens": 0,
        "avgTokens": 0.0,
    }
    assert tracker.get_pattern_stats("review", start=NOW - 15)["totalExecutions"] == 1
    assert tracker.get_pattern_stats("missing")["totalExecutions"] == 0


def test_agent_stats_counts_means_and_trend_sign(store: TrackingStore) -> None:
    tracker = tracker_over(store)
    improving = [point("up", 0.5 + 0.04 * i, NOW - 3600 + 300 * i) for i in range(10)]
    worsening = [point("down", 0.9 - 0.05 * i, NOW - 3600 + 300 * i) for i in range(10)]
    tracker.record_many(improving + worsening)
    tracker.record(point("up", 0.2, NOW - 7200, pattern="p", success=False, ms=500.0))

    up = tracker.get_agent_stats("up", time_range=(NOW - 3600, NOW))
    down = tracker.get_agent_stats("down")
    assert up["agentId"] == "up"
    assert up["totalExecutions"] == 10
    assert up["avgConfidence"] == pytest.approx(0.68)
    assert up["successRate"] == 1.0
    assert up["confidenceTrend"] == pytest.approx(0.04 * 12)  # 0.04 per 5 minutes
    assert down["confidenceTrend"] < 0
    assert down["confidenceTrend"] == pytest.approx(-0.05 * 12)

    everything = tracker.get_agent_stats("up")
    assert everything["totalExecutions"] == 11
    assert everything["successRate"] == pytest.approx(10 / 11)
    only_p = tracker.get_agent_stats("up", pattern_name="p")
    assert only_p["totalExecutions"] == 1
    assert only_p["avgExecutionTime"] == pytest.approx(500.0)
    as_datetimes = tracker.get_agent_stats(
        "up",
        time_range=(
            datetime.fromtimestamp(NOW - 3600, UTC),
            datetime.fromtimestamp(NOW, UTC),
        ),
    )
    assert as_datetimes["totalExecutions"] == 10
    nothing = tracker.get_agent_stats("nobody")
    assert nothing["totalExecutions"] == 0
    assert nothing["avgConfidence"] == 0.0
    assert nothing["confidenceTrend"] == 0.0


def test_rollup_answers_match_raw_points(store: TrackingStore) -> None:
    rng = random.Random(7)
    points = [
        point(
            rng.choice(["a", "b"]),
            round(rng.random(), 3),
            NOW - rng.uniform(0, 9 * DAY),
            pattern=rng.choice(["", "p1", "p2"]),
            success=rng.random() < 0.8,
            ms=rng.uniform(10, 1000),
            tokens=rng.choice([None, rng.randrange(0, 5000)]),
        )
        for _ in range(3000)
    ]
    tracker = tracker_over(store)
    for start in range(0, len(points), 500):
        tracker.record_many(points[start : start + 500])

    ranges: list[tuple[float | None, float | None]] = [
        (None, None),
        (NOW - 6 * DAY + 123.4, NOW - 3 * 3600 + 5),
        (NOW - 50 * 60, NOW),
        (NOW - 25 * 3600, NOW - 2 * 3600 + 17),
        (NOW - 2 * DAY, None),
        (NOW - 30.5, NOW - 10),
    ]
    for start, end in ranges:
        for pattern in (None, "p1"):
            expected = brute_stats(
                [
                    p
                    for p in points
                    if p.agent_id == "a"
                    and (start is None or p.timestamp >= start)
                    and (end is None or p.timestamp < end)
                    and (pattern is None or p.pattern_name == pattern)
                ]
            )
            got = tracker.get_agent_stats("a", time_range=(start, end), pattern_name=pattern)
            assert got["totalExecutions"] == expected["totalExecutions"], (start, end, pattern)
            assert got["totalTokens"] == expected.get("totalTokens", 0), (start, end, pattern)
            for key in ("avgConfidence", "successRate", "avgExecutionTime", "avgTokens"):
                assert got[key] == pytest.approx(expected.get(key, 0.0), rel=1e-9, abs=1e-9)
            assert got["confidenceTrend"] == pytest.approx(
                expected["confidenceTrend"], rel=1e-6, abs=1e-12
            )

    by_day = tracker.get_history("a", "day")
    assert sum(row["count"] for row in by_day) == sum(p.agent_id == "a" for p in points)
    assert [row["time"] for row in by_day] == sorted(row["time"] for row in by_day)
    by_hour = tracker.get_history("a", "hour", start=NOW - 3 * 3600)
    recent = [p for p in points if p.agent_id == "a" and p.timestamp >= NOW - 3 * 3600]
    first_hour = math.floor((NOW - 3 * 3600) / 3600) * 3600
    early = [p for p in points if p.agent_id == "a" and first_hour <= p.timestamp < NOW - 3 * 3600]
    assert sum(row["count"] for row in by_hour) == len(recent) + len(early)


def test_range_older_than_raw_retention_rounds_to_days(store: TrackingStore) -> None:
    tracker = tracker_over(store)
    day_start = math.floor((NOW - 10 * DAY) / DAY) * DAY
    tracker.record_many([point("a", 0.5, day_start + 100), point("a", 0.7, day_start + 50000)])
    stats = tracker.get_agent_stats("a", time_range=(day_start + 40000, day_start + 60000))
    assert stats["totalExecutions"] == 2  # the whole day's bucket


def test_history_buckets(store: TrackingStore) -> None:
    tracker = tracker_over(store)
    minute = math.floor(NOW / 60) * 60
    tracker.record_many(
        [
            point("a", 0.8, minute - 60 + 1),
            point("a", 0.6, minute - 60 + 2, success=False),
            point("a", 0.4, minute + 1),
            point("b", 0.1, minute + 2),
        ]
    )

    history = tracker.get_history("a", "minute")

    assert history == [
        {"time": minute - 60, "avgConfidence": pytest.approx(0.7), "count": 2, "successRate": 0.5},
        {"time": minute, "avgConfidence": pytest.approx(0.4), "count": 1, "successRate": 1.0},
    ]
    assert tracker.get_history("a", "minute", start=minute + 30) == history[1:]
    assert tracker.get_history("a", "minute", end=minute) == history[:1]
    assert tracker.get_history("a", "hour")[0]["count"] == 3


def test_history_refuses_unknown_interval(store: TrackingStore) -> None:
    with pytest.raises(ValueError, match="interval"):
        tracker_over(store).get_history("a", "week")


def test_outliers_by_z_score(store: TrackingStore) -> None:
    tracker = tracker_over(store)
    normal = [point("a", 0.8 + (0.01 if i % 2 else -0.01), NOW - 100 * i) for i in range(1, 16)]
    tracker.record_many([*normal, point("a", 0.1, NOW - 50)])

    outliers = tracker.detect_outliers("a", threshold=2.0)

    assert [p.confidence for p in outliers] == [0.1]
    assert tracker.detect_outliers("a", threshold=10.0) == []
    tracker.record_many(
        [point("few", 0.1, NOW), *(point("few", 0.9, NOW - i) for i in range(1, 9))]
    )
    assert tracker.detect_outliers("few") == []  # 9 points: too few to judge


def test_prune_applies_each_retention(store: TrackingStore) -> None:
    clock = FakeClock()
    tracker = tracker_over(store, clock)
    times = [NOW - 8 * DAY, NOW - 40 * DAY, NOW - 2 * 3600, NOW - 30 * 3600, NOW - 90 * 60]
    tracker.record_many([point("a", 0.5, t) for t in [*times, NOW - 30 * 60, NOW - 5 * 60]])

    deleted = tracker.prune()

    assert deleted > 0
    assert sorted(p.timestamp for p in tracker.query()) == sorted(
        [NOW - 2 * 3600, NOW - 30 * 3600, NOW - 90 * 60, NOW - 30 * 60, NOW - 5 * 60]
    )
    minutes = tracker.get_history("a", "minute")
    assert all(row["time"] >= NOW - 3600 for row in minutes)
    assert sum(row["count"] for row in minutes) == 2
    hours = tracker.get_history("a", "hour")
    assert all(row["time"] >= NOW - 24 * 3600 for row in hours)
    assert sum(row["count"] for row in hours) == 4
    days = tracker.get_history("a", "day")
    assert all(row["time"] >= NOW - 30 * DAY for row in days)
    assert sum(row["count"] for row in days) == 6  # the 8-day-old point lives on in its day
    assert tracker.get_agent_stats("a")["totalExecutions"] == 6
    assert tracker.prune() == 0


def test_store_sums_by_granularity(store: TrackingStore) -> None:
    store.add([point("a", 0.5, NOW - 10), point("a", 0.7, NOW - 5), point("b", 0.9, NOW)])
    for granularity in Granularity:
        sums = store.sum_buckets(granularity, start=None, end=None, ref=NOW)
        assert {agent: s.count for agent, s in sums.items()} == {"a": 2, "b": 1}
        assert sums["a"].sum_offset == pytest.approx(-15.0)
        assert sums["a"].sum_sq_offset == pytest.approx(125.0)
    raw = store.sum_points(start=NOW - 7, end=None, ref=NOW, agent_id="a")
    assert raw["a"].count == 1
    assert raw["a"].sum_offset_confidence == pytest.approx(-3.5)
    assert store.agents(since=NOW - 60) == ["a", "b"]


def test_upgrade_is_idempotent_and_stores_persist(store_factory: StoreFactory) -> None:
    first = store_factory()
    first.upgrade()
    first.add([point("a", 0.5, NOW)])
    second = store_factory()
    second.upgrade()
    second.upgrade()
    assert [p.agent_id for p in second.points()] == ["a"]


@pytest.mark.parametrize("store_factory", support.BACKENDS[1:], indirect=True)
def test_a_version_1_database_is_upgraded_in_place(store_factory: StoreFactory) -> None:
    old = store_factory()
    assert isinstance(old, SqlTrackingStore)
    old.add([point("a", 0.5, NOW - 20)])
    with old.engine.begin() as conn:  # back to what version 1 wrote
        conn.execute(sa.text("ALTER TABLE tracking_points DROP COLUMN tokens"))
        for column in ("sum_tokens", "token_count"):
            conn.execute(sa.text(f"ALTER TABLE tracking_rollups DROP COLUMN {column}"))
        conn.execute(sa.text("UPDATE tracking_meta SET value = '1' WHERE key = 'schema_version'"))
    old.close()

    upgraded, again = store_factory(), store_factory()
    tracker = tracker_over(upgraded)
    tracker.record(point("a", 0.7, NOW - 10, tokens=300))
    again.upgrade()  # a second process upgrading finds nothing left to do
    stats = tracker.get_agent_stats("a")
    assert (stats["totalExecutions"], stats["totalTokens"], stats["avgTokens"]) == (2, 300, 300.0)
    assert [p.tokens for p in upgraded.points()] == [300, None]
    assert isinstance(upgraded, SqlTrackingStore)
    with upgraded.engine.connect() as conn:
        version = conn.execute(
            sa.text("SELECT value FROM tracking_meta WHERE key = 'schema_version'")
        ).scalar()
    assert version == "2"
