"""One finished-task path: ``on_finished`` once per recorded outcome, beside its one event.

A plan member's outcome is recorded by the plan store (first outcome wins),
which writes its ``task:completed`` in the same script; the plan recorder tells
the hooks only when the store reports it recorded. Real Redis, no broker: the
messages go to a list.
"""

from __future__ import annotations

import time
from typing import Any

import redis

from taskplane.cache import InMemoryResultCache, RunnerCache
from taskplane.config import CacheConfig
from taskplane.contract import CallContext, Outcome, RunContext
from taskplane.events import RedisEventBus
from taskplane.hooks import ExecutionHooks
from taskplane.models import ExecutionResult, ExecutionTask, TaskType
from taskplane.plan import AllSettled, Mode, PlanLayout, RedisRunStore
from taskplane.plan.members import MemberRunner
from taskplane.plan.recorder import PlanRecorder
from taskplane.runner import TaskRunner
from tests.unit.test_plan_members import ListDispatch

PREFIX = "finished-hook"


class Seen(ExecutionHooks):
    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def on_cache_hit(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        self.calls.append(("cache_hit", task.id))

    def on_finished(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        self.calls.append(("finished", task.id))


class Agent:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, task: ExecutionTask, call: CallContext) -> Outcome:
        self.calls += 1
        return Outcome({"echo": task.payload}, confidence=0.9)


def wiring(client: redis.Redis, *, cache: bool = False) -> tuple[MemberRunner, Seen, Agent]:
    seen, agent = Seen(), Agent()
    bus = RedisEventBus(client, prefix=PREFIX)
    runner_cache = None
    if cache:
        results = InMemoryResultCache(CacheConfig())
        runner_cache = RunnerCache(results, capabilities_of=lambda agent_id: [])
    runner = TaskRunner({TaskType.AGENT: agent}, cache=runner_cache, hooks=seen)
    store = RedisRunStore(client, prefix=PREFIX, events=bus)
    members = MemberRunner(PlanRecorder(store, ListDispatch(), hooks=seen), runner)
    return members, seen, agent


def record(members: MemberRunner, plan_id: str, count: int) -> list[dict[str, Any]]:
    tasks = [
        ExecutionTask(id=f"t{i}", type="agent", target="a1", payload={"n": 1}) for i in range(count)
    ]
    layout = PlanLayout(AllSettled(), Mode.WINDOW, tuple(range(count)), count)
    assert members.store.create(plan_id, tasks, layout, time.time() + 60)
    return [task.to_json_dict() for task in tasks]


def outcome_events(client: redis.Redis) -> list[str]:
    bus = RedisEventBus(client, prefix=PREFIX)
    return [e["type"] for e in bus.recent() if e["type"] in ("task:completed", "task:failed")]


def test_a_redelivered_member_fires_no_second_hook_and_writes_no_second_event(
    redis_client: redis.Redis,
) -> None:
    members, seen, agent = wiring(redis_client)
    (task,) = record(members, "p1", 1)
    assert members.run_member("p1", 0, task, owner="celery-1") is not None
    assert members.run_member("p1", 0, task, redelivered=True, owner="celery-1") is None
    assert agent.calls == 1
    assert seen.calls == [("finished", "t0")]
    assert outcome_events(redis_client) == ["task:completed"]


def test_a_cache_hit_is_announced_once_and_recorded_like_any_outcome(
    redis_client: redis.Redis,
) -> None:
    members, seen, agent = wiring(redis_client, cache=True)
    first, second = record(members, "p2", 2)
    members.run_member("p2", 0, first, owner="celery-1")
    hit = members.run_member("p2", 1, second, owner="celery-2")
    assert isinstance(hit, ExecutionResult) and hit.metadata["cached"] is True
    assert agent.calls == 1
    assert seen.calls == [("finished", "t0"), ("cache_hit", "t1"), ("finished", "t1")]
    assert outcome_events(redis_client) == ["task:completed", "task:completed"]
