"""The tracking store interface: raw points, rollup buckets and anomaly episodes.

A store keeps three things:

* raw data points (:class:`~taskplane.tracking.points.DataPoint`);
* rollup buckets per granularity (minute, hour, day), agent and pattern,
  holding :class:`~taskplane.tracking.rollups.Sums`; written in the same
  transaction as the raw points they summarise, so they always agree;
* anomaly episodes, opened at most once per (agent, type) until cleared, so
  every worker and the beat process agree on what is already reported.

Implementations: :class:`~taskplane.tracking.sql.SqlTrackingStore`
(SQLite or PostgreSQL through SQLAlchemy) and
:class:`~taskplane.tracking.memory.InMemoryTrackingStore`. Times are UTC
epoch seconds; ranges are half-open, ``start <= t < end``, and ``None``
means unbounded.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from taskplane.tracking.points import DataPoint
from taskplane.tracking.rollups import Granularity, Sums, bucket_start


@dataclass(frozen=True)
class Anomaly:
    """One anomaly episode: opened when first seen, cleared when the condition ends."""

    agent_id: str
    type: str
    opened_at: float
    severity: str = "warning"
    details: dict[str, Any] = field(default_factory=dict)
    cleared_at: float | None = None

    def to_json_dict(self) -> dict[str, Any]:
        """The camelCase JSON form (what ``anomaly:detected`` carries, plus times)."""
        return {
            "type": self.type,
            "agentId": self.agent_id,
            "severity": self.severity,
            "details": self.details,
            "openedAt": self.opened_at,
            "clearedAt": self.cleared_at,
        }


BucketKey = tuple[str, str, str, float]
"""(granularity, agent_id, pattern_name, bucket_start)."""


def bucket_deltas(points: Sequence[DataPoint]) -> dict[BucketKey, Sums]:
    """What *points* add to each rollup bucket; offsets relative to the bucket start."""
    deltas: dict[BucketKey, Sums] = {}
    for point in points:
        for granularity in Granularity:
            start = bucket_start(point.timestamp, granularity)
            key = (granularity.value, point.agent_id, point.pattern_name, start)
            sums = deltas.get(key)
            if sums is None:
                sums = deltas[key] = Sums(ref=start)
            sums.add_point(
                point.timestamp, point.confidence, point.success, point.execution_time, point.tokens
            )
    return deltas


class TrackingStore(ABC):
    """Where confidence data lives. Every method may raise ``BackendError``."""

    @abstractmethod
    def add(self, points: Sequence[DataPoint]) -> None:
        """Store *points* and fold them into the rollups, in one transaction."""

    @abstractmethod
    def sum_points(
        self,
        *,
        start: float | None,
        end: float | None,
        ref: float,
        agent_id: str | None = None,
        pattern_name: str | None = None,
    ) -> dict[str, Sums]:
        """Sums of raw points in the range, per agent, time offsets relative to *ref*."""

    @abstractmethod
    def sum_buckets(
        self,
        granularity: Granularity,
        *,
        start: float | None,
        end: float | None,
        ref: float,
        agent_id: str | None = None,
        pattern_name: str | None = None,
    ) -> dict[str, Sums]:
        """Sums of the buckets whose start lies in the range, per agent, relative to *ref*."""

    @abstractmethod
    def series(
        self,
        granularity: Granularity,
        *,
        agent_id: str,
        start: float | None = None,
        end: float | None = None,
    ) -> list[Sums]:
        """One :class:`Sums` per bucket of *agent_id* (all patterns), oldest first.

        Each item's ``ref`` is its bucket's start.
        """

    @abstractmethod
    def points(
        self,
        *,
        agent_ids: Sequence[str] | None = None,
        pattern_names: Sequence[str] | None = None,
        start: float | None = None,
        end: float | None = None,
        min_confidence: float | None = None,
        max_confidence: float | None = None,
        limit: int = 100,
    ) -> list[DataPoint]:
        """Raw points matching every given filter (bounds inclusive), newest first."""

    @abstractmethod
    def agents(self, *, since: float) -> list[str]:
        """Agents with points at or after *since* (hour resolution: may include a bit earlier)."""

    @abstractmethod
    def prune(self, *, points_before: float, buckets_before: Mapping[Granularity, float]) -> int:
        """Delete raw points and buckets older than the given instants; return rows deleted."""

    @abstractmethod
    def open_anomaly(self, anomaly: Anomaly) -> bool:
        """Open an episode unless one of its (agent, type) is open; True if this call opened it.

        Atomic across processes: of several concurrent callers exactly one gets True.
        """

    @abstractmethod
    def clear_anomaly(self, agent_id: str, anomaly_type: str, *, cleared_at: float) -> bool:
        """Close the open episode of (agent, type); True if one was open."""

    @abstractmethod
    def anomalies(self, *, agent_id: str | None = None, open_only: bool = True) -> list[Anomaly]:
        """Anomaly episodes, oldest first; only open ones unless *open_only* is False."""

    def upgrade(self) -> None:
        """Bring the store's schema up to date (a no-op for stores without one)."""
        return None

    def close(self) -> None:
        """Release connections; the store must not be used afterwards."""
        return None
