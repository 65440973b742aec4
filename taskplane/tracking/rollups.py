"""Rollup arithmetic: additive sums, bucket alignment and range decomposition.

Statistics are computed from :class:`Sums` — count, Σc, Σc², successes,
Σ execution time and the regression sums Σu, Σu², Σuc, where u is a point's
time in seconds after a reference instant. Sums add up, so a range is the
sum of whole rollup buckets in its middle and raw points at its ragged
edges (:func:`plan_range`). Time sums are kept relative to a nearby
reference (a bucket's start, a query's reference) so squares of epoch
seconds never swamp the variance of a few seconds.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

SECONDS_PER_HOUR = 3600.0


class Granularity(StrEnum):
    """Size of a rollup bucket; buckets are aligned to UTC."""

    MINUTE = "minute"
    HOUR = "hour"
    DAY = "day"

    @property
    def seconds(self) -> float:
        """The bucket length in seconds."""
        return _BUCKET_SECONDS[self]


_BUCKET_SECONDS = {Granularity.MINUTE: 60.0, Granularity.HOUR: 3600.0, Granularity.DAY: 86400.0}

#: Coarsest first: the order :func:`plan_range` tries them in.
COARSE_TO_FINE = (Granularity.DAY, Granularity.HOUR, Granularity.MINUTE)


def bucket_start(timestamp: float, granularity: Granularity) -> float:
    """Start of the bucket holding *timestamp*, epoch seconds."""
    size = granularity.seconds
    return math.floor(timestamp / size) * size


@dataclass
class Sums:
    """Additive aggregates of a set of points; time sums relative to ``ref`` (epoch s)."""

    ref: float = 0.0
    count: int = 0
    sum_confidence: float = 0.0
    sum_sq_confidence: float = 0.0
    success_count: int = 0
    sum_execution_time: float = 0.0
    sum_offset: float = 0.0
    sum_sq_offset: float = 0.0
    sum_offset_confidence: float = 0.0
    sum_tokens: int = 0
    token_count: int = 0

    def add_point(
        self,
        timestamp: float,
        confidence: float,
        success: bool,
        ms: float,
        tokens: int | None = None,
    ) -> None:
        """Fold one point in (*tokens*: what it reported using, None if nothing)."""
        offset = timestamp - self.ref
        self.count += 1
        self.sum_confidence += confidence
        self.sum_sq_confidence += confidence * confidence
        self.success_count += int(success)
        self.sum_execution_time += ms
        self.sum_offset += offset
        self.sum_sq_offset += offset * offset
        self.sum_offset_confidence += offset * confidence
        if tokens is not None:
            self.sum_tokens += tokens
            self.token_count += 1

    def rebased(self, ref: float) -> Sums:
        """The same sums with time offsets measured from *ref* instead."""
        shift = self.ref - ref
        return Sums(
            ref=ref,
            count=self.count,
            sum_confidence=self.sum_confidence,
            sum_sq_confidence=self.sum_sq_confidence,
            success_count=self.success_count,
            sum_execution_time=self.sum_execution_time,
            sum_offset=self.sum_offset + self.count * shift,
            sum_sq_offset=self.sum_sq_offset
            + 2 * shift * self.sum_offset
            + self.count * shift * shift,
            sum_offset_confidence=self.sum_offset_confidence + shift * self.sum_confidence,
            sum_tokens=self.sum_tokens,
            token_count=self.token_count,
        )

    def merge(self, other: Sums) -> None:
        """Add *other* into these sums (rebasing it to this reference)."""
        other = other.rebased(self.ref) if other.ref != self.ref else other
        self.count += other.count
        self.sum_confidence += other.sum_confidence
        self.sum_sq_confidence += other.sum_sq_confidence
        self.success_count += other.success_count
        self.sum_execution_time += other.sum_execution_time
        self.sum_offset += other.sum_offset
        self.sum_sq_offset += other.sum_sq_offset
        self.sum_offset_confidence += other.sum_offset_confidence
        self.sum_tokens += other.sum_tokens
        self.token_count += other.token_count

    @property
    def mean(self) -> float:
        """Mean confidence (0 with no points)."""
        return self.sum_confidence / self.count if self.count else 0.0

    @property
    def stddev(self) -> float:
        """Population standard deviation of confidence (0 with no points)."""
        if not self.count:
            return 0.0
        variance = self.sum_sq_confidence / self.count - self.mean**2
        return math.sqrt(max(variance, 0.0))

    @property
    def success_rate(self) -> float:
        """Share of points whose task succeeded."""
        return self.success_count / self.count if self.count else 0.0

    @property
    def mean_execution_time(self) -> float:
        """Mean execution time in ms."""
        return self.sum_execution_time / self.count if self.count else 0.0

    @property
    def mean_tokens(self) -> float:
        """Mean tokens per call, over the calls that reported usage (0 with none)."""
        return self.sum_tokens / self.token_count if self.token_count else 0.0

    @property
    def trend_per_hour(self) -> float:
        """Least-squares slope of confidence over time, in confidence units per hour."""
        if self.count < 2:
            return 0.0
        sxx = self.sum_sq_offset - self.sum_offset**2 / self.count
        if sxx <= 1e-9:
            return 0.0
        sxy = self.sum_offset_confidence - self.sum_offset * self.sum_confidence / self.count
        return sxy / sxx * SECONDS_PER_HOUR


def total(parts: Iterable[Sums], *, ref: float) -> Sums:
    """Sum of *parts*, with offsets relative to *ref*."""
    result = Sums(ref=ref)
    for part in parts:
        result.merge(part)
    return result


@dataclass(frozen=True)
class Piece:
    """A part of a queried range answered from one source.

    ``source`` is ``"raw"`` (points with ``start <= t < end``) or a
    granularity (buckets with ``start <= bucket_start < end``).
    """

    source: str
    start: float
    end: float


def plan_range(
    start: float,
    end: float,
    *,
    horizons: dict[Granularity, float],
    raw_horizon: float,
) -> list[Piece]:
    """Split ``[start, end)`` into pieces answered by rollups or raw points.

    Args:
        start: Range start (``-inf`` for "everything kept").
        end: Range end, exclusive (``inf`` for "up to now").
        horizons: Per granularity, the earliest bucket start that is surely
            not pruned yet.
        raw_horizon: The earliest time from which raw points are surely kept.

    Returns:
        Disjoint pieces covering the range. The part before the raw horizon
        can only be answered from day buckets, so there the range is rounded
        out to whole UTC days.
    """
    day = Granularity.DAY
    cut = math.ceil(raw_horizon / day.seconds) * day.seconds
    pieces: list[Piece] = []
    if start < cut:
        old_start = bucket_start(start, day) if math.isfinite(start) else start
        pieces.append(Piece(day.value, old_start, min(end, cut)))
        start = cut
    if start < end:
        pieces.extend(_cover(start, end, COARSE_TO_FINE, horizons))
    return pieces


def _cover(
    start: float, end: float, levels: Sequence[Granularity], horizons: dict[Granularity, float]
) -> list[Piece]:
    if not levels:
        return [Piece("raw", start, end)]
    level, finer = levels[0], levels[1:]
    size = level.seconds
    first = math.ceil(max(start, horizons[level]) / size) * size
    last = math.floor(end / size) * size if math.isfinite(end) else end
    if first >= last:
        return _cover(start, end, finer, horizons)
    pieces = _cover(start, first, finer, horizons) if start < first else []
    pieces.append(Piece(level.value, first, last))
    if last < end:
        pieces.extend(_cover(last, end, finer, horizons))
    return pieces
