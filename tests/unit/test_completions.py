"""The waiting policy and the order-stream parsing shared by every waiter (no Redis, no sleep)."""

from __future__ import annotations

import pytest

from taskplane.completions import (
    RESTART_STALL_S,
    PlanWatch,
    StepKind,
    block_ms,
    order_entries,
    paired_results,
)
from taskplane.models import ExecutionResult, TaskStatus
from taskplane.plan import RunRecord


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def meta(
    state: str = "running", done: str = "0", deadline: float = 1010.0, **more: str
) -> RunRecord:
    fields = {"state": state, "done": done, "deadline": repr(deadline), "n": "3", "rule": "all"}
    record = RunRecord.parse("p", {**fields, **more})
    assert record is not None
    return record


def test_an_ended_run_stops_the_wait() -> None:
    watch = PlanWatch(meta(), timeout_s=None, stall_s=30, clock=Clock())
    assert watch.step(meta(state="failed")).kind is StepKind.ENDED


def test_blocks_until_the_deadline_or_the_callers_timeout() -> None:
    clock = Clock()
    assert PlanWatch(meta(), timeout_s=None, stall_s=30, clock=clock).step(meta()).block_s == 10
    watch = PlanWatch(meta(), timeout_s=2, stall_s=30, clock=clock)
    assert watch.step(meta()).block_s == 2
    clock.now += 2
    assert watch.step(meta()).kind is StepKind.GIVE_UP


def test_the_deadline_ends_the_run() -> None:
    clock = Clock()
    watch = PlanWatch(meta(), timeout_s=None, stall_s=30, clock=clock)
    clock.now = 1010.0
    assert watch.step(meta()).kind is StepKind.DEADLINE


def test_no_progress_for_longer_than_a_redelivery_asks_for_recovery_once() -> None:
    clock = Clock()
    watch = PlanWatch(meta(deadline=2000), timeout_s=None, stall_s=30, clock=clock)
    clock.now += 20
    assert not watch.step(meta(deadline=2000)).recover
    clock.now += 11
    assert watch.step(meta(deadline=2000)).recover
    assert not watch.step(meta(deadline=2000)).recover  # the stall clock restarted
    clock.now += 25
    assert not watch.step(meta(done="1", deadline=2000)).recover  # progress resets it too
    clock.now += 25
    assert not watch.step(meta(done="1", deadline=2000)).recover


def test_a_quiet_run_asks_now_and_then_whether_redis_restarted_under_it() -> None:
    clock = Clock()
    created = meta(created=repr(clock.now - 1))
    watch = PlanWatch(created, timeout_s=None, stall_s=30, clock=clock)
    watch.step(created)
    assert not watch.wants_server_start()  # the wait just began
    clock.now += RESTART_STALL_S
    assert watch.wants_server_start()
    assert not watch.restarted(started_at=clock.now - 3600)  # up since before the run
    # started just before the run: uptime's whole seconds make it look a little later
    assert not watch.restarted(started_at=created.created + 0.9)
    assert not watch.wants_server_start()  # asked just now
    watch.step(meta(done="1", created=repr(created.created)))  # progress, then quiet again
    clock.now += RESTART_STALL_S
    assert watch.wants_server_start()
    restart = clock.now - 2.4
    assert watch.restarted(started_at=restart)  # started after the run: resend lost messages
    clock.now += RESTART_STALL_S
    assert watch.wants_server_start()
    # the same start (uptime is whole seconds) is not news twice
    assert not watch.restarted(started_at=restart + 0.9)
    clock.now += RESTART_STALL_S
    assert watch.restarted(started_at=clock.now - 1)  # a second restart is


def test_a_run_making_progress_still_asks_whether_redis_restarted_under_it() -> None:
    # a lost message of a wide window leaves the rest running: the run keeps moving
    clock = Clock()
    watch = PlanWatch(meta(created=repr(clock.now - 1)), timeout_s=None, stall_s=30, clock=clock)
    for done in range(1, 5):
        clock.now += RESTART_STALL_S / 2
        watch.step(meta(done=str(done)))
    assert watch.wants_server_start()
    assert watch.restarted(started_at=clock.now - 3)
    assert not watch.wants_server_start()


@pytest.mark.parametrize(("seconds", "ms"), [(0.0001, 1), (0.25, 250), (60, 5000)])
def test_block_ms_is_positive_and_sliced(seconds: float, ms: int) -> None:
    assert block_ms(seconds) == ms


def test_order_entries_keep_the_recording_order() -> None:
    reply = [["k:order", [("1-0", {"i": "2"}), ("1-1", {"i": "0"})]]]
    assert order_entries(reply, "0") == ("1-1", [2, 0])
    assert order_entries(None, "1-1") == ("1-1", [])


def test_paired_results_skip_missing_outcomes() -> None:
    result = ExecutionResult(task_id="a", status=TaskStatus.SUCCESS)
    pairs = paired_results([3, 4], [result.model_dump_json(by_alias=True), None])
    assert [(i, r.task_id) for i, r in pairs] == [(3, "a")]
