"""What per-agent limits add to a call: own request and token limits, a quota, a plan budget.

Usage::

    python -m bench.bench_policies --redis-url redis://127.0.0.1:6379/0 --calls 500

Starts one local HTTP test agent and registers it three times through a
Redis-backed :class:`~taskplane.proxy.AgentProxy`: with no policy (the
settings' rate limit only, the path every call already takes); with its own
``maxRequests`` and ``maxTokens`` and a shared quota in requests and tokens;
and with ``maxInFlight`` on top (limits far above what the run reaches, so
nothing waits; the agent reports its usage, so every call is settled). A
further path draws each limited call from a plan budget too, as a worker does
for a plan with ``budget`` (reserve before the call, settle after). The proxy
and the budget are built as a worker builds them, settling behind the call
(:class:`~taskplane.redisio.WriteBehind`); the last path settles inside the
call instead, the way it was before, for comparison. Times N sequential calls
of each, interleaved so machine noise hits all alike, plus N direct httpx
calls as the bare baseline. After each call the writes it left behind are
flushed, untimed, so they do not slow the next path's call; the CPU column
(the whole process's, per call, flush included) shows what they cost. Writes
only keys under a throw-away prefix and removes them afterwards.
"""

from __future__ import annotations

import argparse
import statistics
import time
import uuid

import redis

from bench.bench_proxy import CALL, PAYLOAD, WARMUP_CALLS, row, timed_ms
from taskplane.budget import BudgetGate, BudgetOwners, Hold, RedisBudgetBackend, budget_meta
from taskplane.config import RateLimitConfig, Settings
from taskplane.keys import plan_key
from taskplane.models import ExecutionTask, PlanBudget
from taskplane.proxy import AgentProxy, HttpTransport, build_agent_proxy
from taskplane.runner import tokens_used
from taskplane.write_behind import WriteBehind
from tests.agents import HttpAgentServer

DEFAULT_URL = "redis://127.0.0.1:6379/0"
DEFAULT_CALLS = 500
#: The goal: what the limits add at p50, over a call with none.
GOAL_MS = 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--redis-url", default=DEFAULT_URL)
    parser.add_argument("--calls", type=int, default=DEFAULT_CALLS)
    args = parser.parse_args()

    client = redis.Redis.from_url(args.redis_url, decode_responses=True)
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        key_prefix=prefix, rate_limit=RateLimitConfig(max_requests=1_000_000, window_ms=60_000)
    )
    settles = WriteBehind(client, name="bench-settle")
    proxy = build_agent_proxy(settings, client, emit=lambda t, d: None, settle_behind=settles)
    inline = build_agent_proxy(settings, client, emit=lambda t, d: None)
    agent = HttpAgentServer().start()
    try:
        agent.usage = {"inputTokens": 200, "outputTokens": 100}
        proxy.register_quota(
            "bench-quota", max_requests=1_000_000, max_tokens=10**9, window_ms=60_000
        )
        proxy.register("bench-plain", agent.endpoint)
        limits = {
            "maxRequests": 1_000_000,
            "maxTokens": 10**9,
            "windowMs": 60_000,
            "quota": "bench-quota",
        }
        proxy.register("bench-limited", agent.endpoint, policy=limits)
        proxy.register("bench-capped", agent.endpoint, policy={**limits, "maxInFlight": 1000})
        http = proxy.transports["http"]
        assert isinstance(http, HttpTransport)
        plain = ExecutionTask(id="b", type="agent", target="bench-plain", payload=PAYLOAD)
        limited = ExecutionTask(id="b", type="agent", target="bench-limited", payload=PAYLOAD)
        capped = ExecutionTask(id="b", type="agent", target="bench-capped", payload=PAYLOAD)
        headers = {"Idempotency-Key": "bench", "X-Taskplane-Task-Id": "b"}
        url = f"{agent.endpoint}/analyze"

        def direct() -> object:
            return http.client.post(url, json=PAYLOAD, headers=headers, timeout=5.0).json()

        owner = "bench-plan"
        client.hset(
            plan_key(prefix, owner, "meta"),
            mapping=budget_meta(owner, PlanBudget(tokens=10**12, calls=10**9)),
        )
        # as a worker's coordinator finds the budget: the run's holder, read once per run
        owners = BudgetOwners(lambda run: client.hget(plan_key(prefix, run, "meta"), "budget"))
        behind = RedisBudgetBackend(client, prefix=prefix, behind=settles)
        in_call = RedisBudgetBackend(client, prefix=prefix)

        def budgeted(through: AgentProxy, budgets: RedisBudgetBackend) -> object:
            gate = BudgetGate(budgets, owners(owner), owner, lambda t, d: None)
            hold = gate.reserve(limited)
            # a budget the backend finds holds something: the bench measures a real reservation
            assert isinstance(hold, Hold) and hold.calls == 1, hold
            outcome = through(limited, CALL)
            gate.settle(hold, tokens=tokens_used(outcome.metadata.get("usage")), called=True)
            return outcome

        steps = (
            direct,
            lambda: proxy(plain, CALL),
            lambda: proxy(limited, CALL),
            lambda: proxy(capped, CALL),
            lambda: budgeted(proxy, behind),
            lambda: budgeted(inline, in_call),
        )
        for _ in range(WARMUP_CALLS):
            for step in steps:
                step()
        samples: list[list[float]] = [[] for _ in steps]
        cpu: list[list[float]] = [[] for _ in steps]  # the process's, writes behind included
        for _ in range(args.calls):
            for kept, used, step in zip(samples, cpu, steps, strict=True):
                before = time.process_time()
                kept.append(timed_ms(step))
                settles.flush()  # what went behind this call does not slow the next path
                used.append((time.process_time() - before) * 1000.0)
    finally:
        settles.close()
        proxy.close()
        inline.close()
        agent.stop()
        keys = list(client.scan_iter(f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        client.close()

    labels = (
        "HTTP direct (httpx)",
        "proxy, no policy",
        "proxy, token limit + quota",
        "  ... + maxInFlight",
        "token limit + quota + budget",
        "  ... settled inside the call",
    )
    print("| path                         |     n | p50 (ms) | p95 (ms) | CPU/call (ms) |")
    print("|------------------------------|------:|---------:|---------:|--------------:|")
    for label, kept, used in zip(labels, samples, cpu, strict=True):
        print(f"{row(label, kept)} {statistics.mean(used):13.3f} |")
    p50s = [statistics.median(s) for s in samples]
    direct_p50, plain_p50, limited_p50, capped_p50, budget_p50, inline_p50 = p50s
    print()
    print(
        f"token limit + quota + plan budget added at p50: {budget_p50 - plain_p50:.3f} ms over "
        f"no policy (goal <= {GOAL_MS} ms); token limit + quota alone "
        f"{limited_p50 - plain_p50:.3f} ms; + maxInFlight {capped_p50 - plain_p50:.3f} ms; "
        f"all three settled inside the call {inline_p50 - plain_p50:.3f} ms; "
        f"the proxy with no policy adds {plain_p50 - direct_p50:.3f} ms over bare httpx"
    )


if __name__ == "__main__":
    main()
