"""``taskplane agents list``: each agent with its live breaker state and rate-limit usage.

The registration record says how the agent was at registration; the row adds
what every worker sees now — the shared circuit breaker's state and how many
calls the sliding window holds — and, on request, a fresh health check.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import redis
from rich.table import Column, Table
from rich.text import Text

from taskplane.engine import ExecutionEngine
from taskplane.errors import BackendError
from taskplane.proxy import AgentInfo


def window_usage(engine: ExecutionEngine, agent_id: str, *, now_s: float) -> int:
    """Calls to *agent_id* started within the current rate-limit window, cluster-wide.

    Reads the limiter's window (``{prefix}:ratelimit:{agent}``, a sorted set
    scored by start time in ms) without taking a slot. Slots booked for later
    (tasks rescheduled to their slot) are not counted until they come.

    Raises:
        BackendError: Redis cannot be reached.
    """
    window_ms = engine.settings.rate_limit.window_ms
    key = f"{engine.settings.key_prefix}:ratelimit:{agent_id}"
    since = repr(now_s * 1000.0 - window_ms)
    try:
        return int(engine.redis.zcount(key, f"({since}", repr(now_s * 1000.0)))
    except redis.RedisError as exc:
        raise BackendError(f"rate limiter window for {agent_id}: {exc}") from exc


def agent_state(
    engine: ExecutionEngine, agent: AgentInfo, *, check: bool, timeout_s: float
) -> dict[str, Any]:
    """The agent's record plus ``breaker``, ``rateLimit`` and, with *check*, ``health``.

    Without *check*, ``health`` is what the check at registration found
    (``healthAt: "registration"``); with it, what the agent says now.
    """
    row = agent.to_json_dict()
    row["breaker"] = engine.proxy.breaker.state(agent.agent_id)
    row["rateLimit"] = {
        "used": window_usage(engine, agent.agent_id, now_s=time.time()),
        "limit": engine.settings.rate_limit.max_requests,
        "windowMs": engine.settings.rate_limit.window_ms,
    }
    if check:
        report = engine.proxy.health(agent.agent_id, timeout_s=timeout_s)
        row["healthy"], row["healthMessage"] = report.healthy, report.message
        row["healthAt"] = "now"
    else:
        row["healthAt"] = "registration"
    return row


def agents_table(rows: list[dict[str, Any]]) -> Table:
    """The rows of :func:`agent_state` as a table."""
    table = Table(
        Column("agent", no_wrap=True),
        "protocol",
        Column("endpoint", no_wrap=True),
        "capabilities",
        "policy",
        "breaker",
        "rate limit",
        "health",
        "registered (UTC)",
    )
    for row in rows:
        health = {True: "healthy", False: "unhealthy", None: "unchecked"}[row["healthy"]]
        if row["healthy"] is False and row.get("healthMessage"):
            health += f" ({row['healthMessage']})"
        health += " (checked now)" if row["healthAt"] == "now" else " (at registration)"
        when = datetime.fromtimestamp(row["registeredAt"], UTC).strftime("%Y-%m-%d %H:%M:%S")
        limit = row["rateLimit"]
        table.add_row(
            row["agentId"],
            row["protocol"],
            Text(row["endpoint"]),
            Text(", ".join(row["capabilities"])),
            Text(", ".join(f"{k}={v}" for k, v in (row.get("policy") or {}).items())),
            row["breaker"],
            f"{limit['used']}/{limit['limit']} per {limit['windowMs'] / 1000:g}s",
            Text(health),
            when,
        )
    return table
