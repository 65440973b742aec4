"""``taskplane agents list``: each agent with its policy, live breaker state and limit usage.

The registration record says how the agent was at registration; the row adds
what every worker sees now — the shared circuit breaker's state and how many
calls the sliding window holds — and, on request, a fresh health check.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from rich.table import Column, Table
from rich.text import Text

from taskplane.engine import ExecutionEngine
from taskplane.keys import (
    agent_tokens_key,
    agent_window_key,
    inflight_key,
    quota_tokens_key,
    quota_window_key,
)
from taskplane.proxy import AgentInfo
from taskplane.proxy.limiter import Window
from taskplane.redisio import translated


def window_usage(engine: ExecutionEngine, window: Window, *, now_s: float) -> int:
    """Calls (or, for a token window, tokens) started within the current *window*, cluster-wide.

    Reads the limiter's window (``{prefix}:{window.key}``, a sorted set scored
    by start time in ms, and for tokens its ``:amounts`` hash) without taking
    a slot. Slots booked for later (tasks rescheduled to their slot) are not
    counted until they come; a call in flight counts its estimate until settled.

    Raises:
        BackendError: Redis cannot be reached.
    """
    key = f"{engine.settings.key_prefix}:{window.key}"
    since = repr(now_s * 1000.0 - window.window_ms)
    with translated(f"rate limiter window {key}", "reading it"):
        if not window.counts_tokens:
            return int(engine.redis.zcount(key, f"({since}", repr(now_s * 1000.0)))
        members = engine.redis.zrangebyscore(key, f"({since}", repr(now_s * 1000.0))
        if not members:
            return 0
        amounts = engine.redis.hmget(f"{key}:amounts", members)
    return int(sum(float(a) for a in amounts if a is not None))


def in_flight(engine: ExecutionEngine, agent_id: str, *, now_s: float) -> int:
    """Leases on calls in flight to *agent_id* held now, cluster-wide (expired ones not counted).

    Raises:
        BackendError: Redis cannot be reached.
    """
    key = inflight_key(engine.settings.key_prefix, agent_id)
    with translated(f"calls in flight to {agent_id}", "counting them"):
        return int(engine.redis.zcount(key, f"({now_s * 1000.0!r}", "+inf"))


def _usage(engine: ExecutionEngine, window: Window, now_s: float) -> dict[str, Any]:
    used = window_usage(engine, window, now_s=now_s)
    return {"used": used, "limit": window.limit, "windowMs": window.window_ms}


def agent_state(
    engine: ExecutionEngine, agent: AgentInfo, *, check: bool, timeout_s: float
) -> dict[str, Any]:
    """The agent's record plus ``breaker``, limit usage and, with *check*, ``health``.

    ``rateLimit`` is the agent's own window (its policy's limit, else the
    settings'), ``tokenLimit`` its token window when the policy sets
    ``maxTokens``; ``quotaUsage`` the shared quota's ``requests`` and
    ``tokens`` windows, when the policy names one;
    ``inFlight`` the calls in flight, when it sets ``maxInFlight``.

    Without *check*, ``health`` is what the check at registration found
    (``healthAt: "registration"``); with it, what the agent says now.
    """
    row = agent.to_json_dict()
    row["policy"] = agent.policy.to_json_dict()  # what was set; the rest is the settings'
    row["breaker"] = engine.proxy.breaker.state(agent.agent_id)
    now_s = time.time()
    quota = None
    if agent.policy.quota is not None:
        quota = engine.proxy.registry.get_quota(agent.policy.quota)
    windows = engine.proxy.limiter.windows(agent.agent_id, agent.policy, quota)
    usage = {w.key: _usage(engine, w, now_s) for w in windows}
    owner = quota.name if quota is not None else None
    row["rateLimit"] = usage[agent_window_key(agent.agent_id, owner)]
    if agent_tokens_key(agent.agent_id, owner) in usage:
        row["tokenLimit"] = usage[agent_tokens_key(agent.agent_id, owner)]
    if quota is not None:
        row["quotaUsage"] = {"quota": quota.name}
        for kind, key in (
            ("requests", quota_window_key(quota.name)),
            ("tokens", quota_tokens_key(quota.name)),
        ):
            if key in usage:
                row["quotaUsage"][kind] = usage[key]
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


def _shown(usage: dict[str, Any]) -> str:
    return f"{usage['used']}/{usage['limit']} per {usage['windowMs'] / 1000:g}s"


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
        limits = _shown(limit)
        if "tokenLimit" in row:
            limits += f"; tokens {_shown(row['tokenLimit'])}"
        if "quotaUsage" in row:
            quota = row["quotaUsage"]
            parts = [_shown(quota[k]) + (" tokens" if k == "tokens" else "")
                     for k in ("requests", "tokens") if k in quota]  # fmt: skip
            limits += f"; quota {quota['quota']} {', '.join(parts)}"
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
