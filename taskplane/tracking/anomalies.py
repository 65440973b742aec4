"""Anomaly detection: three rules over one agent's recent confidence, reported once per episode.

Rules are small callables over a :class:`Window` (what is known about one
agent at one instant). Each says whether its condition holds, does not
hold, or cannot be judged yet (too few points). An episode opens the first
time a condition holds — that is the only time ``anomaly:detected`` is
emitted — and is cleared once the condition is seen not to hold. Episodes
live in the store, so every worker and the beat process share them: when
two processes see the same condition, exactly one of them opens it and emits.

* ``sudden_drop`` — the newest point is below the mean of the preceding
  24 hours by more than ``sudden_drop_threshold``.
* ``low_confidence`` — the mean of the last 5 minutes is below
  ``low_confidence_threshold``.
* ``high_variance`` — the spread of the last hour is above
  ``high_variance_threshold``. The spread is the *standard deviation*:
  confidences lie in 0..1, so their variance never exceeds 0.25 and a
  variance threshold of 0.2 would be all but unreachable.

Severity is ``critical`` when the measure is past its threshold by at least
half the threshold again (e.g. a drop of 0.45 against 0.3), else ``warning``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from taskplane.aliases import Clock, Emit
from taskplane.config import AnomalyDetectionConfig
from taskplane.tracking.points import DataPoint
from taskplane.tracking.rollups import Sums
from taskplane.tracking.store import Anomaly, TrackingStore

log = logging.getLogger(__name__)

BASELINE_WINDOW_S = 24 * 3600.0
VARIANCE_WINDOW_S = 3600.0
RECENT_WINDOW_S = 300.0
#: Fewest baseline points (besides the newest) before a drop is judged.
MIN_BASELINE_POINTS = 5
#: Fewest points in the last 5 minutes before their mean is judged.
MIN_RECENT_POINTS = 3
#: Fewest points in the last hour before their spread is judged.
MIN_VARIANCE_POINTS = 5
#: Past the threshold by this share of it → ``critical``.
CRITICAL_EXCESS = 0.5

RangeSums = Callable[[str, float], Sums]
"""(agent_id, start) → sums of the agent's points from *start* on."""


@dataclass(frozen=True)
class Window:
    """What is known about one agent at one instant."""

    agent_id: str
    now: float
    latest: DataPoint | None
    baseline: Sums
    last_hour: Sums
    recent: Sums


@dataclass(frozen=True)
class Finding:
    """A rule's verdict: ``holds`` is None when there is too little data to judge."""

    holds: bool | None
    details: dict[str, Any] = field(default_factory=dict)
    severity: str = "warning"


def _severity(excess: float, threshold: float) -> str:
    return "critical" if threshold > 0 and excess >= CRITICAL_EXCESS * threshold else "warning"


def sudden_drop(window: Window, config: AnomalyDetectionConfig) -> Finding:
    """The newest point against the mean of the other points of the last 24 hours."""
    latest, base = window.latest, window.baseline
    if latest is None or base.count - 1 < MIN_BASELINE_POINTS:
        return Finding(None)
    baseline = (base.sum_confidence - latest.confidence) / (base.count - 1)
    drop = baseline - latest.confidence
    threshold = config.sudden_drop_threshold
    details = {
        "latest": latest.confidence,
        "latestAt": latest.timestamp,
        "baseline": round(baseline, 6),
        "drop": round(drop, 6),
        "threshold": threshold,
        "baselinePoints": base.count - 1,
    }
    return Finding(drop > threshold, details, _severity(drop - threshold, threshold))


def low_confidence(window: Window, config: AnomalyDetectionConfig) -> Finding:
    """The mean of the last 5 minutes against the low-confidence threshold."""
    recent = window.recent
    if recent.count < MIN_RECENT_POINTS:
        return Finding(None)
    threshold = config.low_confidence_threshold
    details = {
        "mean": round(recent.mean, 6),
        "threshold": threshold,
        "points": recent.count,
        "windowS": RECENT_WINDOW_S,
    }
    return Finding(recent.mean < threshold, details, _severity(threshold - recent.mean, threshold))


def high_variance(window: Window, config: AnomalyDetectionConfig) -> Finding:
    """The standard deviation of the last hour against the high-variance threshold."""
    hour = window.last_hour
    if hour.count < MIN_VARIANCE_POINTS:
        return Finding(None)
    threshold = config.high_variance_threshold
    details = {
        "stddev": round(hour.stddev, 6),
        "mean": round(hour.mean, 6),
        "threshold": threshold,
        "points": hour.count,
        "windowS": VARIANCE_WINDOW_S,
    }
    return Finding(hour.stddev > threshold, details, _severity(hour.stddev - threshold, threshold))


Rule = Callable[[Window, AnomalyDetectionConfig], Finding]

#: Anomaly type → rule.
RULES: dict[str, Rule] = {
    "sudden_drop": sudden_drop,
    "low_confidence": low_confidence,
    "high_variance": high_variance,
}


class AnomalyDetector:
    """Runs the rules for agents and keeps episodes in the store.

    Args:
        store: Where episodes are kept (shared by every process).
        config: Thresholds; ``enabled=False`` turns detection off.
        range_sums: Sums of an agent's points from a given instant on.
        emit: Receives ``("anomaly:detected", {type, agentId, details, severity})``.
        clock: Epoch seconds.
        check_on_record_every_s: Least time between two on-record checks of
            one agent in this process.
    """

    def __init__(
        self,
        store: TrackingStore,
        config: AnomalyDetectionConfig,
        *,
        range_sums: RangeSums,
        emit: Emit,
        clock: Clock,
        check_on_record_every_s: float,
    ) -> None:
        self.store = store
        self.config = config
        self.range_sums = range_sums
        self.emit = emit
        self.clock = clock
        self.check_on_record_every_s = check_on_record_every_s
        self._last_checked: dict[str, float] = {}

    def window(self, agent_id: str, now: float) -> Window:
        """Gather what the rules need about *agent_id*."""
        latest = self.store.points(agent_ids=[agent_id], limit=1)
        return Window(
            agent_id=agent_id,
            now=now,
            latest=latest[0] if latest else None,
            baseline=self.range_sums(agent_id, now - BASELINE_WINDOW_S),
            last_hour=self.range_sums(agent_id, now - VARIANCE_WINDOW_S),
            recent=self.range_sums(agent_id, now - RECENT_WINDOW_S),
        )

    def check(self, agent_ids: Iterable[str]) -> list[dict[str, Any]]:
        """Judge every rule for each agent; return the events this call emitted."""
        if not self.config.enabled:
            return []
        emitted: list[dict[str, Any]] = []
        for agent_id in agent_ids:
            now = self.clock()
            self._last_checked[agent_id] = now
            window = self.window(agent_id, now)
            for anomaly_type, rule in RULES.items():
                event = self._apply(anomaly_type, rule(window, self.config), agent_id, now)
                if event is not None:
                    emitted.append(event)
        return emitted

    def on_recorded(self, agent_ids: Iterable[str]) -> list[dict[str, Any]]:
        """Check the agents that just got points, unless checked here very recently."""
        now = self.clock()
        due = [
            agent
            for agent in sorted(set(agent_ids))
            if now - self._last_checked.get(agent, float("-inf")) >= self.check_on_record_every_s
        ]
        return self.check(due)

    def _apply(
        self, anomaly_type: str, finding: Finding, agent_id: str, now: float
    ) -> dict[str, Any] | None:
        if finding.holds is None:
            return None
        if not finding.holds:
            if self.store.clear_anomaly(agent_id, anomaly_type, cleared_at=now):
                log.info("anomaly %s of agent %s cleared", anomaly_type, agent_id)
            return None
        anomaly = Anomaly(
            agent_id=agent_id,
            type=anomaly_type,
            opened_at=now,
            severity=finding.severity,
            details=finding.details,
        )
        if not self.store.open_anomaly(anomaly):
            return None
        event = {
            "type": anomaly_type,
            "agentId": agent_id,
            "details": finding.details,
            "severity": finding.severity,
        }
        log.warning("anomaly %s of agent %s: %s", anomaly_type, agent_id, finding.details)
        try:
            self.emit("anomaly:detected", event)
        except Exception:
            log.exception("anomaly listener failed")
        return event
