"""Plan run stores' behaviour, run against the in-memory store and the Redis store.

The Redis store decides in Lua what :mod:`taskplane.plan.rules` decides in
Python; the memory store uses the rules themselves. Every test here runs on
both, so the scripts cannot drift from the rules unseen.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from taskplane.devtools.redis_server import free_port
from taskplane.errors import BackendError
from taskplane.models import ExecutionResult, ExecutionTask, TaskStatus, TaskType
from taskplane.plan import (
    All,
    AllSettled,
    MemoryRunStore,
    Mode,
    PlanLayout,
    PlanState,
    Race,
    RedisRunStore,
    Rule,
    RunStore,
    Sequential,
    StartAction,
    Weighted,
)
from taskplane.plan.record import PARENT
from taskplane.plan.redis_store import READ_WITH_WAIT_MAX
from taskplane.plan.rules import Progress

pytestmark = pytest.mark.integration

PREFIX = "tp-test-runs"
START = 1_000_000.0


@dataclass
class Harness:
    """A store and a way to let time pass for its leases."""

    store: RunStore
    advance: Callable[[float], None]


@pytest.fixture(params=["memory", "redis"])
def harness(request: pytest.FixtureRequest) -> Iterator[Harness]:
    if request.param == "memory":
        now = [START]

        def tick(seconds: float) -> None:
            now[0] += seconds

        yield Harness(MemoryRunStore(clock=lambda: now[0]), tick)
        return
    client: redis.Redis = request.getfixturevalue("redis_client")

    def expire_leases(seconds: float) -> None:
        """Redis counts lease time itself: drop every lease that would have run out."""
        for key in client.scan_iter(match=f"{PREFIX}:*lease:*"):
            if client.ttl(key) <= seconds:
                client.delete(key)

    yield Harness(RedisRunStore(client, prefix=PREFIX, retention_s=600), expire_leases)


def tasks(count: int) -> list[ExecutionTask]:
    return [ExecutionTask(id=f"t{i}", type=TaskType.AGENT, target="a1") for i in range(count)]


def res(
    index: int, status: TaskStatus = TaskStatus.SUCCESS, confidence: float | None = None
) -> ExecutionResult:
    error = None if status is TaskStatus.SUCCESS else f"t{index} went {status.value}"
    return ExecutionResult(task_id=f"t{index}", status=status, error=error, confidence=confidence)


def new_run(
    store: RunStore, count: int, rule: Rule | None = None, *, window: int | None = None
) -> str:
    plan_id = f"run-{uuid.uuid4().hex[:8]}"
    mode = Mode.WINDOW if window is not None else Mode.CHAIN
    plan_layout = PlanLayout(rule or All(), mode, tuple(range(count)), window or 1)
    assert store.create(plan_id, tasks(count), plan_layout, START + 60)
    return plan_id


def run(store: RunStore, plan_id: str, index: int, result: ExecutionResult) -> Any:
    start = store.start(plan_id, index, lease_s=30, owner=f"owner-{index}")
    assert start.action is StartAction.RUN
    return store.finish(plan_id, index, result, ran=True)


# --- records -------------------------------------------------------------------------------


def test_a_run_is_created_once_and_reads_back_typed(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 3, Sequential(continue_on_error=True))
    again = PlanLayout(All(), Mode.WINDOW, (0, 1, 2), 3)
    assert not store.create(plan_id, tasks(3), again, START)
    record = store.record(plan_id)
    assert record is not None
    assert (record.rule, record.mode, record.total, record.state) == (
        Sequential(continue_on_error=True),
        Mode.CHAIN,
        3,
        PlanState.RUNNING,
    )
    assert record.deadline == START + 60
    assert [t.id for t in store.tasks(plan_id)] == ["t0", "t1", "t2"]
    assert store.record("no-such-run") is None
    assert store.status("no-such-run") == {}


def test_extra_fields_read_back(harness: Harness) -> None:
    store = harness.store
    plan_layout = PlanLayout(AllSettled(), Mode.WINDOW, (0,), 1)
    extra = {"parent": '{"planId": "up", "index": 2}', "lineage": "a,b", "budget": "up"}
    assert store.create("child", tasks(1), plan_layout, START, extra_meta=extra)
    record = store.record("child")
    assert record is not None
    assert record.parent == {"planId": "up", "index": 2}
    assert (record.lineage, record.budget, record.pattern) == (("a", "b"), "up", None)


@pytest.mark.parametrize("fresh", [False, True], ids=["attachable", "fresh id"])
def test_a_run_is_recorded_and_sent_or_neither(harness: Harness, fresh: bool) -> None:
    store = harness.store
    plan_layout = PlanLayout(AllSettled(), Mode.WINDOW, (0,), 1)
    seen: list[Any] = []
    record = store.create_sending(
        "sent", tasks(1), plan_layout, START + 60, lambda: seen.append("sent"), fresh=fresh
    )
    assert record is not None and record.total == 1
    assert seen == ["sent"]
    assert store.record("sent") == record
    assert [t.id for t in store.tasks("sent")] == ["t0"]

    def refused() -> None:
        seen.append("refused")
        raise ConnectionError("broker refused")

    with pytest.raises(ConnectionError, match="broker refused"):
        store.create_sending("refused", tasks(1), plan_layout, START + 60, refused, fresh=fresh)
    assert seen[-1] == "refused"
    assert store.record("refused") is None  # nothing half-enqueued: the run was discarded
    assert store.tasks("refused") == []


def test_an_existing_run_is_attached_to_and_nothing_is_sent_again(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 1)
    before = store.record(plan_id)
    seen: list[str] = []
    again = PlanLayout(All(), Mode.WINDOW, (0, 1), 2)
    assert store.create_sending(plan_id, tasks(2), again, START, lambda: seen.append("x")) is None
    assert seen == [] and store.record(plan_id) == before


class ScriptReplyCutter:
    """A TCP relay to Redis that drops the connection carrying the first script call's reply
    instead of passing the reply on: the call ran, its caller never hears of it."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.cut = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.redis_port))
            script_sent = threading.Event()
            threading.Thread(
                target=self._up, args=(client, upstream, script_sent), daemon=True
            ).start()
            threading.Thread(
                target=self._down, args=(upstream, client, script_sent), daemon=True
            ).start()

    def _up(
        self, client: socket.socket, upstream: socket.socket, script_sent: threading.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(65536):
                if b"EVALSHA" in data.upper() and not self.cut.is_set():
                    script_sent.set()
                upstream.sendall(data)

    def _down(
        self, upstream: socket.socket, client: socket.socket, script_sent: threading.Event
    ) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                if script_sent.is_set() and not self.cut.is_set():
                    self.cut.set()
                    client.shutdown(socket.SHUT_RDWR)
                    client.close()
                    upstream.close()
                    return
                client.sendall(data)

    def close(self) -> None:
        self.listener.close()


def test_a_reply_lost_after_the_send_still_leaves_the_run_recorded(
    redis_url: str, redis_client: redis.Redis
) -> None:
    relay = ScriptReplyCutter(redis_client.connection_pool.connection_kwargs["port"])
    db = redis_client.connection_pool.connection_kwargs.get("db", 0)
    own = redis.Redis(port=relay.port, db=db, decode_responses=True)
    store = RedisRunStore(own, prefix=PREFIX, retention_s=600)
    seen: list[str] = []
    layout1 = PlanLayout(AllSettled(), Mode.WINDOW, (0,), 1)
    try:
        record = store.create_sending(
            "lost", tasks(1), layout1, START + 60, lambda: seen.append("sent"), fresh=True
        )
    finally:
        own.close()
        relay.close()
    assert relay.cut.is_set(), "the relay passed every reply on"
    assert record is not None and seen == ["sent"]  # sent once, and the run is there
    assert RedisRunStore(redis_client, prefix=PREFIX).record("lost") == record


def test_without_redis_a_fresh_run_is_neither_recorded_nor_sent() -> None:
    down = redis.Redis(port=free_port(), decode_responses=True, retry=Retry(NoBackoff(), 0))
    store = RedisRunStore(down, prefix=PREFIX)
    seen: list[str] = []
    layout1 = PlanLayout(AllSettled(), Mode.WINDOW, (0,), 1)
    with pytest.raises(BackendError, match="plan store: submit failed"):
        store.create_sending("gone", tasks(1), layout1, START, lambda: seen.append("x"), fresh=True)
    assert seen == []


def test_status_counts_pending_running_and_done(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 4, window=4)
    run(store, plan_id, 0, res(0))
    assert store.start(plan_id, 1, owner="w").action is StartAction.RUN
    assert store.status(plan_id) == {
        "id": plan_id,
        "state": "running",
        "total": 4,
        "done": 1,
        "running": 1,
        "pending": 2,
    }


# --- first outcome wins ----------------------------------------------------------------------


def test_the_first_outcome_of_a_task_stands(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 2, window=2)
    assert run(store, plan_id, 0, res(0, confidence=0.4)).recorded
    second = store.finish(plan_id, 0, res(0, TaskStatus.FAILURE), ran=True)
    assert not second.recorded
    assert store.result(plan_id, 0) == res(0, confidence=0.4)
    assert store.start(plan_id, 0, owner="later").action is StartAction.RECORDED
    assert store.status(plan_id)["done"] == 1


def test_a_run_that_is_gone_records_nothing(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 1)
    store.discard(plan_id)
    assert store.start(plan_id, 0).action is StartAction.MISSING
    assert not store.finish(plan_id, 0, res(0), ran=False).recorded
    assert store.record(plan_id) is None


# --- leases ----------------------------------------------------------------------------------


def test_a_second_copy_is_busy_while_the_first_holds_the_lease(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 1)
    assert store.start(plan_id, 0, lease_s=30, owner="first").action is StartAction.RUN
    assert store.start(plan_id, 0, lease_s=30, owner="copy").action is StartAction.BUSY
    # the owner's own retry carries on
    assert store.start(plan_id, 0, lease_s=30, owner="first").action is StartAction.RUN
    assert store.status(plan_id)["running"] == 1


def test_a_redelivered_message_takes_over_without_counting_twice(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 2, window=2)
    assert store.start(plan_id, 0, lease_s=30, owner="dead").action is StartAction.RUN
    taken = store.start(plan_id, 0, lease_s=30, owner="other", redelivered=True)
    assert taken.action is StartAction.RUN
    assert store.status(plan_id)["running"] == 1
    assert store.finish(plan_id, 0, res(0), ran=True).recorded
    assert store.status(plan_id)["running"] == 0


def test_after_the_lease_runs_out_another_copy_may_run(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 1)
    assert store.start(plan_id, 0, lease_s=10, owner="first").action is StartAction.RUN
    harness.advance(11)
    assert store.start(plan_id, 0, lease_s=10, owner="copy").action is StartAction.RUN


def test_hold_keeps_a_waiting_task_leased(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 3, window=3)
    run(store, plan_id, 2, res(2))
    assert store.start(plan_id, 1, lease_s=5, owner="waiter").action is StartAction.RUN
    store.hold(plan_id, 1, "waiter", 60)
    harness.advance(10)
    assert store.start(plan_id, 1, lease_s=5, owner="copy").action is StartAction.BUSY
    assert [index for index, _ in store.orphans(plan_id)] == [0]


# --- windows, successors, lost messages ---------------------------------------------------------


def test_each_finishing_task_hands_on_the_next_of_the_window(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 4, window=2)
    first = run(store, plan_id, 1, res(1))
    assert (first.next_index, first.next_task["id"]) == (2, "t2")
    second = run(store, plan_id, 0, res(0))
    assert (second.next_index, second.next_task["id"]) == (3, "t3")
    assert run(store, plan_id, 2, res(2)).next_index is None
    assert run(store, plan_id, 3, res(3)).ending == "completed"


def test_a_successor_that_never_started_is_handed_on_again(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 3, window=2)
    assert run(store, plan_id, 0, res(0)).next_index == 2
    # the worker died before sending task 2
    resend = store.successor_to_resend(plan_id, 0)
    assert resend is not None and (resend[0], resend[1]["id"]) == (2, "t2")
    assert store.start(plan_id, 2, owner="w").action is StartAction.RUN
    assert store.successor_to_resend(plan_id, 0) is None
    assert store.successor_to_resend(plan_id, 1) is None  # handed on nothing


def test_orphans_are_the_tasks_a_later_one_passed_over(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 6, window=4)
    run(store, plan_id, 0, res(0))  # hands on task 4
    assert store.start(plan_id, 2, lease_s=30, owner="w2").action is StartAction.RUN
    # task 2 started although task 1 was sent before it: 1's message was lost;
    # 3 and 4 were sent after the last task that started and may still be queued
    assert [index for index, _ in store.orphans(plan_id)] == [1]
    harness.advance(31)  # every lease ran out: nothing of the run is in flight
    assert [index for index, _ in store.orphans(plan_id)] == [1, 2, 3, 4]


def test_an_ended_run_has_no_orphans(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 3, window=3)
    assert store.end(plan_id, PlanState.CANCELLED) == "cancelled"
    assert store.orphans(plan_id) == []


# --- ending ----------------------------------------------------------------------------------


def test_end_cancels_once_and_the_rest_is_filled_in(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 3, window=3)
    run(store, plan_id, 1, res(1))
    assert not store.wait(plan_id, 0)
    assert store.end(plan_id, PlanState.CANCELLED) == "cancelled"
    assert store.end(plan_id, PlanState.TIMEOUT) == "cancelled"  # the first ending stands
    assert store.end("no-such-run", PlanState.TIMEOUT) is None
    assert store.wait(plan_id, 1)
    assert store.is_cancelled(plan_id)
    assert store.start(plan_id, 0, owner="late").action is StartAction.CANCELLED
    store.fill_missing(plan_id, TaskStatus.CANCELLED, "plan cancelled")
    results = store.results(plan_id, 3)
    assert [r.status if r else None for r in results] == [
        TaskStatus.CANCELLED,
        TaskStatus.SUCCESS,
        TaskStatus.CANCELLED,
    ]
    assert results[0] is not None and results[0].metadata["planId"] == plan_id


def test_outcomes_after_the_end_are_recorded_but_decide_nothing(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 2, window=2)
    assert run(store, plan_id, 0, res(0, TaskStatus.FAILURE)).ending == "failed"
    late = store.finish(plan_id, 1, res(1), ran=False)
    assert (late.recorded, late.ending, late.next_index) == (True, None, None)
    assert store.record(plan_id).state == "failed"  # type: ignore[union-attr]


def test_a_sequential_task_sees_the_one_before(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 2, Sequential())
    run(store, plan_id, 0, res(0, confidence=0.7))
    decision = store.start(plan_id, 1, previous_index=0, owner="w")
    assert decision.previous == res(0, confidence=0.7)


def test_replies_are_taken_once_and_children_remembered(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 1)
    store.add_reply(plan_id, "celery-1")
    store.add_reply(plan_id, "celery-2")
    record, replies = store.take_replies(plan_id)
    assert replies == ["celery-1", "celery-2"]
    assert record is not None and record.total == 1  # read with them
    assert store.take_replies(plan_id)[1] == []
    assert store.take_replies("no-such-run") == (None, [])
    store.add_child(plan_id, f"{plan_id}/t0")
    assert store.children(plan_id) == [f"{plan_id}/t0"]


def test_the_ended_view_holds_every_outcome_only_once_all_are_recorded(
    harness: Harness,
) -> None:
    store = harness.store
    plan_id = new_run(store, 2)
    run(store, plan_id, 0, res(0))
    record, outcomes = store.ended_view(plan_id)
    assert record is not None and record.done == 1 and outcomes is None
    run(store, plan_id, 1, res(1, TaskStatus.FAILURE))
    record, outcomes = store.ended_view(plan_id)
    assert record is not None and record.all_done
    assert outcomes == [res(0), res(1, TaskStatus.FAILURE)]
    assert store.ended_view("no-such-run") == (None, None)


@pytest.mark.parametrize("count", [1, READ_WITH_WAIT_MAX + 1])  # read with the wait, or after
def test_a_wait_reads_the_ended_run_with_its_outcomes(harness: Harness, count: int) -> None:
    store = harness.store
    plan_id = new_run(store, count)
    record, outcomes = store.wait_view(plan_id, 0.01, total=count)
    assert record is not None and not record.ended and outcomes is None
    for index in range(count):
        run(store, plan_id, index, res(index))
    record, outcomes = store.wait_view(plan_id, 1.0, total=count)
    assert record is not None and record.state == "completed"
    assert outcomes == [res(i) for i in range(count)]


def test_an_end_says_when_nothing_is_left_to_settle(harness: Harness) -> None:
    store = harness.store
    assert run(store, new_run(store, 1), 0, res(0)).quiet_end
    owed = new_run(store, 1)
    store.add_reply(owed, "celery-1")  # an execute_plan caller waits for the results
    decision = run(store, owed, 0, res(0))
    assert decision.ending == "completed" and not decision.quiet_end
    cut = new_run(store, 2)  # `all` ends at the first failure: task 1 is still to fill in
    decision = run(store, cut, 0, res(0, TaskStatus.FAILURE))
    assert decision.ending == "failed" and not decision.quiet_end
    child = f"run-{uuid.uuid4().hex[:8]}"  # a nested run resumes its parent
    plan_layout = PlanLayout(All(), Mode.CHAIN, (0,), 1)
    assert store.create(child, tasks(1), plan_layout, START + 60, extra_meta={PARENT: "{}"})
    decision = run(store, child, 0, res(0))
    assert decision.ending == "completed" and not decision.quiet_end


def test_a_race_records_its_winner(harness: Harness) -> None:
    store = harness.store
    plan_id = new_run(store, 3, Race(), window=3)
    run(store, plan_id, 2, res(2, TaskStatus.FAILURE))
    assert run(store, plan_id, 1, res(1)).ending == "completed"
    assert store.record(plan_id).winner == 1  # type: ignore[union-attr]


# --- every rule, every small run: the store decides as the rule does ---------------------------

RULES = [All(), AllSettled(), Race(), Weighted(), Sequential(), Sequential(True)]
OUTCOMES = [(TaskStatus.SUCCESS, 0.9), (TaskStatus.SUCCESS, 0.5), (TaskStatus.FAILURE, None)]


def expected_endings(rule: Rule, outcomes: tuple[tuple[TaskStatus, float | None], ...]) -> list:
    """Each outcome's ending by :meth:`Rule.ends`, until the first one that ends the run."""
    endings: list[str | None] = []
    any_ok = False
    for done, (status, confidence) in enumerate(outcomes, start=1):
        ok = status is TaskStatus.SUCCESS
        any_ok = any_ok or ok
        ending = rule.ends(Progress(ok, confidence, done, len(outcomes), any_ok))
        endings.append(ending)
        if ending:
            break
    return endings


@pytest.mark.parametrize("rule", RULES, ids=repr)
def test_the_store_ends_runs_as_the_rule_says(harness: Harness, rule: Rule) -> None:
    store = harness.store
    for outcomes in itertools.product(OUTCOMES, repeat=3):
        plan_id = new_run(store, 3, rule, window=3)
        endings = []
        for index, (status, confidence) in enumerate(outcomes):
            decision = run(store, plan_id, index, res(index, status, confidence))
            endings.append(decision.ending)
            if decision.ending:
                break
        assert endings == expected_endings(rule, outcomes), outcomes
        record = store.record(plan_id)
        assert record is not None
        assert record.state == (endings[-1] or "running")
