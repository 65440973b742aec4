"""Plan runs in Redis: one record per run, each outcome recorded once.

Keys, under ``{prefix}:plan:{id}`` (the run id is the keys' hash tag, see
:mod:`taskplane.keys`):

* ``:meta``    hash: the run's record (:mod:`taskplane.plan.record`);
* ``:tasks``   hash: task index → task JSON;
* ``:results`` hash: task index → result JSON — ``HSETNX``, so the first
  recorded outcome of (plan, task) wins and a rerun replays it;
* ``:done``    list: a token pushed when the run ends; waiters block on it
  (``BLMOVE`` back onto itself, so every waiter wakes) instead of polling;
* ``:order``   stream: one entry ``{i: index}`` per recorded outcome, in the
  order outcomes were recorded (written by the same script that records the
  outcome, so each task appears exactly once); ``as_completed`` readers read
  it by position with ``XREAD BLOCK``;
* ``:reply``   set: Celery task ids of ``execute_plan`` calls waiting on the run;
* ``:lease:<i>`` string: the owner (Celery task id) running task *i*;
* ``:children`` set: runs of nested patterns started by the run's tasks.

Every state change is one Lua script (``lua/*.lua``), so any number of
workers agree. The script that records an outcome also appends its
``task:completed`` or ``task:failed`` event to the event stream (and
publishes it on the event channel) when the store is given an event bus: one
event per recorded outcome, written with it or not at all, whoever records it
(a worker, a rerun, the client filling in a plan's unfinished tasks).
On a Redis Cluster the event stream has a slot of its own: there the event
is written right after the script, in a second round trip (see ``cluster``).
All keys expire ``retention_s`` after the plan was submitted.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis

from taskplane.aliases import Clock
from taskplane.events import RedisEventBus, finished_event
from taskplane.keys import event_stream_key, plan_key
from taskplane.models import ExecutionResult, ExecutionTask
from taskplane.plan.layout import PlanLayout
from taskplane.plan.record import PlanState, RunRecord, new_fields
from taskplane.plan.store import (
    WAIT_SLICE_S,
    Dispatched,
    FinishDecision,
    RunStore,
    StartAction,
    StartDecision,
)
from taskplane.redisio import load_script, script_during, translated

_PARTS = ("meta", "tasks", "results", "done", "reply", "order")
#: Runs of at most this many tasks are read in the same round trip as each wait (a
#: larger run's results are read once, after it ended).
READ_WITH_WAIT_MAX = 16


def _result(raw: str | None) -> ExecutionResult | None:
    return None if raw is None else ExecutionResult.model_validate_json(raw)


def _ended(
    plan_id: str, meta: dict[str, str], raw: dict[str, str]
) -> tuple[RunRecord | None, list[ExecutionResult] | None]:
    """A run's record, with its outcomes when it counts every task done."""
    record = RunRecord.parse(plan_id, meta)
    if record is None or not record.all_done or len(raw) < record.total:
        return record, None
    return record, [ExecutionResult.model_validate_json(raw[str(i)]) for i in range(record.total)]


class RedisRunStore(RunStore):
    """Plan runs and their outcomes in Redis.

    Args:
        client: A Redis client with ``decode_responses=True``.
        prefix: Key prefix shared by every taskplane process of one deployment.
        retention_s: How long a run's keys live after submission.
        events: Where each recorded outcome's ``task:completed``/``task:failed``
            goes, written by the same script (None: no events).
        clock: Epoch seconds.
        cluster: *client* is a Redis Cluster client. The event stream has a slot
            of its own there, which no script of a run may touch: each recorded
            outcome's event is written in a second call right after the script
            that recorded it (with the events this process queued before it, in
            order). A process that dies between the two loses that one event;
            the outcome stands, and a rerun finds it recorded and writes none.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str = "taskplane",
        retention_s: int = 86400,
        events: RedisEventBus | None = None,
        clock: Clock = time.time,
        cluster: bool = False,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.cluster = cluster
        self.retention_s = retention_s
        self.events = events
        self.clock = clock
        self._submit = load_script(client, "taskplane.plan", "submit.lua")
        self._start = load_script(client, "taskplane.plan", "start.lua")
        self._finish = load_script(client, "taskplane.plan", "finish.lua")
        self._end = load_script(client, "taskplane.plan", "end.lua")
        self._fill = load_script(client, "taskplane.plan", "fill.lua")

    def _keys(self, plan_id: str) -> dict[str, str]:
        return {part: plan_key(self.prefix, plan_id, part) for part in _PARTS}

    def key(self, plan_id: str, name: str) -> str:
        """The Redis key of part *name* (``meta``, ``results``, ``done``, ``order``…) of a run."""
        return self._keys(plan_id)[name]

    def _lease(self, plan_id: str, index: int) -> str:
        return plan_key(self.prefix, plan_id, f"lease:{index}")

    def _event_stream(self, plan_id: str) -> tuple[str, list[str]]:
        """The event stream's key and the (maxlen, channel) arguments of the recording scripts.

        On a cluster the scripts write no event: the key is one of the run's own
        (in its slot, never touched).
        """
        if self.cluster:
            return plan_key(self.prefix, plan_id, "meta"), ["0", ""]
        if self.events is None:
            return event_stream_key(self.prefix), ["0", ""]
        return self.events.stream, [str(self.events.stream_maxlen), self.events.channel]

    def _finished_event(self, plan_id: str, result: ExecutionResult) -> str:
        """The JSON of *result*'s ``task:completed``/``task:failed`` ('' without a bus)."""
        if self.events is None:
            return ""
        worker = str(result.metadata.get("worker") or "")
        try:
            return self.events.encode(*finished_event(result, plan_id=plan_id, worker=worker))
        except ValueError:  # a result that is not JSON cannot be recorded either
            return ""

    def _call(self, what: str, func: Callable[[], Any]) -> Any:
        with translated("plan store", what):
            return func()

    # -- RunStore ---------------------------------------------------------------------------

    def create(
        self,
        plan_id: str,
        tasks: Sequence[ExecutionTask],
        plan_layout: PlanLayout,
        deadline: float,
        *,
        extra_meta: dict[str, str] | None = None,
    ) -> RunRecord | None:
        keys, args, fields = self._submit_call(plan_id, tasks, plan_layout, deadline, extra_meta)
        created = self._call("submit", lambda: self._submit(keys=keys, args=args))
        return RunRecord.parse(plan_id, fields) if created else None

    def create_sending(
        self,
        plan_id: str,
        tasks: Sequence[ExecutionTask],
        plan_layout: PlanLayout,
        deadline: float,
        send: Callable[[], None],
        *,
        extra_meta: dict[str, str] | None = None,
        fresh: bool = False,
    ) -> RunRecord | None:
        if self.cluster or not fresh:
            return super().create_sending(
                plan_id, tasks, plan_layout, deadline, send, extra_meta=extra_meta
            )
        keys, args, fields = self._submit_call(plan_id, tasks, plan_layout, deadline, extra_meta)
        sent: list[BaseException | None] = []  # [None] once sent, [the error] if that failed

        def sending() -> None:
            try:
                send()
            except BaseException as exc:  # raised once the script's reply is in
                sent.append(exc)
            else:
                sent.append(None)

        with translated("plan store", "submit"):
            try:
                created = script_during(self.client, self._submit, keys, args, sending)
            except (redis.ConnectionError, redis.TimeoutError):
                if not sent:  # nothing went out: the plain way, riding through an outage
                    return super().create_sending(
                        plan_id, tasks, plan_layout, deadline, send, extra_meta=extra_meta
                    )
                # the reply was lost after the send: record the run now if it is not (the
                # id is fresh, so a run under it is this one)
                self._submit(keys=keys, args=args)
                created = 1
        if sent and sent[0] is not None:
            if created:
                self.discard(plan_id)
            raise sent[0]
        return RunRecord.parse(plan_id, fields) if created else None

    def _submit_call(
        self,
        plan_id: str,
        tasks: Sequence[ExecutionTask],
        plan_layout: PlanLayout,
        deadline: float,
        extra_meta: dict[str, str] | None,
    ) -> tuple[list[str], list[Any], dict[str, str]]:
        """The keys and arguments of ``submit.lua`` for a new run, and its record's fields."""
        keys = self._keys(plan_id)
        fields = new_fields(
            plan_layout,
            len(tasks),
            deadline=deadline,
            retention_s=self.retention_s,
            created=self.clock(),
            extra=extra_meta,
        )
        args: list[Any] = [self.retention_s, len(fields)]
        for name, value in fields.items():
            args += [name, value]
        args += [json.dumps(task.to_json_dict(), separators=(",", ":")) for task in tasks]
        return [keys["meta"], keys["tasks"]], args, fields

    def discard(self, plan_id: str) -> None:
        self._call("discard", lambda: self.client.delete(*self._keys(plan_id).values()))

    def start(
        self,
        plan_id: str,
        index: int,
        previous_index: int | None = None,
        *,
        lease_s: int = 3600,
        redelivered: bool = False,
        owner: str = "",
    ) -> StartDecision:
        owner = owner or uuid.uuid4().hex
        keys = self._keys(plan_id)
        prev = "" if previous_index is None else str(previous_index)
        lease = self._lease(plan_id, index)
        action, previous = self._call(
            "start",
            lambda: self._start(
                keys=[keys["meta"], keys["results"], lease],
                args=[str(index), prev, lease_s, "1" if redelivered else "0", owner],
            ),
        )
        return StartDecision(StartAction(action), previous=_result(previous or None))

    def hold(self, plan_id: str, index: int, owner: str, lease_s: int) -> None:
        lease = self._lease(plan_id, index)
        self._call("hold", lambda: self.client.set(lease, owner or "1", ex=max(int(lease_s), 1)))

    def finish(
        self, plan_id: str, index: int, result: ExecutionResult, *, ran: bool
    ) -> FinishDecision:
        keys = self._keys(plan_id)
        confidence = "" if result.confidence is None else repr(result.confidence)
        args = [str(index), result.model_dump_json(by_alias=True), result.status.value, confidence]
        stream, stream_args = self._event_stream(plan_id)
        event = self._finished_event(plan_id, result)
        queued = self.events.take_queued() if self.events is not None else []
        args += ["1" if ran else "0", "" if self.cluster else event, *stream_args]
        if not self.cluster:  # the task's own earlier events go in first
            args += queued
        run_keys = [keys[part] for part in ("meta", "results", "tasks", "done", "order")]
        recorded, ending, next_index, next_task, *quiet = self._call(
            "finish", lambda: self._finish(keys=[*run_keys, stream, keys["reply"]], args=args)
        )
        if self.cluster and self.events is not None:
            self.events.write_now([*queued, event] if recorded and event else queued)
        return FinishDecision(
            recorded=bool(recorded),
            ending=ending or None,
            next_index=int(next_index) if next_index else None,
            next_task=json.loads(next_task) if next_task else None,
            quiet_end=bool(quiet and quiet[0]),
        )

    def end(self, plan_id: str, state: PlanState) -> str | None:
        keys = self._keys(plan_id)
        return self._call(
            "end", lambda: self._end(keys=[keys["meta"], keys["done"]], args=[state.value])
        )

    def meta(self, plan_id: str) -> dict[str, str]:
        return self._call("meta", lambda: self.client.hgetall(self._keys(plan_id)["meta"]))

    def meta_field(self, plan_id: str, name: str) -> str | None:
        key = self._keys(plan_id)["meta"]
        value = self._call("meta", lambda: self.client.hget(key, name))
        return None if value is None else str(value)

    def wait(self, plan_id: str, timeout_s: float) -> bool:
        done = self._keys(plan_id)["done"]
        timeout_s = min(timeout_s, WAIT_SLICE_S)
        if timeout_s <= 0:
            return bool(self._call("wait", lambda: self.client.llen(done)))
        token = self._call(
            "wait",
            lambda: self.client.blmove(done, done, timeout_s, "RIGHT", "LEFT"),  # type: ignore[arg-type]
        )
        return token is not None

    def wait_view(
        self, plan_id: str, timeout_s: float, *, total: int
    ) -> tuple[RunRecord | None, list[ExecutionResult] | None]:
        timeout_s = min(timeout_s, WAIT_SLICE_S)
        if self.cluster or total > READ_WITH_WAIT_MAX or timeout_s <= 0:
            return super().wait_view(plan_id, timeout_s, total=total)
        # one round trip: Redis answers the reads queued behind the wait as soon as it ends
        keys = self._keys(plan_id)
        pipe = self.client.pipeline(transaction=False)
        pipe.blmove(keys["done"], keys["done"], timeout_s, "RIGHT", "LEFT")  # type: ignore[arg-type]
        pipe.hgetall(keys["meta"])
        pipe.hgetall(keys["results"])
        token, meta, raw = self._call("wait", pipe.execute)
        record, outcomes = _ended(plan_id, meta, raw)
        return record, outcomes if token is not None else None

    def tasks(self, plan_id: str) -> list[ExecutionTask]:
        raw = self._call("tasks", lambda: self.client.hgetall(self._keys(plan_id)["tasks"]))
        return [ExecutionTask.model_validate_json(raw[str(i)]) for i in range(len(raw))]

    def results(self, plan_id: str, count: int) -> list[ExecutionResult | None]:
        raw = self._call("results", lambda: self.client.hgetall(self._keys(plan_id)["results"]))
        return [_result(raw.get(str(i))) for i in range(count)]

    def result(self, plan_id: str, index: int) -> ExecutionResult | None:
        key = self._keys(plan_id)["results"]
        return _result(self._call("result", lambda: self.client.hget(key, str(index))))

    def add_child(self, plan_id: str, child_id: str) -> None:
        self._add_member(plan_key(self.prefix, plan_id, "children"), child_id, "children")

    def children(self, plan_id: str) -> list[str]:
        key = plan_key(self.prefix, plan_id, "children")
        return sorted(self._call("children", lambda: self.client.smembers(key)))

    def add_reply(self, plan_id: str, celery_task_id: str) -> None:
        self._add_member(self._keys(plan_id)["reply"], celery_task_id, "reply")

    def take_replies(self, plan_id: str) -> tuple[RunRecord | None, list[str]]:
        keys = self._keys(plan_id)
        pipe = self.client.pipeline(transaction=True)
        pipe.hgetall(keys["meta"])
        pipe.smembers(keys["reply"])
        pipe.delete(keys["reply"])
        meta, members, _ = self._call("reply", pipe.execute)
        return RunRecord.parse(plan_id, meta), sorted(members)

    def ended_view(self, plan_id: str) -> tuple[RunRecord | None, list[ExecutionResult] | None]:
        keys = self._keys(plan_id)
        pipe = self.client.pipeline(transaction=False)  # an ended run's record stays as it is
        pipe.hgetall(keys["meta"])
        pipe.hgetall(keys["results"])
        meta, raw = self._call("results", pipe.execute)
        return _ended(plan_id, meta, raw)

    def _add_member(self, key: str, member: str, what: str) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(key, member)
        pipe.expire(key, self.retention_s)
        self._call(what, pipe.execute)

    def _dispatched(
        self, plan_id: str, indexes: Sequence[int]
    ) -> list[tuple[Dispatched, dict[str, Any] | None]]:
        keys = self._keys(plan_id)
        pipe = self.client.pipeline(transaction=False)
        for index in indexes:
            pipe.hexists(keys["results"], str(index))
            pipe.exists(self._lease(plan_id, index))
            pipe.hget(keys["tasks"], str(index))
        replies = self._call("unstarted tasks", pipe.execute)
        found = []
        for position, index in enumerate(indexes):
            has_result, leased, task = replies[3 * position : 3 * position + 3]
            state = Dispatched(index, bool(has_result), bool(leased))
            found.append((state, json.loads(task) if task else None))
        return found

    def _recorded(self, plan_id: str) -> set[int]:
        raw = self._call("results", lambda: self.client.hkeys(self._keys(plan_id)["results"]))
        return {int(index) for index in raw}

    def _record_missing(
        self, plan_id: str, outcomes: Sequence[tuple[int, ExecutionResult]]
    ) -> None:
        keys = self._keys(plan_id)
        left = self._call("ttl", lambda: self.client.ttl(keys["meta"]))
        # the results hash expires with the run (it may be created here, after submission)
        stream, stream_args = self._event_stream(plan_id)
        args: list[Any] = [left if left > 0 else self.retention_s, *stream_args]
        events: dict[str, str] = {}
        for index, result in outcomes:
            events[str(index)] = self._finished_event(plan_id, result)
            event = "" if self.cluster else events[str(index)]
            args += [str(index), result.model_dump_json(by_alias=True), event]
        recorded = self._call(
            "fill", lambda: self._fill(keys=[keys["results"], keys["order"], stream], args=args)
        )
        if self.cluster and self.events is not None:  # after the outcomes, as in finish()
            self.events.write_now([events[str(i)] for i in recorded if events.get(str(i))])
