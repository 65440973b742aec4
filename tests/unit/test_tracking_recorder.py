"""The recorder: cheap adds, one write per batch, nothing lost on close or outage."""

from __future__ import annotations

import threading
from collections.abc import Sequence

import pytest

from taskplane.errors import BackendError
from taskplane.models import ExecutionResult, TaskStatus
from taskplane.tracking import (
    ConfidenceTracker,
    DataPoint,
    InMemoryTrackingStore,
    TrackingRecorder,
)

NOW = 1_750_000_000.0
WAIT_S = 10.0


class CountingStore(InMemoryTrackingStore):
    """Counts writes (one per ``record_many``) and can fail the first few."""

    def __init__(self, *, failures: int = 0) -> None:
        super().__init__()
        self.batches: list[int] = []
        self.failures = failures
        self.written = threading.Event()

    def add(self, points: Sequence[DataPoint]) -> None:
        if self.failures:
            self.failures -= 1
            raise BackendError("tracking store sqlite:///x.db: database is locked")
        super().add(points)
        self.batches.append(len(points))
        self.written.set()


def pt(i: int) -> DataPoint:
    return DataPoint(agent_id="a", confidence=(i % 100) / 100, timestamp=NOW + i)


def recorder_over(store: CountingStore, **options: object) -> TrackingRecorder:
    tracker = ConfidenceTracker(store, clock=lambda: NOW)
    return TrackingRecorder(tracker, **options)  # type: ignore[arg-type]


def test_add_only_buffers_and_flush_writes_one_batch_per_record_many() -> None:
    store = CountingStore()
    recorder = recorder_over(store, batch_size=200, background=False)
    for i in range(450):
        recorder.add(pt(i))
    assert store.batches == []
    assert recorder.pending == 450

    assert recorder.flush() == 450

    assert store.batches == [200, 200, 50]
    assert recorder.pending == 0
    assert len(store.points(limit=1000)) == 450


def test_a_full_batch_wakes_the_background_thread() -> None:
    store = CountingStore()
    recorder = recorder_over(store, batch_size=50, flush_interval_s=3600.0)
    try:
        for i in range(50):
            recorder.add(pt(i))
        assert store.written.wait(WAIT_S)
        assert store.batches == [50]
    finally:
        recorder.close()


def test_the_interval_flushes_a_partial_batch() -> None:
    store = CountingStore()
    recorder = recorder_over(store, batch_size=1000, flush_interval_s=0.05)
    try:
        recorder.add(pt(1))
        assert store.written.wait(WAIT_S)
        assert store.batches == [1]
    finally:
        recorder.close()


def test_close_writes_everything_left_and_refuses_later_points() -> None:
    store = CountingStore()
    recorder = recorder_over(store, batch_size=200, flush_interval_s=3600.0)
    for i in range(10):
        recorder.add(pt(i))

    recorder.close()

    assert store.batches == [10]
    recorder.add(pt(11))
    assert recorder.pending == 0
    assert len(store.points()) == 10
    recorder.close()  # twice is fine


def test_a_failed_flush_keeps_the_points_for_the_next_try() -> None:
    store = CountingStore(failures=1)
    recorder = recorder_over(store, batch_size=2, background=False)
    for i in range(3):
        recorder.add(pt(i))

    assert recorder.flush() == 0
    assert recorder.pending == 3
    assert recorder.flush() == 3

    assert store.batches == [2, 1]
    assert sorted(p.timestamp for p in store.points()) == [NOW, NOW + 1, NOW + 2]


def test_a_full_buffer_drops_the_oldest_points() -> None:
    store = CountingStore()
    recorder = recorder_over(store, batch_size=2, max_buffered=5, background=False)
    for i in range(8):
        recorder.add(pt(i))

    assert recorder.pending == 5
    assert recorder.dropped == 3
    recorder.flush()
    assert sorted(p.timestamp - NOW for p in store.points()) == [3, 4, 5, 6, 7]


def test_add_result_queues_tracked_envelopes_only() -> None:
    store = CountingStore()
    recorder = recorder_over(store, background=False)
    agent = ExecutionResult(
        task_id="t1",
        status=TaskStatus.SUCCESS,
        confidence=0.7,
        execution_time=12.0,
        metadata={"taskType": "agent", "agentId": "a1", "target": "a1"},
    )
    http = {"taskId": "t2", "status": "success", "metadata": {"taskType": "http"}}

    queued = recorder.add_result(agent.to_json_dict())

    assert queued is not None
    assert queued.agent_id == "a1"
    assert queued.timestamp == NOW
    assert recorder.add_result(http) is None
    assert recorder.pending == 1


def test_options_are_checked() -> None:
    with pytest.raises(ValueError, match="batch_size"):
        recorder_over(CountingStore(), batch_size=0, background=False)
