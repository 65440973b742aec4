"""The confidence tracker: records data points, answers statistics, watches for anomalies.

Statistics come from additive sums: whole rollup buckets for the middle of a
range and raw points for its ragged edges (see
:mod:`taskplane.tracking.rollups`), so a week of a busy agent costs a few
small queries, not a scan of a million rows. Retention (:meth:`prune`): raw
points 7 days; minute, hour and day buckets as many minutes, hours and days
as :class:`~taskplane.config.AggregationConfig` says (60, 24, 30). A range
reaching back past the raw retention is answered from day buckets there,
rounded out to whole UTC days.

All times are UTC epoch seconds; arguments also accept datetimes. Ranges
are half-open: ``start <= timestamp < end``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

from taskplane.aliases import Clock, Emit
from taskplane.config import AggregationConfig, AnomalyDetectionConfig
from taskplane.errors import ValidationError
from taskplane.tracking.anomalies import AnomalyDetector
from taskplane.tracking.points import DataPoint, Instant, as_point, optional_epoch
from taskplane.tracking.rollups import Granularity, Sums, bucket_start, plan_range, total
from taskplane.tracking.store import TrackingStore

log = logging.getLogger(__name__)

#: How long raw data points are kept, in seconds.
RAW_RETENTION_S = 7 * 86400.0
#: Least time between two anomaly checks of one agent triggered by recording, per process.
CHECK_ON_RECORD_EVERY_S = 5.0
#: :meth:`ConfidenceTracker.check_anomalies` looks at agents with points this recent.
ACTIVE_AGENT_WINDOW_S = 3600.0
#: Outlier detection needs at least this many points.
MIN_OUTLIER_POINTS = 10
#: Most points :meth:`ConfidenceTracker.query` returns.
MAX_QUERY_LIMIT = 10_000
#: Slack, in seconds, against clock skew between this process and the one pruning.
_SKEW_MARGIN_S = 60.0
_RAW_MARGIN_S = 3600.0


def no_emit(_event: str, _data: dict[str, Any]) -> None:
    """The default emitter: drops the event."""


def _summary(sums: Sums) -> dict[str, Any]:
    return {
        "totalExecutions": sums.count,
        "avgConfidence": sums.mean,
        "successRate": sums.success_rate,
        "avgExecutionTime": sums.mean_execution_time,
        "totalTokens": sums.sum_tokens,
        "avgTokens": sums.mean_tokens,
    }


class ConfidenceTracker:
    """Confidence statistics and anomaly detection over a :class:`TrackingStore`.

    Args:
        store: Where points, rollups and anomaly episodes live.
        aggregation: How many minute/hour/day buckets to keep.
        anomaly: Anomaly thresholds; ``enabled=False`` turns detection off.
        emit: Receives ``("anomaly:detected", {type, agentId, details, severity})``
            once per episode; its failures are logged, never raised.
        clock: Epoch seconds; "now" for windows and retention.
        raw_retention_s: How long raw points are kept.
        check_on_record_every_s: Least time between two anomaly checks of one
            agent triggered by :meth:`record_many` in this process.
    """

    def __init__(
        self,
        store: TrackingStore,
        *,
        aggregation: AggregationConfig | None = None,
        anomaly: AnomalyDetectionConfig | None = None,
        emit: Emit = no_emit,
        clock: Clock = time.time,
        raw_retention_s: float = RAW_RETENTION_S,
        check_on_record_every_s: float = CHECK_ON_RECORD_EVERY_S,
    ) -> None:
        self.store = store
        self.aggregation = aggregation or AggregationConfig.model_validate({})
        self.anomaly = anomaly or AnomalyDetectionConfig.model_validate({})
        self.clock = clock
        self.raw_retention_s = raw_retention_s
        self.detector = AnomalyDetector(
            store,
            self.anomaly,
            range_sums=self._agent_sums_since,
            emit=emit,
            clock=clock,
            check_on_record_every_s=check_on_record_every_s,
        )

    # -- recording ---------------------------------------------------------------------------

    def record(self, point: DataPoint | dict[str, Any]) -> None:
        """Store one point (and check its agent for anomalies, at most every few seconds)."""
        self.record_many([point])

    def record_many(self, points: Iterable[DataPoint | dict[str, Any]]) -> None:
        """Store *points* in one transaction, then check their agents for anomalies.

        Raises:
            BackendError: The store cannot be reached; nothing was stored.
        """
        batch = [as_point(point) for point in points]
        if not batch:
            return
        self.store.add(batch)
        try:
            self.detector.on_recorded(point.agent_id for point in batch)
        except Exception:
            # The points are stored; the next check (beat or record) looks again.
            log.warning("anomaly check after recording failed", exc_info=True)

    # -- statistics --------------------------------------------------------------------------

    def _retention_s(self) -> dict[Granularity, float]:
        agg = self.aggregation
        return {
            Granularity.MINUTE: agg.minute * 60.0,
            Granularity.HOUR: agg.hour * 3600.0,
            Granularity.DAY: agg.day * 86400.0,
        }

    def _range_sums(
        self,
        start: float | None,
        end: float | None,
        *,
        agent_id: str | None = None,
        pattern_name: str | None = None,
    ) -> dict[str, Sums]:
        """Per-agent sums over ``[start, end)``, from rollups where whole buckets fit."""
        now = self.clock()
        ref = bucket_start(now, Granularity.DAY)
        horizons = {
            g: now - kept + g.seconds + _SKEW_MARGIN_S for g, kept in self._retention_s().items()
        }
        pieces = plan_range(
            -math.inf if start is None else start,
            math.inf if end is None else end,
            horizons=horizons,
            raw_horizon=now - self.raw_retention_s + _RAW_MARGIN_S,
        )
        totals: dict[str, Sums] = {}
        for piece in pieces:
            lo = piece.start if math.isfinite(piece.start) else None
            hi = piece.end if math.isfinite(piece.end) else None
            if piece.source == "raw":
                part = self.store.sum_points(
                    start=lo, end=hi, ref=ref, agent_id=agent_id, pattern_name=pattern_name
                )
            else:
                part = self.store.sum_buckets(
                    Granularity(piece.source),
                    start=lo,
                    end=hi,
                    ref=ref,
                    agent_id=agent_id,
                    pattern_name=pattern_name,
                )
            for agent, sums in part.items():
                totals.setdefault(agent, Sums(ref=ref)).merge(sums)
        return totals

    def _agent_sums_since(self, agent_id: str, start: float) -> Sums:
        return self._one(self._range_sums(start, None, agent_id=agent_id))

    @staticmethod
    def _one(by_agent: dict[str, Sums]) -> Sums:
        return total(by_agent.values(), ref=next(iter(by_agent.values())).ref if by_agent else 0.0)

    def get_agent_stats(
        self,
        agent_id: str,
        time_range: tuple[Instant | None, Instant | None] | None = None,
        pattern_name: str | None = None,
    ) -> dict[str, Any]:
        """Executions, mean confidence, success rate, mean time and trend of one agent.

        Args:
            agent_id: The agent (``pattern:<name>`` for a pattern's own confidence).
            time_range: ``(start, end)`` as datetimes or epoch seconds; None
                (or a None end) means everything kept.
            pattern_name: Only points recorded under this pattern.

        Returns:
            ``{agentId, totalExecutions, avgConfidence, successRate,
            avgExecutionTime (ms), totalTokens, avgTokens, confidenceTrend}``;
            ``totalTokens`` sums the usage calls reported, ``avgTokens`` is
            its mean over those calls (0 when none reported); the trend is
            the least-squares slope of confidence in units per hour
            (positive = improving).
        """
        start, end = (None, None) if time_range is None else time_range
        sums = self._one(
            self._range_sums(
                optional_epoch(start),
                optional_epoch(end),
                agent_id=agent_id,
                pattern_name=pattern_name,
            )
        )
        return {"agentId": agent_id, **_summary(sums), "confidenceTrend": sums.trend_per_hour}

    def get_pattern_stats(
        self, pattern: str, start: Instant | None = None, end: Instant | None = None
    ) -> dict[str, Any]:
        """Executions, mean confidence and success rate of a pattern, also per agent.

        Returns:
            ``{patternName, totalExecutions, avgConfidence, successRate,
            avgExecutionTime, totalTokens, avgTokens, agentBreakdown: {agentId:
            {totalExecutions, avgConfidence, successRate, avgExecutionTime,
            totalTokens, avgTokens}}}``.
        """
        by_agent = self._range_sums(
            optional_epoch(start), optional_epoch(end), pattern_name=pattern
        )
        return {
            "patternName": pattern,
            **_summary(self._one(by_agent)),
            "agentBreakdown": {agent: _summary(by_agent[agent]) for agent in sorted(by_agent)},
        }

    def get_history(
        self,
        agent_id: str,
        interval: str = "hour",
        start: Instant | None = None,
        end: Instant | None = None,
    ) -> list[dict[str, Any]]:
        """One entry per rollup bucket of *agent_id*, oldest first.

        Only kept buckets are listed: minute buckets for the last
        ``aggregation.minute`` minutes, and so on.

        Args:
            interval: ``minute``, ``hour`` or ``day``.
            start: Include the bucket holding this instant and later ones.
            end: Include buckets starting before this instant.

        Returns:
            ``[{time (bucket start, epoch s), avgConfidence, count, successRate}]``.

        Raises:
            ValidationError: *interval* is not one of the three.
        """
        try:
            granularity = Granularity(interval)
        except ValueError:
            raise ValidationError(
                f"invalid interval {interval!r}: use minute, hour or day",
                [{"field": "interval", "message": "must be minute, hour or day"}],
            ) from None
        lo = optional_epoch(start)
        buckets = self.store.series(
            granularity,
            agent_id=agent_id,
            start=None if lo is None else bucket_start(lo, granularity),
            end=optional_epoch(end),
        )
        return [
            {
                "time": sums.ref,
                "avgConfidence": sums.mean,
                "count": sums.count,
                "successRate": sums.success_rate,
            }
            for sums in buckets
        ]

    def query(
        self,
        agent_ids: Sequence[str] | None = None,
        pattern_names: Sequence[str] | None = None,
        start: Instant | None = None,
        end: Instant | None = None,
        min_confidence: float | None = None,
        max_confidence: float | None = None,
        limit: int = 100,
    ) -> list[DataPoint]:
        """Raw points matching every given filter, newest first (at most 10,000)."""
        return self.store.points(
            agent_ids=agent_ids,
            pattern_names=pattern_names,
            start=optional_epoch(start),
            end=optional_epoch(end),
            min_confidence=min_confidence,
            max_confidence=max_confidence,
            limit=min(limit, MAX_QUERY_LIMIT),
        )

    def detect_outliers(
        self, agent_id: str, threshold: float = 2.0, *, limit: int = 100
    ) -> list[DataPoint]:
        """Kept points of *agent_id* whose |z-score| exceeds *threshold*, newest first.

        The mean and (population) standard deviation are those of every raw
        point kept; fewer than 10 points, or no spread at all, finds nothing.
        """
        now = self.clock()
        since = math.ceil((now - self.raw_retention_s + _RAW_MARGIN_S) / 86400.0) * 86400.0
        sums = self._one(self._range_sums(since, None, agent_id=agent_id))
        if sums.count < MIN_OUTLIER_POINTS or sums.stddev <= 0.0:
            return []
        low = sums.mean - threshold * sums.stddev
        high = sums.mean + threshold * sums.stddev
        found = [
            *self.store.points(agent_ids=[agent_id], start=since, max_confidence=low, limit=limit),
            *self.store.points(agent_ids=[agent_id], start=since, min_confidence=high, limit=limit),
        ]
        outliers = [p for p in found if abs(p.confidence - sums.mean) > threshold * sums.stddev]
        outliers.sort(key=lambda p: p.timestamp, reverse=True)
        return outliers[:limit]

    # -- upkeep ------------------------------------------------------------------------------

    def prune(self) -> int:
        """Delete raw points and buckets past their retention; return how many rows went."""
        now = self.clock()
        return self.store.prune(
            points_before=now - self.raw_retention_s,
            buckets_before={g: now - kept for g, kept in self._retention_s().items()},
        )

    def check_anomalies(self, agent_id: str | None = None) -> list[dict[str, Any]]:
        """Judge the anomaly rules for one agent, or every agent with points in the last hour.

        Returns:
            The ``anomaly:detected`` payloads this call emitted (new episodes only).
        """
        if not self.anomaly.enabled:
            return []
        if agent_id is not None:
            return self.detector.check([agent_id])
        return self.detector.check(self.store.agents(since=self.clock() - ACTIVE_AGENT_WINDOW_S))

    def active_anomalies(self, agent_id: str | None = None) -> list[dict[str, Any]]:
        """Open anomaly episodes as ``{type, agentId, severity, details, openedAt, clearedAt}``."""
        return [a.to_json_dict() for a in self.store.anomalies(agent_id=agent_id)]

    def close(self) -> None:
        """Release the store's connections."""
        self.store.close()
