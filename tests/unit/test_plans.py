"""Plan semantics without a broker: layout, weighted order and how each rule ends a plan."""

from __future__ import annotations

from typing import Any

import pytest

from taskplane.models import (
    ExecutionResult,
    ExecutionTask,
    ParallelExecutionPlan,
    SequentialExecutionPlan,
    Strategy,
    TaskStatus,
    TaskType,
)
from taskplane.plan import (
    AllSettled,
    Dispatched,
    Mode,
    PlanLayout,
    PlanState,
    Sequential,
    Weighted,
    layout,
    lost_messages,
    rule_named,
    weighted_order,
)
from taskplane.plan.rules import Progress


def task(task_id: str, priority: float = 0) -> ExecutionTask:
    return ExecutionTask(
        id=task_id, type=TaskType.AGENT, target="a1", metadata={"priority": priority}
    )


def tasks(count: int) -> list[ExecutionTask]:
    return [task(f"t{i}") for i in range(count)]


def res(task_id: str, status: TaskStatus = TaskStatus.SUCCESS, **extra: Any) -> ExecutionResult:
    error = None if status is TaskStatus.SUCCESS else f"{task_id} went {status.value}"
    return ExecutionResult(task_id=task_id, status=status, error=error, **extra)


def plan_outcome(
    rule: str,
    results: list[ExecutionResult | None],
    *,
    continue_on_error: bool = False,
    order: tuple[int, ...] = (),
    winner: int | None = None,
) -> tuple[bool, list[ExecutionResult], str]:
    """What the rule named *rule* makes of *results*, as ``(ok, returned, reason)``."""
    judged = rule_named(rule, continue_on_error=continue_on_error).returns(results, order, winner)
    return judged.ok, judged.returned, judged.reason


OK, FAIL, TIMEOUT, CANCELLED = (
    TaskStatus.SUCCESS,
    TaskStatus.FAILURE,
    TaskStatus.TIMEOUT,
    TaskStatus.CANCELLED,
)


# --- layout --------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", [Strategy.ALL, Strategy.ALL_SETTLED, Strategy.RACE])
def test_parallel_layout(strategy: Strategy) -> None:
    plan = ParallelExecutionPlan(id="p", tasks=tasks(5), strategy=strategy, max_concurrency=2)
    assert layout(plan, default_max_concurrency=10) == PlanLayout(
        rule_named(strategy.value), Mode.WINDOW, (0, 1, 2, 3, 4), 2
    )


def test_window_defaults_to_settings() -> None:
    plan = ParallelExecutionPlan(id="p", tasks=tasks(20))
    assert layout(plan, default_max_concurrency=7).window == 7


def test_window_never_exceeds_task_count() -> None:
    plan = ParallelExecutionPlan(id="p", tasks=tasks(3), max_concurrency=50)
    assert layout(plan, default_max_concurrency=10).window == 3


def test_empty_plan_window_is_one() -> None:
    plan = ParallelExecutionPlan(id="p", tasks=[])
    found = layout(plan, default_max_concurrency=10)
    assert (found.order, found.window) == ((), 1)


def test_weighted_layout_is_a_chain_by_priority() -> None:
    plan = ParallelExecutionPlan(
        id="p",
        tasks=[task("low", 1), task("high", 9), task("mid", 5)],
        strategy=Strategy.WEIGHTED,
        max_concurrency=5,
    )
    assert layout(plan, default_max_concurrency=10) == PlanLayout(
        Weighted(), Mode.CHAIN, (1, 2, 0), 1
    )


@pytest.mark.parametrize("continue_on_error", [False, True])
def test_sequential_layout(continue_on_error: bool) -> None:
    plan = SequentialExecutionPlan(id="p", tasks=tasks(3), continue_on_error=continue_on_error)
    assert layout(plan, default_max_concurrency=10) == PlanLayout(
        Sequential(continue_on_error=continue_on_error), Mode.CHAIN, (0, 1, 2), 1
    )


# --- weighted order ------------------------------------------------------------------------


def test_weighted_order_highest_first() -> None:
    assert weighted_order([task("a", 0.1), task("b", 0.9), task("c", 0.5)]) == (1, 2, 0)


def test_weighted_order_ties_keep_plan_order() -> None:
    ordered = weighted_order([task("a", 1), task("b", 2), task("c", 1), task("d", 2), task("e")])
    assert ordered == (1, 3, 0, 2, 4)


def test_weighted_order_negative_and_default_priorities() -> None:
    assert weighted_order([task("a", -1), task("b"), task("c", -0.5)]) == (1, 2, 0)


def test_weighted_order_empty() -> None:
    assert weighted_order([]) == ()


# --- all -----------------------------------------------------------------------------------


def test_all_succeeds_when_every_task_did() -> None:
    results: list[ExecutionResult | None] = [res("t0"), res("t1")]
    assert plan_outcome("all", list(results)) == (True, results, "")


def test_all_fails_naming_the_task() -> None:
    results: list[ExecutionResult | None] = [res("t0"), res("t1", FAIL), res("t2", CANCELLED)]
    ok, returned, reason = plan_outcome("all", list(results))
    assert not ok
    assert returned == results
    assert reason == "task t1 ended failure: t1 went failure"


def test_all_fails_on_timeout() -> None:
    ok, _, reason = plan_outcome("all", [res("t0", TIMEOUT), res("t1")])
    assert not ok
    assert reason.startswith("task t0 ended timeout")


def test_all_reason_names_the_failure_not_a_cancelled_sibling() -> None:
    # t2 failed first; t0 and t1 were cancelled because of it.
    results: list[ExecutionResult | None] = [
        res("t0", CANCELLED),
        res("t1", CANCELLED),
        res("t2", FAIL),
    ]
    ok, _, reason = plan_outcome("all", results)
    assert not ok
    assert reason.startswith("task t2 ended failure")


def test_all_with_unfinished_task() -> None:
    ok, returned, reason = plan_outcome("all", [res("t0"), None])
    assert not ok
    assert [r.task_id for r in returned] == ["t0"]
    assert reason == "plan ended before every task finished"


def test_all_empty() -> None:
    assert plan_outcome("all", []) == (True, [], "")


# --- allSettled ----------------------------------------------------------------------------


def test_all_settled_returns_everything_in_task_order() -> None:
    results: list[ExecutionResult | None] = [
        res("t0", FAIL),
        res("t1"),
        res("t2", TIMEOUT),
        res("t3", CANCELLED),
    ]
    assert plan_outcome("allSettled", list(results)) == (True, results, "")


def test_all_settled_skips_missing() -> None:
    ok, returned, _ = plan_outcome("allSettled", [None, res("t1", FAIL)])
    assert ok
    assert [r.task_id for r in returned] == ["t1"]


# --- race ----------------------------------------------------------------------------------


def test_race_recorded_winner_wins() -> None:
    results: list[ExecutionResult | None] = [res("t0"), res("t1"), res("t2", CANCELLED)]
    ok, returned, _ = plan_outcome("race", results, winner=1)
    assert ok
    assert returned == [results[1]]


def test_race_without_winner_takes_first_success() -> None:
    results: list[ExecutionResult | None] = [res("t0", FAIL), res("t1", CANCELLED), res("t2")]
    assert plan_outcome("race", results) == (True, [results[2]], "")


def test_race_failed_winner_falls_back_to_a_success() -> None:
    results: list[ExecutionResult | None] = [res("t0", FAIL), res("t1")]
    assert plan_outcome("race", results, winner=0)[1] == [results[1]]


def test_race_missing_winner_falls_back() -> None:
    results: list[ExecutionResult | None] = [None, res("t1")]
    assert plan_outcome("race", results, winner=0)[1] == [results[1]]


def test_race_all_failed() -> None:
    results: list[ExecutionResult | None] = [res("t0", FAIL), res("t1", TIMEOUT), None]
    ok, returned, reason = plan_outcome("race", results)
    assert not ok
    assert returned == results[:2]
    assert reason == "race: no task succeeded"


# --- weighted ------------------------------------------------------------------------------


def test_weighted_returns_what_ran_in_execution_order() -> None:
    # dispatch order 2, 0, 1; t2 was not confident enough, t0 was, so t1 never ran.
    results: list[ExecutionResult | None] = [
        res("t0", confidence=0.9),
        res("t1", CANCELLED),
        res("t2", confidence=0.5),
    ]
    ok, returned, reason = plan_outcome("weighted", results, order=(2, 0, 1))
    assert (ok, reason) == (True, "")
    assert [r.task_id for r in returned] == ["t2", "t0"]


def test_weighted_keeps_failures_that_ran() -> None:
    results: list[ExecutionResult | None] = [res("t0", FAIL), res("t1", confidence=0.95)]
    ok, returned, _ = plan_outcome("weighted", results, order=(0, 1))
    assert ok
    assert [r.status for r in returned] == [FAIL, OK]


def test_weighted_without_order_uses_task_order() -> None:
    results: list[ExecutionResult | None] = [res("t0", confidence=0.5), res("t1", confidence=0.6)]
    assert [r.task_id for r in plan_outcome("weighted", results)[1]] == ["t0", "t1"]


def test_weighted_nothing_succeeded() -> None:
    results: list[ExecutionResult | None] = [res("t0", FAIL), res("t1", TIMEOUT)]
    ok, returned, reason = plan_outcome("weighted", results, order=(1, 0))
    assert not ok
    assert returned == results  # failures come back in task order
    assert reason == "weighted: no task succeeded"


# --- sequential ----------------------------------------------------------------------------


def test_sequential_all_ok() -> None:
    results: list[ExecutionResult | None] = [res("t0"), res("t1")]
    assert plan_outcome("sequential", list(results)) == (True, results, "")


def test_sequential_stops_on_error() -> None:
    results: list[ExecutionResult | None] = [res("t0"), res("t1", FAIL), res("t2", CANCELLED)]
    ok, returned, reason = plan_outcome("sequential", list(results))
    assert not ok
    assert returned == results
    assert reason.startswith("task t1 ended failure")


def test_sequential_continue_on_error_succeeds_with_every_result() -> None:
    results: list[ExecutionResult | None] = [res("t0"), res("t1", FAIL), res("t2")]
    assert plan_outcome("sequential", list(results), continue_on_error=True) == (
        True,
        results,
        "",
    )


def test_continue_on_error_is_ignored_by_all() -> None:
    ok, _, _ = plan_outcome("all", [res("t0", FAIL)], continue_on_error=True)
    assert not ok


# --- when a rule ends a run ----------------------------------------------------------------


def step(
    ok: bool,
    done: int,
    total: int = 3,
    *,
    confidence: float | None = None,
    any_ok: bool | None = None,
) -> Progress:
    return Progress(ok, confidence, done, total, ok if any_ok is None else any_ok)


@pytest.mark.parametrize(
    ("rule", "progress", "ending"),
    [
        ("all", step(True, 1), None),
        ("all", step(True, 3), "completed"),
        ("all", step(False, 1), "failed"),
        ("allSettled", step(False, 1), None),
        ("allSettled", step(False, 3), "completed"),
        ("race", step(False, 2), None),
        ("race", step(True, 1), "completed"),
        ("race", step(False, 3), "failed"),
        ("weighted", step(True, 1, confidence=0.5), None),
        ("weighted", step(True, 1, confidence=0.8), "completed"),
        ("weighted", step(False, 1, confidence=0.9), None),
        ("weighted", step(False, 3, any_ok=True), "completed"),
        ("weighted", step(False, 3, any_ok=False), "failed"),
        ("sequential", step(False, 1), "failed"),
        ("sequential", step(True, 3), "completed"),
    ],
)
def test_when_each_rule_ends_a_run(rule: str, progress: Progress, ending: str | None) -> None:
    assert rule_named(rule).ends(progress) == ending


def test_sequential_with_continue_on_error_runs_past_a_failure() -> None:
    rule = Sequential(continue_on_error=True)
    assert rule.ends(step(False, 1)) is None
    assert rule.ends(step(False, 3)) == "completed"


def test_a_weighted_target_of_its_own() -> None:
    assert Weighted(target=0.95).ends(step(True, 1, confidence=0.9)) is None


def test_unknown_rule_names_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown plan rule 'best'.*allSettled"):
        rule_named("best")


# --- how an ending overrules a rule ----------------------------------------------------------


def test_a_cancelled_run_fails_whatever_its_rule() -> None:
    report = AllSettled().report(PlanState.CANCELLED, [res("t0"), None])
    assert (report.ok, report.reason) == (False, "plan cancelled")


def test_a_timed_out_run_fails_unless_all_settled() -> None:
    results: list[ExecutionResult | None] = [res("t0"), None]
    assert AllSettled().report(PlanState.TIMEOUT, results).ok
    judged = rule_named("sequential", continue_on_error=True).report(PlanState.TIMEOUT, results)
    assert (judged.ok, judged.reason) == (False, "plan deadline passed")
    reason = rule_named("all").report(PlanState.TIMEOUT, results).reason
    assert reason == "plan ended before every task finished"


# --- lost messages ---------------------------------------------------------------------------


def sent(marks: str) -> list[Dispatched]:
    """Dispatched tasks from marks in dispatch order: ``r`` outcome, ``L`` leased, ``.`` neither."""
    return [Dispatched(i, mark == "r", mark == "L") for i, mark in enumerate(marks)]


def test_messages_queued_behind_running_tasks_are_not_lost() -> None:
    # the capacity case: a worker has taken the first tasks, the rest wait in the queue
    assert lost_messages(sent("rrLLLL......")) == []


def test_a_task_passed_over_by_a_later_one_lost_its_message() -> None:
    assert lost_messages(sent("rr.LL.L...")) == [2, 5]
    assert lost_messages(sent("r.rL.")) == [1]
    assert lost_messages(sent("r.r..")) == [1, 3, 4]  # nothing running: all of them


def test_with_nothing_running_every_unfinished_task_is_lost() -> None:
    assert lost_messages(sent("rrr..")) == [3, 4]
    assert lost_messages(sent("....")) == [0, 1, 2, 3]
    assert lost_messages(sent("rrr")) == []
    assert lost_messages([]) == []
