"""Stall recovery end to end, without a broker: a waiter notices a run that stopped
moving, the store names the tasks whose messages were lost, and resending them
finishes the run — on the in-memory run store and an injected clock."""

from __future__ import annotations

from taskplane.completions import PlanWatch, StepKind
from taskplane.config import Settings
from taskplane.models import ExecutionResult, ExecutionTask, TaskStatus, TaskType
from taskplane.plan import All, MemoryRunStore, Mode, PlanLayout, RunStore, StartAction

LEASE_S = 35


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def stall_s() -> float:
    """The engine's stall time for default settings (visibility timeout and two sweeps)."""
    settings = Settings()
    return settings.effective_visibility_timeout_s + 2 * settings.redelivery_sweep_s + 5


def deliver(store: RunStore, plan_id: str, index: int) -> int | None:
    """A worker takes task *index*, runs it and records success; returns the successor sent."""
    assert store.start(plan_id, index, lease_s=LEASE_S, owner=f"m{index}").action is StartAction.RUN
    ok = ExecutionResult(task_id=f"t{index}", status=TaskStatus.SUCCESS)
    return store.finish(plan_id, index, ok, ran=True).next_index


def test_a_lost_message_is_found_after_the_stall_and_resending_it_ends_the_run() -> None:
    clock = Clock()
    store = MemoryRunStore(clock=clock)
    tasks = [ExecutionTask(id=f"t{i}", type=TaskType.AGENT, target="a") for i in range(4)]
    store.create("p", tasks, PlanLayout(All(), Mode.WINDOW, (0, 1, 2, 3), 2), clock.now + 3600)
    record = store.record("p")
    assert record is not None
    watch = PlanWatch(record, timeout_s=None, stall_s=stall_s(), clock=clock)

    # task 0 runs and hands on task 2, which runs and hands on task 3; task 1's
    # message is lost on the way (a broker restart), so 1 never starts
    assert deliver(store, "p", 0) == 2
    assert deliver(store, "p", 2) == 3
    assert deliver(store, "p", 3) is None
    assert watch.step(store.record("p")).recover is False

    clock.now += stall_s() / 2
    assert store.orphans("p") == [(1, tasks[1].to_json_dict())]  # passed over by later tasks
    step = watch.step(store.record("p"))
    assert (step.kind, step.recover) == (StepKind.BLOCK, False)  # progress came in meanwhile

    clock.now += stall_s() + 1
    step = watch.step(store.record("p"))
    assert (step.kind, step.recover) == (StepKind.BLOCK, True)
    [(index, task)] = store.orphans("p")
    assert index == 1 and task["id"] == "t1"

    deliver(store, "p", index)  # the waiter sent it again
    assert watch.step(store.record("p")).kind is StepKind.ENDED
    assert store.record("p").state == "completed"  # type: ignore[union-attr]


def test_queued_messages_behind_a_running_task_are_not_lost() -> None:
    clock = Clock()
    store = MemoryRunStore(clock=clock)
    tasks = [ExecutionTask(id=f"t{i}", type=TaskType.AGENT, target="a") for i in range(6)]
    store.create("p", tasks, PlanLayout(All(), Mode.WINDOW, tuple(range(6)), 4), clock.now + 3600)
    assert store.start("p", 0, lease_s=LEASE_S, owner="slow").action is StartAction.RUN
    # tasks 1-3 wait in the queue behind the slow task 0: nothing is lost
    clock.now += LEASE_S - 1
    assert store.orphans("p") == []
    # its worker died: after the lease, the broker's redelivery is what brings it back,
    # and with nothing in flight every unstarted message is taken for lost
    clock.now += 2
    assert [index for index, _ in store.orphans("p")] == [0, 1, 2, 3]
