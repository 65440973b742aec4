"""Build a tracker from settings: the one place the tracking package reads them."""

from __future__ import annotations

import time

from taskplane.aliases import Clock, Emit
from taskplane.config import Settings
from taskplane.tracking.memory import InMemoryTrackingStore
from taskplane.tracking.sql import SqlTrackingStore
from taskplane.tracking.store import TrackingStore
from taskplane.tracking.tracker import ConfidenceTracker, no_emit

#: ``database_url`` that selects the in-process store (nothing persisted).
MEMORY_URL = "memory://"


def build_store(database_url: str) -> TrackingStore:
    """The store a URL names: ``memory://`` in process, anything else through SQLAlchemy.

    Raises:
        ConfigurationError: The URL is malformed or names an unsupported database.
    """
    if database_url == MEMORY_URL:
        return InMemoryTrackingStore()
    return SqlTrackingStore(database_url)


def build_tracker(
    settings: Settings,
    *,
    emit: Emit = no_emit,
    clock: Clock = time.time,
) -> ConfidenceTracker:
    """A tracker over ``settings.database_url`` with the settings' aggregation and anomaly rules.

    Nothing connects until the tracker is first used.

    Args:
        settings: Read for ``database_url``, ``aggregation`` and ``anomaly_detection``.
        emit: Receives ``("anomaly:detected", payload)`` once per anomaly episode.
        clock: Epoch seconds.
    """
    return ConfidenceTracker(
        build_store(settings.database_url),
        aggregation=settings.aggregation,
        anomaly=settings.anomaly_detection,
        emit=emit,
        clock=clock,
    )
