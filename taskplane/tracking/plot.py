"""A picture of an agent's confidence over time, with its anomalies marked.

Needs matplotlib (``pip install 'taskplane[plot]'``). Draws off-screen with
the Agg canvas and touches no global pyplot state, so it is safe in a worker
or a server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from taskplane.errors import ConfigurationError
from taskplane.tracking.tracker import MAX_QUERY_LIMIT, ConfidenceTracker

DEFAULT_SINCE_S = 86400.0
#: History resolution by window length: minute buckets up to an hour, then hours.
_MINUTE_WINDOW_S = 3600.0
_SEVERITY_COLOURS = {"warning": "tab:orange", "critical": "tab:red"}


def _when(timestamp: float) -> float:
    """matplotlib's date number for an epoch instant."""
    from matplotlib.dates import date2num

    return float(date2num(datetime.fromtimestamp(timestamp, UTC)))


#: Room left before the first point, as a share of the span it covers (and at least this, s).
SPAN_MARGIN = 0.05
MIN_SPAN_MARGIN_S = 30.0


def plot_span(start: float, now: float, timestamps: list[float]) -> tuple[float, float]:
    """The x-range to draw: from a little before the first point (never before *start*) to now.

    Two minutes of data in a 24 h window fill the plot instead of a sliver at
    its right edge; with no data the whole window is shown.
    """
    if not timestamps:
        return start, now
    first = min(timestamps)
    margin = max((now - first) * SPAN_MARGIN, MIN_SPAN_MARGIN_S)
    return max(start, first - margin), now


def plot_history(
    tracker: ConfidenceTracker,
    agent_id: str,
    path: str | Path,
    *,
    since_s: float = DEFAULT_SINCE_S,
) -> Path:
    """Write a PNG of *agent_id*'s confidence over the last *since_s* seconds.

    Raw points are dots, the bucket means a line, and every anomaly episode
    opened in the window a vertical line coloured by severity.

    Args:
        tracker: Where the data comes from.
        agent_id: The agent to draw.
        path: The PNG file to write.
        since_s: How far back to draw, in seconds.

    Returns:
        The path written.

    Raises:
        ConfigurationError: matplotlib is not installed.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.dates import AutoDateFormatter, AutoDateLocator
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ConfigurationError(
            "plotting needs matplotlib: pip install 'taskplane[plot]'"
        ) from exc

    now = tracker.clock()
    start = now - since_s
    points = tracker.query(agent_ids=[agent_id], start=start, limit=MAX_QUERY_LIMIT)
    interval = "minute" if since_s <= _MINUTE_WINDOW_S else "hour"
    history = tracker.get_history(agent_id, interval, start=start)
    episodes = [
        a
        for a in tracker.store.anomalies(agent_id=agent_id, open_only=False)
        if a.opened_at >= start
    ]

    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.scatter(
        [_when(p.timestamp) for p in points],
        [p.confidence for p in points],
        s=6,
        alpha=0.4,
        label="data points",
    )
    if history:
        # The last bucket's mean holds until now.
        axes.step(
            [_when(row["time"]) for row in history] + [_when(now)],
            [row["avgConfidence"] for row in history] + [history[-1]["avgConfidence"]],
            where="post",
            color="tab:blue",
            label=f"{interval} mean",
        )
    for index, episode in enumerate(episodes):
        axes.axvline(
            _when(episode.opened_at),
            color=_SEVERITY_COLOURS.get(episode.severity, "tab:red"),
            linestyle="--",
            linewidth=1,
        )
        axes.annotate(
            f"{episode.type} ({episode.severity})",
            (_when(episode.opened_at), 1.02 - 0.12 * (index % 4)),
            ha="right",
            fontsize=7,
        )
    locator = AutoDateLocator(tz=UTC)
    axes.xaxis.set_major_locator(locator)
    axes.xaxis.set_major_formatter(AutoDateFormatter(locator, tz=UTC))
    axes.set_ylim(0.0, 1.05)
    low, high = plot_span(
        start,
        now,
        [p.timestamp for p in points] + [row["time"] for row in history],
    )
    axes.set_xlim(_when(low), _when(high))
    axes.set_ylabel("confidence")
    axes.set_title(f"{agent_id}: confidence, last {since_s / 3600:g} h (UTC)")
    axes.legend(loc="lower left", fontsize=8)
    figure.autofmt_xdate()
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(target, format="png")
    return target
