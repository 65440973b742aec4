"""The confidence plot: a PNG with points, bucket means and anomaly markers."""

from __future__ import annotations

from pathlib import Path

import pytest

from taskplane.tracking import ConfidenceTracker, DataPoint, InMemoryTrackingStore

pytest.importorskip("matplotlib", reason="plotting is the optional 'plot' extra")

from taskplane.tracking.plot import plot_history, plot_span

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


def test_the_plot_spans_the_data_not_the_whole_window() -> None:
    day = 86400.0
    assert plot_span(NOW - day, NOW, []) == (NOW - day, NOW)
    low, high = plot_span(NOW - day, NOW, [NOW - 120, NOW - 60])
    assert high == NOW and NOW - 120 - 30 <= low < NOW - 120  # two minutes fill the plot
    assert plot_span(NOW - 3600, NOW, [NOW - 3590])[0] == NOW - 3600  # never before the window
