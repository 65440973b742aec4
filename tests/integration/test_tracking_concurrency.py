"""Several worker processes writing one SQLite tracking file at once."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

import pytest

from taskplane.tracking import ConfidenceTracker, DataPoint, SqlTrackingStore

pytestmark = pytest.mark.integration

PROCESSES = 3
BATCHES = 15
BATCH_SIZE = 50


def write_points(url: str, worker: int, start_at: float) -> int:
    """Runs in a child process: write batches, report how many anomalies it emitted."""
    emitted: list[str] = []
    now = time.time()
    tracker = ConfidenceTracker(
        SqlTrackingStore(url),
        emit=lambda name, data: emitted.append(data["type"]),
        check_on_record_every_s=0.0,
    )
    while time.time() < start_at:
        time.sleep(0.01)
    for batch in range(BATCHES):
        tracker.record_many(
            DataPoint(
                agent_id="shared",
                confidence=0.2,
                timestamp=now - 0.001 * (worker * 10_000 + batch * BATCH_SIZE + i),
            )
            for i in range(BATCH_SIZE)
        )
    tracker.close()
    return emitted.count("low_confidence")


def test_worker_processes_share_one_sqlite_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tracking.db'}"
    SqlTrackingStore(url).upgrade()
    context = multiprocessing.get_context("spawn")
    start_at = time.time() + 3.0
    with context.Pool(PROCESSES) as pool:
        emitted = pool.starmap(write_points, [(url, w, start_at) for w in range(PROCESSES)])

    store = SqlTrackingStore(url)
    tracker = ConfidenceTracker(store)
    stats = tracker.get_agent_stats("shared")
    assert stats["totalExecutions"] == PROCESSES * BATCHES * BATCH_SIZE
    assert stats["avgConfidence"] == pytest.approx(0.2)
    assert len(store.points(limit=10_000)) == PROCESSES * BATCHES * BATCH_SIZE
    assert sum(emitted) == 1  # one episode, reported by exactly one process
    assert [a["type"] for a in tracker.active_anomalies("shared")] == ["low_confidence"]
    store.close()
