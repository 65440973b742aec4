"""``taskplane agents list``: each agent with its policy, live breaker state and limit usage.

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
from taskplane.proxy.limiter import Window, quota_window_key


def window_usage(engine: ExecutionEngine, window: Window, *, now_s: float) -> int:
    """Calls started within the current *window*, cluster-wide.

    Reads the limiter's window (``{prefix}:{window.key}``, a sorted set scored
    by start time in ms) without taking a slot. Slots booked for later (tasks
    rescheduled to their slot) are not counted until they come.

    Raises:
        BackendError: Redis cannot be reached.
    """
    key = f"{engine.settings.key_prefix}:{window.key}"
    since = repr(now_s * 1000.0 - window.window_ms)
    try:
        return int(engine.redis.zcount(key, f"({since}", repr(now_s * 1000.0)))
    except redis.RedisError as exc:
        raise BackendError(f"rate limiter window {key}: {exc}") from exc


def in_flight(engine: ExecutionEngine, agent_id: str, *, now_s: float) -> int:
    """Leases on calls in flight to *agent_id* held now, cluster-wide (expired ones not counted).

    Raises:
        BackendError: Redis cannot be reached.
    """
    key = f"{engine.settings.key_prefix}:inflight:{agent_id}"
    try:
        return int(engine.redis.zcount(key, f"({now_s * 1000.0!r}", "+inf"))
    except redis.RedisError as exc:
        raise BackendError(f"calls in flight to {agent_id}: {exc}") from exc


def _usage(engine: ExecutionEngine, window: Window, now_s: float) -> dict[str, Any]:
    used = window_usage(engine, window, now_s=now_s)
    return {"used": used, "limit": window.limit, "windowMs": window.window_ms}


def agent_state(
    engine: ExecutionEngine, agent: AgentInfo, *, check: bool, timeout_s: float
) -> dict[str, Any]:
    """The agent's record plus ``breaker``, limit usage and, with *check*, ``health``.

    ``rateLimit`` is the agent's own window (its policy's limit, else the
    settings'); ``quotaUsage`` the shared quota's, when the policy names one;
    ``inFlight`` the calls in flight, when it sets ``maxInFlight``.

    Without *check*, ``health`` is what the check at registration found
    (``healthAt: "registration"``); with it, what the agent says now.
    """
    row = agent.to_json_dict()
    row["policy"] = agent.policy.to_json_dict()  # what was set; the rest is the settings'
    row["breaker"] = engine.proxy.breaker.state(agent.agent_id)
    now_s = time.time()
    row["rateLimit"] = _usage(
        engine, engine.proxy.limiter.agent_window(agent.agent_id, agent.policy), now_s
    )
    if agent.policy.quota is not None:
        quota = engine.proxy.registry.get_quota(agent.policy.quota)
        if quota is not None:
            window = Window(quota_window_key(quota.name), quota.max_requests, quota.window_ms)
            row["quotaUsage"] = {"quota": quota.name, **_usage(engine, window, now_s)}
    if agent.policy.max_in_flight is not None:
        row["inFlight"] = {
            "held": in_flight(engine, agent.agent_id, now_s=now_s),
            "limit": agent.policy.max_in_flight,
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
        limits = f"{limit['used']}/{limit['limit']} per {limit['windowMs'] / 1000:g}s"
        if "quotaUsage" in row:
            quota = row["quotaUsage"]
            limits += (
                f"; quota {quota['quota']} {quota['used']}/{quota['limit']}"
                f" per {quota['windowMs'] / 1000:g}s"
            )
        if "inFlight" in row:
            limits += f"; in flight {row['inFlight']['held']}/{row['inFlight']['limit']}"
        table.add_row(
            row["agentId"],
            row["protocol"],
            Text(row["endpoint"]),
            Text(", ".join(row["capabilities"])),
            Text(", ".join(f"{k}={v}" for k, v in (row.get("policy") or {}).items())),
            row["breaker"],
            Text(limits),
            Text(health),
            when,
        )
    return table
