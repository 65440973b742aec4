"""Confidence tracking: data points, rollups, statistics and anomaly detection.

Typical wiring in a worker::

    tracker = build_tracker(settings, emit=events.emit)
    recorder = TrackingRecorder(tracker)
    hooks.add(TrackingHooks(recorder)) # each recorded outcome: cheap, buffered
    ...
    recorder.close()                   # on shutdown: writes what is left

and from Celery beat: ``tracker.check_anomalies()`` every
``anomaly_detection.check_interval_ms`` and ``tracker.prune()`` now and then.
"""

from __future__ import annotations

from taskplane.tracking.anomalies import AnomalyDetector
from taskplane.tracking.factory import MEMORY_URL, build_store, build_tracker
from taskplane.tracking.memory import InMemoryTrackingStore
from taskplane.tracking.points import DataPoint, point_from_result, to_epoch
from taskplane.tracking.recorder import TrackingRecorder
from taskplane.tracking.rollups import Granularity, Sums
from taskplane.tracking.sql import SqlTrackingStore
from taskplane.tracking.store import Anomaly, TrackingStore
from taskplane.tracking.tracker import RAW_RETENTION_S, ConfidenceTracker

__all__ = [
    # Tracking
    "ConfidenceTracker",
    "TrackingRecorder",
    "build_tracker",
    # Data
    "Anomaly",
    "DataPoint",
    "Granularity",
    "Sums",
    "point_from_result",
    "to_epoch",
    # Stores
    "InMemoryTrackingStore",
    "SqlTrackingStore",
    "TrackingStore",
    "build_store",
    "MEMORY_URL",
    # Parts and defaults
    "AnomalyDetector",
    "RAW_RETENTION_S",
]
