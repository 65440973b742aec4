"""A tracking store in process memory, for tests and local use.

It behaves like :class:`~taskplane.tracking.sql.SqlTrackingStore` in every
way the tracker can see, but only one process sees its data.
"""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Mapping, Sequence
from dataclasses import replace

from taskplane.tracking.points import DataPoint
from taskplane.tracking.rollups import Granularity, Sums
from taskplane.tracking.store import Anomaly, BucketKey, TrackingStore, bucket_deltas


def _within(value: float, start: float | None, end: float | None) -> bool:
    return (start is None or value >= start) and (end is None or value < end)


class InMemoryTrackingStore(TrackingStore):
    """Points per agent in time order, buckets in a dict, episodes in a list; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._points: dict[str, list[tuple[float, int, DataPoint]]] = {}
        self._buckets: dict[BucketKey, Sums] = {}
        self._anomalies: list[Anomaly] = []
        self._sequence = 0

    def add(self, points: Sequence[DataPoint]) -> None:
        deltas = bucket_deltas(points)
        with self._lock:
            for point in points:
                self._sequence += 1
                rows = self._points.setdefault(point.agent_id, [])
                bisect.insort(rows, (point.timestamp, self._sequence, point), key=lambda r: r[:2])
            for key, delta in deltas.items():
                if key in self._buckets:
                    self._buckets[key].merge(delta)
                else:
                    self._buckets[key] = delta

    def _agent_points(self, agent_id: str | None) -> list[DataPoint]:
        if agent_id is not None:
            return [row[2] for row in self._points.get(agent_id, [])]
        return [row[2] for rows in self._points.values() for row in rows]

    def sum_points(
        self,
        *,
        start: float | None,
        end: float | None,
        ref: float,
        agent_id: str | None = None,
        pattern_name: str | None = None,
    ) -> dict[str, Sums]:
        result: dict[str, Sums] = {}
        with self._lock:
            for point in self._agent_points(agent_id):
                if not _within(point.timestamp, start, end):
                    continue
                if pattern_name is not None and point.pattern_name != pattern_name:
                    continue
                sums = result.setdefault(point.agent_id, Sums(ref=ref))
                sums.add_point(
                    point.timestamp,
                    point.confidence,
                    point.success,
                    point.execution_time,
                    point.tokens,
                )
        return result

    def _matching_buckets(
        self,
        granularity: Granularity,
        start: float | None,
        end: float | None,
        agent_id: str | None,
        pattern_name: str | None,
    ) -> list[tuple[BucketKey, Sums]]:
        return [
            (key, sums)
            for key, sums in self._buckets.items()
            if key[0] == granularity.value
            and (agent_id is None or key[1] == agent_id)
            and (pattern_name is None or key[2] == pattern_name)
            and _within(key[3], start, end)
        ]

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
        result: dict[str, Sums] = {}
        with self._lock:
            for key, sums in self._matching_buckets(
                granularity, start, end, agent_id, pattern_name
            ):
                result.setdefault(key[1], Sums(ref=ref)).merge(sums)
        return result

    def series(
        self,
        granularity: Granularity,
        *,
        agent_id: str,
        start: float | None = None,
        end: float | None = None,
    ) -> list[Sums]:
        by_start: dict[float, Sums] = {}
        with self._lock:
            for key, sums in self._matching_buckets(granularity, start, end, agent_id, None):
                by_start.setdefault(key[3], Sums(ref=key[3])).merge(sums)
        return [by_start[moment] for moment in sorted(by_start)]

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
        with self._lock:
            if agent_ids is None:
                rows = [row for rows in self._points.values() for row in rows]
            else:
                rows = [row for agent in set(agent_ids) for row in self._points.get(agent, [])]
        rows.sort(key=lambda row: row[:2], reverse=True)
        found: list[DataPoint] = []
        for _, _, point in rows:
            if len(found) >= limit:
                break
            if (
                _within(point.timestamp, start, end)
                and (pattern_names is None or point.pattern_name in pattern_names)
                and (min_confidence is None or point.confidence >= min_confidence)
                and (max_confidence is None or point.confidence <= max_confidence)
            ):
                found.append(point)
        return found

    def agents(self, *, since: float) -> list[str]:
        with self._lock:
            return sorted(
                agent for agent, rows in self._points.items() if rows and rows[-1][0] >= since
            )

    def prune(self, *, points_before: float, buckets_before: Mapping[Granularity, float]) -> int:
        deleted = 0
        with self._lock:
            for agent, rows in list(self._points.items()):
                cut = bisect.bisect_left(rows, points_before, key=lambda row: row[0])
                deleted += cut
                del rows[:cut]
                if not rows:
                    del self._points[agent]
            for key in list(self._buckets):
                horizon = buckets_before.get(Granularity(key[0]), -math.inf)
                if key[3] < horizon:
                    del self._buckets[key]
                    deleted += 1
        return deleted

    def open_anomaly(self, anomaly: Anomaly) -> bool:
        with self._lock:
            for existing in self._anomalies:
                if (
                    existing.agent_id == anomaly.agent_id
                    and existing.type == anomaly.type
                    and existing.cleared_at is None
                ):
                    return False
            self._anomalies.append(replace(anomaly, cleared_at=None))
            return True

    def clear_anomaly(self, agent_id: str, anomaly_type: str, *, cleared_at: float) -> bool:
        with self._lock:
            for index, existing in enumerate(self._anomalies):
                if (
                    existing.agent_id == agent_id
                    and existing.type == anomaly_type
                    and existing.cleared_at is None
                ):
                    self._anomalies[index] = replace(existing, cleared_at=cleared_at)
                    return True
            return False

    def anomalies(self, *, agent_id: str | None = None, open_only: bool = True) -> list[Anomaly]:
        with self._lock:
            return [
                anomaly
                for anomaly in self._anomalies
                if (agent_id is None or anomaly.agent_id == agent_id)
                and (not open_only or anomaly.cleared_at is None)
            ]
