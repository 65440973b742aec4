"""Plan runs in Redis: one record per run, each outcome recorded once.

Keys, under ``{prefix}:plan:{id}`` (the run id is the keys' hash tag, see
:mod:`taskplane.keys`):

* ``:meta``    hash: state, rule, mode, n, window cursor ``next``, counters
  ``done``/``running``, ``cancel`` flag, ``deadline`` (epoch s), ``winner``;
* ``:tasks``   hash: task index → task JSON;
* ``:results`` hash: task index → result JSON — ``HSETNX``, so the first
  recorded outcome of (plan, task) wins and a rerun replays it;
* ``:done``    list: a token pushed when the run ends; waiters block on it
  (``BLMOVE`` back onto itself, so every waiter wakes) instead of polling;
* ``:order``   stream: one entry ``{i: index}`` per recorded outcome, in the
  order outcomes were recorded (written by the same script that records the
  outcome, so each task appears exactly once); ``as_completed`` readers read
  it by position with ``XREAD BLOCK``;
* ``:reply``   set: Celery task ids of ``execute_plan`` calls waiting on the run.

Every state change is one Lua script, so any number of workers agree. The
script that records an outcome also appends its ``task:completed`` or
``task:failed`` event to the event stream (and publishes it on the event
channel) when the store is given an event bus: one event per recorded
outcome, written with it or not at all, whoever records it (a worker, a
rerun, the client filling in a plan's unfinished tasks).
On a Redis Cluster the event stream has a slot of its own: there the event
is written right after the script, in a second round trip (see ``cluster``).
All keys expire ``plan_retention_s`` after the plan was submitted.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from taskplane.errors import BackendError
from taskplane.events import RedisEventBus, finished_event
from taskplane.executor import envelope
from taskplane.keys import event_stream_key, plan_key
from taskplane.models import ExecutionResult, ExecutionTask, TaskStatus
from taskplane.plans import (
    WEIGHTED_CONFIDENCE_TARGET,
    Dispatched,
    PlanLayout,
    PlanState,
    lost_messages,
)

_SUBMIT = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
local ttl = tonumber(ARGV[1])
local nmeta = tonumber(ARGV[2])
local i = 3
for _ = 1, nmeta do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  i = i + 2
end
local idx = 0
while i <= #ARGV do
  redis.call('HSET', KEYS[2], tostring(idx), ARGV[i])
  idx = idx + 1
  i = i + 1
end
for k = 1, #KEYS do redis.call('EXPIRE', KEYS[k], ttl) end
return 1
"""

_START = """
local rec = redis.call('HGET', KEYS[2], ARGV[1])
if rec then return {'recorded', rec} end
local m = redis.call('HMGET', KEYS[1], 'state', 'cancel')
if not m[1] then return {'missing', false} end
if m[2] == '1' then return {'cancelled', false} end
if ARGV[4] == '1' then
  redis.call('SET', KEYS[3], ARGV[5], 'EX', tonumber(ARGV[3]))
elseif not redis.call('SET', KEYS[3], ARGV[5], 'NX', 'EX', tonumber(ARGV[3])) then
  -- held: by another copy of the task (drop this one), or by this very message's
  -- earlier delivery (a Celery retry keeps its task id), which carries on
  if redis.call('GET', KEYS[3]) ~= ARGV[5] then return {'busy', false} end
  redis.call('SET', KEYS[3], ARGV[5], 'EX', tonumber(ARGV[3]))
end
if redis.call('HSETNX', KEYS[1], 'started:' .. ARGV[1], '1') == 1 then
  redis.call('HINCRBY', KEYS[1], 'running', 1)  -- a takeover reuses the dead run's count
end
local prev = false
if ARGV[2] ~= '' then prev = redis.call('HGET', KEYS[2], ARGV[2]) end
return {'run', prev}
"""

_FINISH = """
-- KEYS: meta, results, tasks, done, order, event stream (on a cluster: a run key, untouched).
-- ARGV: index, result JSON, status, confidence, ran (1/0), event JSON ('' for none),
--       event stream maxlen, event channel, then events of this process not yet
--       sent (its task:started...), written first so the stream keeps their order.
for i = 9, #ARGV do
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'event', ARGV[i])
  redis.call('PUBLISH', ARGV[8], ARGV[i])
end
local left = redis.call('TTL', KEYS[1])
if left == -2 then return {0, false, false, false} end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return {0, false, false, false} end
if left > 0 then redis.call('EXPIRE', KEYS[2], left) end
if ARGV[6] ~= '' then
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[7], '*', 'event', ARGV[6])
  redis.call('PUBLISH', ARGV[8], ARGV[6])
end
if ARGV[5] == '1' then redis.call('HINCRBY', KEYS[1], 'running', -1) end
local m = redis.call('HMGET', KEYS[1], 'state', 'rule', 'n', 'cont', 'mode', 'target', 'ttl')
local state, rule, n = m[1], m[2], tonumber(m[3])
redis.call('XADD', KEYS[5], '*', 'i', ARGV[1])
redis.call('EXPIRE', KEYS[5], left > 0 and left or tonumber(m[7]))
local ndone = redis.call('HINCRBY', KEYS[1], 'done', 1)
local ok = ARGV[3] == 'success'
local ending = false
if state == 'running' then
  if rule == 'all' then
    if not ok then ending = 'failed' elseif ndone >= n then ending = 'completed' end
  elseif rule == 'race' then
    if ok then
      ending = 'completed'
      redis.call('HSET', KEYS[1], 'winner', ARGV[1])
    elseif ndone >= n then ending = 'failed' end
  elseif rule == 'weighted' then
    if ok then redis.call('HSET', KEYS[1], 'succeeded', '1') end
    local c = tonumber(ARGV[4])
    if ok and c and c >= tonumber(m[6]) then ending = 'completed'
    elseif ndone >= n then
      if redis.call('HGET', KEYS[1], 'succeeded') == '1' then ending = 'completed'
      else ending = 'failed' end
    end
  elseif rule == 'sequential' then
    if (not ok) and m[4] ~= '1' then ending = 'failed'
    elseif ndone >= n then ending = 'completed' end
  elseif ndone >= n then ending = 'completed' end
end
if ending then
  redis.call('HSET', KEYS[1], 'state', ending, 'cancel', '1')
  redis.call('RPUSH', KEYS[4], ending)
  redis.call('EXPIRE', KEYS[4], left > 0 and left or tonumber(m[7]))
  return {1, ending, false, false}
end
if state == 'running' and m[5] == 'window' then
  local nxt = redis.call('HINCRBY', KEYS[1], 'next', 1) - 1
  if nxt < n then
    redis.call('HSET', KEYS[1], 'after:' .. ARGV[1], tostring(nxt))
    return {1, false, tostring(nxt), redis.call('HGET', KEYS[3], tostring(nxt))}
  end
end
return {1, false, false, false}
"""

_FILL = """
-- KEYS: results hash, order stream, event stream.
-- ARGV: ttl (s), event stream maxlen, event channel, then (index, result JSON,
--       event JSON or '') triples.
-- Records each outcome unless one stands, lists it in the order stream and
-- appends its event. Returns the indexes it recorded.
local ttl = tonumber(ARGV[1])
local recorded = {}
for i = 4, #ARGV, 3 do
  if redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) == 1 then
    recorded[#recorded + 1] = ARGV[i]
    redis.call('XADD', KEYS[2], '*', 'i', ARGV[i])
    if ARGV[i + 2] ~= '' then
      redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'event', ARGV[i + 2])
      redis.call('PUBLISH', ARGV[3], ARGV[i + 2])
    end
  end
end
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('EXPIRE', KEYS[2], ttl)
return recorded
"""

_END = """
local m = redis.call('HMGET', KEYS[1], 'state', 'ttl')
if not m[1] then return false end
if m[1] ~= 'running' then return m[1] end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'cancel', '1')
redis.call('RPUSH', KEYS[2], ARGV[1])
local left = redis.call('TTL', KEYS[1])
redis.call('EXPIRE', KEYS[2], left > 0 and left or tonumber(m[2]))
return ARGV[1]
"""

#: Longest single blocking wait; callers loop, re-checking the run's state.
WAIT_SLICE_S = 5.0

TERMINAL = frozenset(s.value for s in PlanState) - {PlanState.RUNNING.value}


@dataclass(frozen=True)
class StartDecision:
    """What a task about to run should do.

    Attributes:
        action: ``run``, ``recorded`` (replay *recorded*), ``cancelled`` or ``missing``.
        recorded: The outcome recorded earlier, for ``recorded``.
        previous: The previous task's outcome, for sequential plans.
    """

    action: str
    recorded: ExecutionResult | None = None
    previous: ExecutionResult | None = None


@dataclass(frozen=True)
class FinishDecision:
    """What recording an outcome led to.

    Attributes:
        recorded: False when an earlier outcome of the same task already stood.
        ending: The plan's final state if this outcome ended it.
        next_index: Index of the task the caller must enqueue next (window mode).
        next_task: That task as JSON.
    """

    recorded: bool
    ending: str | None = None
    next_index: int | None = None
    next_task: dict[str, Any] | None = None


def _result(raw: str | None) -> ExecutionResult | None:
    return None if raw is None else ExecutionResult.model_validate_json(raw)


class PlanStore:
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
        clock: Callable[[], float] = time.time,
        cluster: bool = False,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.cluster = cluster
        self.retention_s = retention_s
        self.events = events
        self.clock = clock
        self._submit = client.register_script(_SUBMIT)
        self._start = client.register_script(_START)
        self._finish = client.register_script(_FINISH)
        self._end = client.register_script(_END)
        self._fill = client.register_script(_FILL)

    def _keys(self, plan_id: str) -> dict[str, str]:
        parts = ("meta", "tasks", "results", "done", "reply", "order")
        return {k: plan_key(self.prefix, plan_id, k) for k in parts}

    def key(self, plan_id: str, name: str) -> str:
        """The Redis key of part *name* (``meta``, ``results``, ``done``, ``order``…) of a run."""
        return self._keys(plan_id)[name]

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

    def _lease(self, plan_id: str, index: int) -> str:
        return plan_key(self.prefix, plan_id, f"lease:{index}")

    def _call(self, what: str, func: Callable[[], Any]) -> Any:
        try:
            return func()
        except redis.RedisError as exc:
            raise BackendError(f"plan store: {what} failed: {exc}") from exc

    def create(
        self,
        plan_id: str,
        tasks: Sequence[ExecutionTask],
        plan_layout: PlanLayout,
        deadline: float,
        *,
        extra_meta: dict[str, str] | None = None,
    ) -> bool:
        """Record a new run; False when *plan_id* already names one (attach instead).

        *extra_meta* adds fields to the run's meta hash (a nested pattern's parent).
        """
        keys = self._keys(plan_id)
        meta = {
            **(extra_meta or {}),
            "state": PlanState.RUNNING.value,
            "rule": plan_layout.rule,
            "mode": plan_layout.mode.value,
            "n": str(len(tasks)),
            "next": str(plan_layout.window),
            "done": "0",
            "running": "0",
            "cancel": "0",
            "cont": "1" if plan_layout.continue_on_error else "0",
            "target": str(WEIGHTED_CONFIDENCE_TARGET),
            "deadline": repr(deadline),
            "order": ",".join(map(str, plan_layout.order)),
            "ttl": str(self.retention_s),
            "created": repr(self.clock()),
        }
        args: list[Any] = [self.retention_s, len(meta)]
        for field, value in meta.items():
            args += [field, value]
        args += [json.dumps(task.to_json_dict(), separators=(",", ":")) for task in tasks]
        created = self._call(
            "submit", lambda: self._submit(keys=[keys["meta"], keys["tasks"]], args=args)
        )
        return bool(created)

    def discard(self, plan_id: str) -> None:
        """Forget a run entirely (used when its tasks could not be enqueued)."""
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
        """Called before a task runs: replay, refuse (cancelled, busy) or go ahead.

        Going ahead takes a lease of *lease_s* seconds on the task for *owner*
        (the Celery task id), so a second copy of the same task (a window
        successor sent twice) is dropped (``busy``) while the first runs. The
        owner's own later deliveries (its retries) and a *redelivered* message
        — the broker gave it back because its worker died — carry on.
        """
        owner = owner or uuid.uuid4().hex
        keys = self._keys(plan_id)
        prev = "" if previous_index is None else str(previous_index)
        lease = self._lease(plan_id, index)
        action, payload = self._call(
            "start",
            lambda: self._start(
                keys=[keys["meta"], keys["results"], lease],
                args=[str(index), prev, lease_s, "1" if redelivered else "0", owner],
            ),
        )
        if action == "recorded":
            return StartDecision(action, recorded=_result(payload))
        if action == "run":
            return StartDecision(action, previous=_result(payload))
        return StartDecision(action)

    def hold(self, plan_id: str, index: int, owner: str, lease_s: int) -> None:
        """Keep task *index* leased to *owner* for *lease_s* more seconds (it waits to retry).

        While the lease lives, the task is not taken for lost (see :meth:`orphans`).
        """
        lease = self._lease(plan_id, index)
        self._call("hold", lambda: self.client.set(lease, owner or "1", ex=max(int(lease_s), 1)))

    def finish(
        self, plan_id: str, index: int, result: ExecutionResult, *, ran: bool
    ) -> FinishDecision:
        """Record *result* for task *index* (first outcome wins) and advance the run."""
        keys = self._keys(plan_id)
        confidence = "" if result.confidence is None else repr(result.confidence)
        args = [str(index), result.model_dump_json(by_alias=True), result.status.value, confidence]
        stream, stream_args = self._event_stream(plan_id)
        event = self._finished_event(plan_id, result)
        queued = self.events.take_queued() if self.events is not None else []
        args += ["1" if ran else "0", "" if self.cluster else event, *stream_args]
        if not self.cluster:  # the task's own earlier events go in first
            args += queued
        recorded, ending, next_index, next_task = self._call(
            "finish",
            lambda: self._finish(
                keys=[
                    keys["meta"],
                    keys["results"],
                    keys["tasks"],
                    keys["done"],
                    keys["order"],
                    stream,
                ],
                args=args,
            ),
        )
        if self.cluster and self.events is not None:
            self.events.write_now([*queued, event] if recorded and event else queued)
        return FinishDecision(
            recorded=bool(recorded),
            ending=ending or None,
            next_index=int(next_index) if next_index else None,
            next_task=json.loads(next_task) if next_task else None,
        )

    def successor_to_resend(self, plan_id: str, index: int) -> tuple[int, dict[str, Any]] | None:
        """The window successor task *index* handed on, if it never started.

        A worker can die between recording an outcome and enqueueing the next
        task; the rerun of the same task resends that successor.
        """
        meta = self.meta(plan_id)
        succ = meta.get(f"after:{index}")
        if succ is None or meta.get("state") != PlanState.RUNNING.value:
            return None
        found = self._unstarted(plan_id, [int(succ)])
        return found[0] if found else None

    def orphans(self, plan_id: str) -> list[tuple[int, dict[str, Any]]]:
        """Dispatched window tasks whose broker message was lost (see :func:`lost_messages`).

        Such a message was lost by the broker, or by a worker that died at the
        wrong instant; a message merely queued behind others is not. Sending
        a lost one again is safe, since the first recorded outcome wins.
        """
        meta = self.meta(plan_id)
        if meta.get("state") != PlanState.RUNNING.value or meta.get("mode") != "window":
            return []
        count = int(meta["n"])
        order = [int(i) for i in meta.get("order", "").split(",") if i] or list(range(count))
        sent = order[: min(int(meta["next"]), count)]
        states = self._states(plan_id, sent)
        lost = set(lost_messages([state for state, _ in states]))
        return [
            (state.index, json.loads(task))
            for state, task in states
            if state.index in lost and task is not None
        ]

    def _states(self, plan_id: str, indexes: list[int]) -> list[tuple[Dispatched, str | None]]:
        """Outcome recorded and lease held for each of *indexes*, with its task JSON."""
        keys = self._keys(plan_id)
        pipe = self.client.pipeline(transaction=False)
        for index in indexes:
            pipe.hexists(keys["results"], str(index))
            pipe.exists(self._lease(plan_id, index))
            pipe.hget(keys["tasks"], str(index))
        replies = self._call("unstarted tasks", pipe.execute)
        return [
            (Dispatched(index, bool(replies[3 * p]), bool(replies[3 * p + 1])), replies[3 * p + 2])
            for p, index in enumerate(indexes)
        ]

    def _unstarted(self, plan_id: str, indexes: list[int]) -> list[tuple[int, dict[str, Any]]]:
        """Those of *indexes* with no outcome and no live lease, with their task JSON."""
        return [
            (state.index, json.loads(task))
            for state, task in self._states(plan_id, indexes)
            if not state.has_result and not state.leased and task is not None
        ]

    def end(self, plan_id: str, state: PlanState) -> str | None:
        """End a running run as *state* (timeout, cancelled); returns the run's final state."""
        keys = self._keys(plan_id)
        return self._call(
            "end", lambda: self._end(keys=[keys["meta"], keys["done"]], args=[state.value])
        )

    def meta(self, plan_id: str) -> dict[str, str]:
        """The run's meta hash ({} when there is no such run)."""
        return self._call("meta", lambda: self.client.hgetall(self._keys(plan_id)["meta"]))

    def meta_field(self, plan_id: str, name: str) -> str | None:
        """One field of the run's meta hash (None when unset)."""
        key = self._keys(plan_id)["meta"]
        value = self._call("meta", lambda: self.client.hget(key, name))
        return None if value is None else str(value)

    def is_cancelled(self, plan_id: str) -> bool:
        """The run's cancel flag."""
        flag = self._call(
            "cancel flag", lambda: self.client.hget(self._keys(plan_id)["meta"], "cancel")
        )
        return bool(flag == "1")

    def wait(self, plan_id: str, timeout_s: float) -> bool:
        """Block until the run ends or *timeout_s* passes (at most a slice); True when it ended."""
        done = self._keys(plan_id)["done"]
        timeout_s = min(timeout_s, WAIT_SLICE_S)
        if timeout_s <= 0:
            return bool(self._call("wait", lambda: self.client.llen(done)))
        token = self._call(
            "wait",
            lambda: self.client.blmove(done, done, timeout_s, "RIGHT", "LEFT"),  # type: ignore[arg-type]
        )
        return token is not None

    def tasks(self, plan_id: str) -> list[ExecutionTask]:
        """The run's tasks in plan order."""
        raw = self._call("tasks", lambda: self.client.hgetall(self._keys(plan_id)["tasks"]))
        return [ExecutionTask.model_validate_json(raw[str(i)]) for i in range(len(raw))]

    def results(self, plan_id: str, count: int) -> list[ExecutionResult | None]:
        """Recorded outcomes in task order (None where a task has none yet)."""
        raw = self._call("results", lambda: self.client.hgetall(self._keys(plan_id)["results"]))
        return [_result(raw.get(str(i))) for i in range(count)]

    def result(self, plan_id: str, index: int) -> ExecutionResult | None:
        """Task *index*'s recorded outcome, or None."""
        key = self._keys(plan_id)["results"]
        return _result(self._call("result", lambda: self.client.hget(key, str(index))))

    def fill_missing(self, plan_id: str, status: TaskStatus, error: str) -> None:
        """Record *status* for every task that has no outcome yet (first outcome still wins)."""
        keys = self._keys(plan_id)
        tasks = self.tasks(plan_id)
        have = self._call("results", lambda: set(self.client.hkeys(keys["results"])))
        missing = [(i, t) for i, t in enumerate(tasks) if str(i) not in have]
        if not missing:
            return
        left = self._call("ttl", lambda: self.client.ttl(keys["meta"]))
        # the results hash expires with the run (it may be created here, after submission)
        stream, stream_args = self._event_stream(plan_id)
        args: list[Any] = [left if left > 0 else self.retention_s, *stream_args]
        events: dict[str, str] = {}
        for index, task in missing:
            result = envelope(task, status, error=error)
            result.metadata["planId"] = plan_id
            events[str(index)] = self._finished_event(plan_id, result)
            event = "" if self.cluster else events[str(index)]
            args += [str(index), result.model_dump_json(by_alias=True), event]
        recorded = self._call(
            "fill", lambda: self._fill(keys=[keys["results"], keys["order"], stream], args=args)
        )
        if self.cluster and self.events is not None:  # after the outcomes, as in finish()
            self.events.write_now([events[str(i)] for i in recorded if events.get(str(i))])

    def add_child(self, plan_id: str, child_id: str) -> None:
        """Remember that *child_id* runs a nested pattern of *plan_id*."""
        key = plan_key(self.prefix, plan_id, "children")
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(key, child_id)
        pipe.expire(key, self.retention_s)
        self._call("children", pipe.execute)

    def children(self, plan_id: str) -> list[str]:
        """Runs of nested patterns started by *plan_id*'s tasks."""
        key = plan_key(self.prefix, plan_id, "children")
        return sorted(self._call("children", lambda: self.client.smembers(key)))

    def add_reply(self, plan_id: str, celery_task_id: str) -> None:
        """Remember a Celery task id that waits for this run's results."""
        key = self._keys(plan_id)["reply"]
        pipe = self.client.pipeline(transaction=False)
        pipe.sadd(key, celery_task_id)
        pipe.expire(key, self.retention_s)
        self._call("reply", pipe.execute)

    def take_replies(self, plan_id: str) -> list[str]:
        """Celery task ids waiting for this run (each returned once)."""
        key = self._keys(plan_id)["reply"]
        pipe = self.client.pipeline(transaction=True)
        pipe.smembers(key)
        pipe.delete(key)
        members, _ = self._call("reply", pipe.execute)
        return sorted(members)

    def status(self, plan_id: str) -> dict[str, Any]:
        """Counts of the run's tasks: pending, running, done; and its state ({} if none)."""
        return status_of(plan_id, self.meta(plan_id))


def status_of(plan_id: str, meta: dict[str, str]) -> dict[str, Any]:
    """``{id, state, total, done, running, pending}`` from a run's meta hash ({} if empty)."""
    if not meta:
        return {}
    total, done = int(meta["n"]), int(meta["done"])
    running = max(min(int(meta["running"]), total - done), 0)
    return {
        "id": plan_id,
        "state": meta["state"],
        "total": total,
        "done": done,
        "running": running,
        "pending": total - done - running,
    }
