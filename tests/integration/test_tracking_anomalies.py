"""Anomaly episodes: once per episode, shared by every tracker over one store.

Runs against memory, SQLite and PostgreSQL; the clock is injected.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

import tests.integration.test_tracking_support as support
from taskplane.config import AnomalyDetectionConfig
from taskplane.tracking import Anomaly, ConfidenceTracker, TrackingStore
from tests.integration.test_tracking_support import NOW, FakeClock, StoreFactory, point

pytestmark = pytest.mark.integration

store_factory = support.store_factory
store = support.store


class Events:
    """Collects what a tracker emits."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, name: str, data: dict[str, Any]) -> None:
        self.seen.append((name, data))

    def of(self, anomaly_type: str) -> list[dict[str, Any]]:
        return [data for name, data in self.seen if data["type"] == anomaly_type]


def make_tracker(
    store: TrackingStore, clock: FakeClock, events: Events, **config: Any
) -> ConfidenceTracker:
    return ConfidenceTracker(
        store,
        anomaly=AnomalyDetectionConfig.model_validate(config),
        emit=events,
        clock=clock,
        check_on_record_every_s=0.0,
    )


def baseline(agent: str, confidence: float = 0.9, count: int = 10) -> list[Any]:
    """Steady points spread over the last 20 hours, none in the last hour."""
    return [point(agent, confidence, NOW - 2 * 3600 * (i + 1)) for i in range(count)]


def test_sudden_drop_once_per_episode_and_again_after_clearing(store: TrackingStore) -> None:
    clock, events = FakeClock(), Events()
    tracker = make_tracker(store, clock, events)
    tracker.record_many(baseline("a"))
    assert events.seen == []

    tracker.record(point("a", 0.4, clock.now))
    assert [data["type"] for _, data in events.seen] == ["sudden_drop"]
    name, data = events.seen[0]
    assert name == "anomaly:detected"
    assert data["agentId"] == "a"
    assert data["severity"] == "critical"  # 0.5 below a 0.9 baseline: past 1.5 x 0.3
    assert data["details"]["latest"] == 0.4
    assert data["details"]["baseline"] == pytest.approx(0.9)

    clock.advance(600)
    tracker.record(point("a", 0.45, clock.now))
    assert tracker.check_anomalies("a") == []
    assert len(events.of("sudden_drop")) == 1
    assert [a["type"] for a in tracker.active_anomalies()] == ["sudden_drop"]

    clock.advance(600)
    tracker.record(point("a", 0.9, clock.now))
    assert tracker.active_anomalies() == []
    cleared = store.anomalies(agent_id="a", open_only=False)
    assert [(a.type, a.cleared_at) for a in cleared] == [("sudden_drop", clock.now)]

    clock.advance(600)
    tracker.record(point("a", 0.5, clock.now))
    assert len(events.of("sudden_drop")) == 2
    assert events.of("sudden_drop")[1]["severity"] == "warning"


def test_sudden_drop_judges_the_newest_point_by_timestamp(store: TrackingStore) -> None:
    clock, events = FakeClock(), Events()
    tracker = make_tracker(store, clock, events)
    tracker.record_many(baseline("a"))
    # A late-arriving old low point is not "the latest".
    tracker.record_many([point("a", 0.9, NOW - 60), point("a", 0.3, NOW - 3000)])
    assert events.of("sudden_drop") == []


def test_low_confidence_once_per_episode_and_again_after_clearing(store: TrackingStore) -> None:
    clock, events = FakeClock(), Events()
    tracker = make_tracker(store, clock, events)
    for _ in range(3):
        tracker.record(point("a", 0.45, clock.now))
        clock.advance(30)
    assert [data["type"] for _, data in events.seen] == ["low_confidence"]
    assert events.seen[0][1]["severity"] == "warning"
    assert events.seen[0][1]["details"]["mean"] == pytest.approx(0.45)

    tracker.record(point("a", 0.4, clock.now))
    tracker.check_anomalies()
    assert len(events.of("low_confidence")) == 1

    clock.advance(360)
    tracker.record_many([point("a", 0.9, clock.now - i) for i in range(3)])
    assert "low_confidence" not in [a["type"] for a in tracker.active_anomalies()]

    clock.advance(360)
    tracker.record_many([point("a", 0.2, clock.now - i) for i in range(3)])
    assert len(events.of("low_confidence")) == 2
    assert events.of("low_confidence")[1]["severity"] == "critical"


def test_high_variance_once_per_episode_and_again_after_clearing(store: TrackingStore) -> None:
    clock, events = FakeClock(), Events()
    tracker = make_tracker(store, clock, events)
    swinging = [point("a", 0.2 if i % 2 else 0.95, NOW - 600 * (i + 1)) for i in range(5)]
    tracker.record_many([*swinging, point("a", 0.9, NOW)])
    assert [data["type"] for _, data in events.seen] == ["high_variance"]
    assert events.seen[0][1]["details"]["stddev"] > 0.3
    assert events.seen[0][1]["severity"] == "critical"

    clock.advance(60)
    tracker.record(point("a", 0.2, clock.now - 1))
    tracker.record(point("a", 0.9, clock.now))
    assert len(events.of("high_variance")) == 1

    clock.advance(3700)
    tracker.record_many([point("a", 0.8, clock.now - i) for i in range(5)])
    assert tracker.active_anomalies("a") == []

    clock.advance(60)
    tracker.record_many([point("a", 0.2 if i % 2 else 0.95, clock.now - i) for i in range(5)])
    assert len(events.of("high_variance")) == 2


def test_too_little_data_leaves_episodes_alone(store: TrackingStore) -> None:
    clock, events = FakeClock(), Events()
    tracker = make_tracker(store, clock, events)
    tracker.record_many([point("a", 0.1, NOW), point("a", 0.1, NOW - 1)])
    assert events.seen == []
    assert tracker.check_anomalies() == []


def test_disabled_detection_reports_nothing(store: TrackingStore) -> None:
    clock, events = FakeClock(), Events()
    tracker = make_tracker(store, clock, events, enabled=False)
    tracker.record_many([point("a", 0.1, NOW - i) for i in range(10)])
    assert tracker.check_anomalies() == []
    assert events.seen == []
    assert tracker.active_anomalies() == []


def test_periodic_check_covers_agents_with_recent_points(store: TrackingStore) -> None:
    clock, events = FakeClock(), Events()
    quiet = ConfidenceTracker(store, clock=clock, emit=events, check_on_record_every_s=3600)
    # The first record checks each agent (too little data yet); later ones in the hour do not.
    quiet.record_many([point(agent, 0.1, NOW - 7200) for agent in ("a", "b")])
    quiet.record_many([point("a", 0.2, NOW - i) for i in range(3)])
    quiet.record_many([point("b", 0.1, NOW - i) for i in range(3)])
    assert events.seen == []

    emitted = quiet.check_anomalies()

    assert sorted((e["agentId"], e["type"]) for e in emitted) == [
        ("a", "low_confidence"),
        ("b", "low_confidence"),
    ]
    assert [e for _, e in events.seen] == emitted
    assert quiet.check_anomalies() == []


def test_two_trackers_over_one_store_agree(store_factory: StoreFactory) -> None:
    clock = FakeClock()
    first_events, second_events = Events(), Events()
    first = make_tracker(store_factory(), clock, first_events)
    second = make_tracker(store_factory(), clock, second_events)
    first.record_many([point("a", 0.2, NOW - i) for i in range(3)])
    second.check_anomalies("a")

    assert [e["type"] for _, e in first_events.seen] == ["low_confidence"]
    assert second_events.seen == []
    assert first.active_anomalies() == second.active_anomalies()
    assert [a["type"] for a in second.active_anomalies("a")] == ["low_confidence"]

    clock.advance(400)
    second.record_many([point("a", 0.9, clock.now - i) for i in range(3)])
    assert "low_confidence" not in [a["type"] for a in first.active_anomalies()]
    assert len(first.active_anomalies()) == len(second.active_anomalies()) == 1


def test_opening_an_episode_is_atomic(store_factory: StoreFactory) -> None:
    stores = [store_factory() for _ in range(4)]
    for each in stores:
        each.upgrade()
    barrier = threading.Barrier(len(stores))
    wins: list[bool] = []

    def race(each: TrackingStore) -> None:
        barrier.wait()
        opened = each.open_anomaly(
            Anomaly(agent_id="a", type="low_confidence", opened_at=NOW, details={"mean": 0.1})
        )
        wins.append(opened)

    threads = [threading.Thread(target=race, args=(each,)) for each in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert sorted(wins) == [False, False, False, True]
    (episode,) = stores[0].anomalies()
    assert episode.details == {"mean": 0.1}
    assert stores[1].clear_anomaly("a", "low_confidence", cleared_at=NOW + 1)
    assert not stores[2].clear_anomaly("a", "low_confidence", cleared_at=NOW + 2)
    assert stores[3].open_anomaly(Anomaly(agent_id="a", type="low_confidence", opened_at=NOW + 3))
    assert len(stores[0].anomalies(open_only=False)) == 2
