"""The confidence plot: a PNG with points, bucket means and anomaly markers."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskplane.tracking import ConfidenceTracker, DataPoint, InMemoryTrackingStore

pytest.importorskip("matplotlib", reason="plotting is the optional 'plot' extra")

from taskplane.tracking.plot import plot_history

NOW = 1_750_000_000.0


def test_plot_history_writes_a_png(tmp_path: Path) -> None:
    tracker = ConfidenceTracker(InMemoryTrackingStore(), clock=lambda: NOW)
    tracker.record_many(
        DataPoint(agent_id="a", confidence=0.9, timestamp=NOW - 600 * i) for i in range(1, 30)
    )
    tracker.record(DataPoint(agent_id="a", confidence=0.2, timestamp=NOW))
    tracker.check_anomalies("a")
    assert "sudden_drop" in [a["type"] for a in tracker.active_anomalies("a")]

    written = plot_history(tracker, "a", tmp_path / "plots" / "a.png", since_s=6 * 3600)

    data = written.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(data) > 5000
