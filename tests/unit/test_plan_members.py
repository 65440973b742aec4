"""A plan's life on workers, without a broker: the member runner and the recorder over
the in-memory run store, with a dispatch that queues messages in a list."""

from __future__ import annotations

from collections import deque
from typing import Any

import pytest

from taskplane.config import RetryConfig
from taskplane.contract import CallContext, Outcome, RunContext
from taskplane.errors import UpstreamError
from taskplane.hooks import ExecutionHooks
from taskplane.models import (
    ExecutionPlan,
    ExecutionResult,
    ExecutionTask,
    ParallelExecutionPlan,
    TaskStatus,
    TaskType,
)
from taskplane.plan import MemoryRunStore, PlanState, layout
from taskplane.plan.members import MemberRunner
from taskplane.plan.recorder import PlanRecorder
from taskplane.runner import Reschedule, TaskRunner

START = 1_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


class ListDispatch:
    """Keeps the messages it is given; :meth:`drop_next` loses the next one."""

    def __init__(self) -> None:
        self.queue: deque[tuple[str, int, dict[str, Any]]] = deque()
        self.delivered: list[tuple[str, list[dict[str, Any]]]] = []
        self.sent = 0
        self._drop = 0

    def drop_next(self) -> None:
        self._drop += 1

    def enqueue(
        self, plan_id: str, index: int, task_json: dict[str, Any], deadline: float | None
    ) -> None:
        self.sent += 1
        if self._drop:
            self._drop -= 1
            return
        self.queue.append((plan_id, index, task_json))

    def deliver(self, celery_task_id: str, results: list[dict[str, Any]]) -> None:
        self.delivered.append((celery_task_id, results))

    def submit(self, plan: ExecutionPlan, deadline: float | None, extra: dict[str, str]) -> bool:
        raise AssertionError("no nested plans here")


class Finished(ExecutionHooks):
    def __init__(self) -> None:
        self.ids: list[str] = []

    def on_finished(self, task: ExecutionTask, ctx: RunContext, result: ExecutionResult) -> None:
        self.ids.append(task.id)


def answer(task: ExecutionTask, call: CallContext) -> Outcome:
    if task.payload.get("fail"):
        raise UpstreamError(f"{task.id} refused", status=400)
    return Outcome({"echo": task.id}, confidence=0.9)


class World:
    def __init__(self) -> None:
        self.clock = Clock()
        self.store = MemoryRunStore(clock=self.clock)
        self.dispatch = ListDispatch()
        self.finished = Finished()
        runner = TaskRunner(
            {TaskType.AGENT: answer},
            retry=RetryConfig(max_retries=0),
            clock=self.clock,
            hooks=self.finished,
        )
        self.recorder = PlanRecorder(self.store, self.dispatch, hooks=self.finished)
        self.members = MemberRunner(self.recorder, runner, clock=self.clock)

    def submit(self, count: int, *, window: int, failing: tuple[int, ...] = ()) -> str:
        tasks = [
            ExecutionTask(
                id=f"t{i}", type=TaskType.AGENT, target="a", payload={"fail": i in failing}
            )
            for i in range(count)
        ]
        plan = ParallelExecutionPlan(id="p", tasks=tasks, max_concurrency=window)
        plan_layout = layout(plan, default_max_concurrency=window)
        assert self.store.create(plan.id, plan.tasks, plan_layout, START + 60)
        for index in plan_layout.order[: plan_layout.window]:
            self.dispatch.enqueue(plan.id, index, tasks[index].to_json_dict(), START + 60)
        return plan.id

    def deliver_one(self, *, redelivered: bool = False) -> ExecutionResult | Reschedule | None:
        plan_id, index, task = self.dispatch.queue.popleft()
        return self.members.run_member(
            plan_id, index, task, deadline=START + 60, redelivered=redelivered, owner=f"m{index}"
        )

    def drain(self) -> None:
        while self.dispatch.queue:
            assert not isinstance(self.deliver_one(), Reschedule)


@pytest.fixture
def world() -> World:
    return World()


def test_a_window_plan_runs_to_completion_one_message_per_task(world: World) -> None:
    plan_id = world.submit(5, window=2)
    world.store.add_reply(plan_id, "celery-1")
    world.drain()
    record = world.store.record(plan_id)
    assert record is not None and record.state == PlanState.COMPLETED
    assert world.dispatch.sent == 5
    assert sorted(world.finished.ids) == ["t0", "t1", "t2", "t3", "t4"]  # once each
    [(celery_id, results)] = world.dispatch.delivered
    assert celery_id == "celery-1"
    assert [r["result"] for r in results] == [{"echo": f"t{i}"} for i in range(5)]
    report = world.recorder.collect(plan_id)
    assert report.ok and len(report.returned) == 5


def test_a_second_delivery_of_a_finished_task_runs_nothing(world: World) -> None:
    plan_id = world.submit(3, window=1)
    _, index, task = world.dispatch.queue[0]
    world.drain()
    assert world.members.run_member(plan_id, index, task, owner="again") is None
    assert world.finished.ids.count("t0") == 1
    assert not world.dispatch.queue


def test_a_message_sent_before_its_run_was_recorded_looks_again_later(world: World) -> None:
    task = ExecutionTask(id="t0", type=TaskType.AGENT, target="a").to_json_dict()
    step = world.members.run_member("early", 0, task, owner="m0", await_run=True)
    assert isinstance(step, Reschedule)
    assert (step.delay_s, step.reason, step.attempt.number) == (0.2, "run not recorded yet", 1)
    assert world.store.record("early") is None  # nothing was leased, run or recorded
    assert world.finished.ids == []
    # the same message without the mark (or out of looks) is dropped, as for a run gone
    assert world.members.run_member("early", 0, task, owner="m0") is None


def test_the_first_failure_ends_an_all_plan_and_cancels_the_rest(world: World) -> None:
    plan_id = world.submit(4, window=2, failing=(1,))
    world.drain()
    report = world.recorder.collect(plan_id)
    assert (report.state, report.ok) == ("failed", False)
    assert report.reason.startswith("task t1 ended failure")
    statuses = {r.task_id: r.status for r in report.results}
    assert statuses["t1"] is TaskStatus.FAILURE
    assert TaskStatus.CANCELLED in {statuses["t2"], statuses["t3"]}


def test_a_successor_lost_on_the_way_is_resent_by_the_rerun(world: World) -> None:
    plan_id = world.submit(3, window=1)
    _, index, task = world.dispatch.queue[0]
    world.dispatch.drop_next()  # the worker dies between recording t0 and sending t1
    world.deliver_one()
    assert not world.dispatch.queue
    # the broker hands t0 out again: its outcome stands, and the lost successor goes out
    assert world.members.run_member(plan_id, index, task, redelivered=True, owner="m0") is None
    assert [i for _, i, _ in world.dispatch.queue] == [1]
    world.drain()
    assert world.store.record(plan_id).state == "completed"  # type: ignore[union-attr]


def test_a_cancelled_run_records_its_waiting_tasks_as_cancelled(world: World) -> None:
    plan_id = world.submit(3, window=3)
    world.deliver_one()
    world.recorder.end(plan_id, PlanState.CANCELLED)
    # ending the run recorded its unfinished tasks: their late deliveries run nothing
    assert world.deliver_one() is None
    assert world.finished.ids == ["t0"]
    report = world.recorder.collect(plan_id)
    assert (report.ok, report.reason) == (False, "plan cancelled")
    assert [(r.status, r.error) for r in report.results] == [
        (TaskStatus.SUCCESS, None),
        (TaskStatus.CANCELLED, "plan cancelled"),
        (TaskStatus.CANCELLED, "plan cancelled"),
    ]


def test_lost_messages_are_recovered_by_the_waiting_side(world: World) -> None:
    plan_id = world.submit(4, window=2)
    world.dispatch.queue.popleft()  # t0's message is lost by the broker
    world.drain()  # t1 runs and hands on t2, t2 hands on t3
    assert world.store.record(plan_id).state == "running"  # type: ignore[union-attr]
    assert world.recorder.recover(plan_id, START + 60) == 1
    world.drain()
    assert world.store.record(plan_id).state == "completed"  # type: ignore[union-attr]
