"""Plan budgets: the reservation rule, its in-memory twin, and the runner's use of it.

A fake clock and no sleep: a task that must wait for a budget comes back as a
:class:`Reschedule`, the way a worker would reschedule it.
"""

from __future__ import annotations

from typing import Any

import pytest

from taskplane.budget import (
    DEFAULT_BUDGET_ESTIMATE,
    BudgetGate,
    BudgetOwners,
    Hold,
    InMemoryBudgetBackend,
    admit,
    budget_meta,
    exhausted_error,
)
from taskplane.contract import BudgetRefusal, Outcome, RunContext
from taskplane.errors import RateLimitedError, TransportError, ValidationError
from taskplane.models import PlanBudget, TaskStatus, TaskType, parse_plan
from taskplane.runner import Reschedule, TaskRunner
from tests.unit.test_runner import FakeClock, Scripted, make_task


def used(tokens: int) -> Outcome:
    return Outcome(
        result="ok", metadata={"usage": {"inputTokens": tokens - 100, "outputTokens": 100}}
    )


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event_type: str, data: dict[str, Any]) -> None:
        self.seen.append((event_type, data))

    def of(self, event_type: str) -> list[dict[str, Any]]:
        return [data for name, data in self.seen if name == event_type]


def gate(
    tokens: int | None = None, calls: int | None = None
) -> tuple[BudgetGate, InMemoryBudgetBackend, Events]:
    backend = InMemoryBudgetBackend()
    backend.create("p1", PlanBudget(tokens=tokens, calls=calls))
    events = Events()
    return BudgetGate(backend, "p1", "p1", events), backend, events


# -- validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("budget", "field"),
    [
        ({"tokens": 0}, "budget.tokens"),
        ({"tokens": -5}, "budget.tokens"),
        ({"tokens": 1.5}, "budget.tokens"),
        ({"tokens": "100"}, "budget.tokens"),
        ({"calls": True}, "budget.calls"),
        ({"calls": 10**13}, "budget.calls"),
        ({"dollars": 3}, "budget.dollars"),
    ],
)
def test_a_budget_that_is_not_positive_integers_is_refused_naming_the_field(
    budget: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        parse_plan({"id": "p", "tasks": [], "budget": budget})
    assert field in str(caught.value)
    assert caught.value.errors[0]["field"] == field


def test_a_plan_carries_its_budget_in_both_kinds() -> None:
    plan = parse_plan({"id": "p", "tasks": [], "budget": {"tokens": 500, "calls": 3}})
    assert plan.budget == PlanBudget(tokens=500, calls=3)
    plan = parse_plan({"id": "p", "tasks": [], "continueOnError": True, "budget": {"calls": 2}})
    assert plan.kind == "sequential" and plan.budget == PlanBudget(calls=2)
    assert budget_meta("p", PlanBudget(calls=2)) == {"budgetCalls": "2", "budget": "p"}
    assert budget_meta("p", PlanBudget()) == {}


def test_the_error_of_a_spent_budget_is_read_from_its_run() -> None:
    meta = {"budgetCalls": "5", "usedCalls": "5", "budgetOut": "calls"}
    assert exhausted_error(meta) == "plan budget exhausted: calls 5 of 5"
    assert exhausted_error({"budgetTokens": "10", "usedTokens": "3"}) is None


# -- the rule ------------------------------------------------------------------------------


def test_admit_runs_waits_or_refuses() -> None:
    assert admit(None, 10**9, 0, 5) == ("run", 0)
    assert admit(1000, 0, 0, 300) == ("run", 300)
    assert admit(1000, 900, 0, 300) == ("run", 100)  # the last room, however small
    assert admit(1000, 600, 300, 300) == ("wait", 0)  # calls in flight may settle lower
    assert admit(1000, 400, 300, 300) == ("run", 300)
    assert admit(1000, 1000, 0, 300) == ("exhausted", 0)
    assert admit(1000, 1200, 0, 300) == ("exhausted", 0)


def test_tokens_settle_to_the_usage_reported() -> None:
    budget, _, _ = gate(tokens=1000)
    task = make_task(estimatedTokens=600)
    first = budget.reserve(task)
    assert first == Hold(600, 0)
    assert budget.reserve(task) == BudgetRefusal(wait=True)  # 600 held, no room for 600 more
    budget.settle(first, tokens=300, called=True)
    second = budget.reserve(task)
    assert second == Hold(600, 0)
    budget.settle(second, tokens=300, called=True)
    assert budget.reserve(task) == Hold(400, 0)  # what is left


def test_a_call_without_an_estimate_reserves_the_default() -> None:
    budget, _, _ = gate(tokens=10 * DEFAULT_BUDGET_ESTIMATE)
    assert budget.reserve(make_task()) == Hold(DEFAULT_BUDGET_ESTIMATE, 0)


def test_a_call_reporting_no_usage_is_charged_its_estimate() -> None:
    budget, _, _ = gate(tokens=1000)
    hold = budget.reserve(make_task(estimatedTokens=1000))
    assert isinstance(hold, Hold)
    budget.settle(hold, tokens=None, called=True)
    refusal = budget.reserve(make_task())
    assert refusal == BudgetRefusal(False, "plan budget exhausted: tokens 1000 of 1000")


def test_a_call_never_made_gives_its_reservation_back() -> None:
    budget, _, _ = gate(calls=1)
    hold = budget.reserve(make_task())
    assert hold == Hold(0, 1)
    budget.settle(hold, tokens=None, called=False)
    assert budget.reserve(make_task()) == Hold(0, 1)


def test_events_fire_once_at_80_percent_and_when_spent() -> None:
    budget, _, events = gate(calls=5)
    for _ in range(4):
        hold = budget.reserve(make_task())
        assert isinstance(hold, Hold)
        budget.settle(hold, tokens=None, called=True)
    assert len(events.of("plan:budget-warning")) == 1
    assert events.of("plan:budget-warning")[0] == {
        "planId": "p1",
        "measure": "calls",
        "budget": {"tokens": None, "calls": 5},
        "used": {"tokens": 0, "calls": 4},
    }
    assert events.of("plan:budget-exhausted") == []
    hold = budget.reserve(make_task())
    assert isinstance(hold, Hold)
    budget.settle(hold, tokens=None, called=True)
    for _ in range(3):
        refusal = budget.reserve(make_task())
        assert refusal == BudgetRefusal(False, "plan budget exhausted: calls 5 of 5")
    assert len(events.of("plan:budget-warning")) == 1
    assert len(events.of("plan:budget-exhausted")) == 1


def test_the_first_refusal_announces_exhaustion_when_no_settling_did() -> None:
    budget, backend, events = gate(tokens=100)
    backend._states["p1"].used["tokens"] = 100
    assert isinstance(budget.reserve(make_task()), BudgetRefusal)
    assert isinstance(budget.reserve(make_task()), BudgetRefusal)
    assert len(events.of("plan:budget-exhausted")) == 1


def test_a_nested_run_names_itself_in_the_events() -> None:
    backend = InMemoryBudgetBackend()
    backend.create("root", PlanBudget(calls=1))
    events = Events()
    child = BudgetGate(backend, "root", "root/fan", events)
    hold = child.reserve(make_task())
    assert isinstance(hold, Hold)
    child.settle(hold, tokens=None, called=True)
    assert isinstance(
        BudgetGate(backend, "root", "root", events).reserve(make_task()), BudgetRefusal
    )
    exhausted = events.of("plan:budget-exhausted")
    assert exhausted == [
        {
            "planId": "root",
            "runId": "root/fan",
            "measure": "calls",
            "budget": {"tokens": None, "calls": 1},
            "used": {"tokens": 0, "calls": 1},
        }
    ]


# -- in the runner -------------------------------------------------------------------------


def budget_runner(clock: FakeClock, handler: Scripted) -> TaskRunner:
    return TaskRunner({TaskType.AGENT: handler}, clock=clock, sleep=clock.sleep)


def test_the_runner_cancels_a_task_once_the_budget_is_spent() -> None:
    clock = FakeClock()
    handler = Scripted(clock, used(300))
    budget, _, events = gate(tokens=600)
    ctx = RunContext(plan_id="p1", budget=budget)
    runner = budget_runner(clock, handler)
    results = [runner.step(make_task(task_id=f"t{i}", estimatedTokens=300), ctx) for i in range(4)]
    statuses = [r.status for r in results if not isinstance(r, Reschedule)]
    assert statuses == [
        TaskStatus.SUCCESS,
        TaskStatus.SUCCESS,
        TaskStatus.CANCELLED,
        TaskStatus.CANCELLED,
    ]
    last = results[-1]
    assert not isinstance(last, Reschedule)
    assert last.error == "plan budget exhausted: tokens 600 of 600"
    assert last.metadata["attempts"] == 0
    assert len(handler.calls) == 2
    assert len(events.of("plan:budget-exhausted")) == 1
    assert len(events.of("plan:budget-warning")) == 1


def test_the_runner_reschedules_a_task_waiting_for_reservations_in_flight() -> None:
    clock = FakeClock()
    handler = Scripted(clock, used(300))
    budget, _, _ = gate(tokens=1000)
    hold = budget.reserve(make_task(estimatedTokens=800))  # another call, still in flight
    ctx = RunContext(plan_id="p1", budget=budget, deadline=clock() + 30)
    runner = budget_runner(clock, handler)
    step = runner.step(make_task(estimatedTokens=300), ctx)
    assert isinstance(step, Reschedule) and step.reason == "budget"
    assert step.delay_s > 0 and handler.calls == [] and clock.sleeps == []
    assert isinstance(hold, Hold)
    budget.settle(hold, tokens=300, called=True)
    clock.now += step.delay_s
    done = runner.step(make_task(estimatedTokens=300), ctx, step.attempt)
    assert not isinstance(done, Reschedule) and done.status is TaskStatus.SUCCESS


def test_a_wait_past_the_deadline_times_out() -> None:
    clock = FakeClock()
    budget, _, _ = gate(tokens=1000)
    budget.reserve(make_task(estimatedTokens=900))
    ctx = RunContext(plan_id="p1", budget=budget, deadline=clock() + 0.1)
    step = budget_runner(clock, Scripted(clock, used(300))).step(make_task(), ctx)
    assert not isinstance(step, Reschedule) and step.status is TaskStatus.TIMEOUT
    assert "plan budget" in (step.error or "")


def test_a_failed_call_counts_a_call_and_a_rate_limited_one_does_not() -> None:
    clock = FakeClock()
    budget, backend, _ = gate(calls=10)
    ctx = RunContext(plan_id="p1", budget=budget)
    failing = budget_runner(clock, Scripted(clock, TransportError("down")))
    failing.retry.max_retries = 0
    failing.step(make_task(), ctx)
    limited = budget_runner(clock, Scripted(clock, RateLimitedError("wait", 1.0, reserved=True)))
    assert isinstance(limited.step(make_task(), ctx), Reschedule)
    state = backend._states["p1"]
    assert (state.used["calls"], state.held["calls"]) == (1, 0)


def test_only_agent_tasks_draw_from_the_budget() -> None:
    clock = FakeClock()
    budget, backend, _ = gate(calls=1)
    handler = Scripted(clock, Outcome(result=1))
    runner = TaskRunner({TaskType.FUNCTION: handler}, clock=clock, sleep=clock.sleep)
    ctx = RunContext(plan_id="p1", budget=budget)
    for i in range(3):
        result = runner.step(make_task(TaskType.FUNCTION, task_id=f"f{i}"), ctx)
        assert not isinstance(result, Reschedule) and result.ok
    assert backend._states["p1"].used["calls"] == 0


def test_a_runs_budget_holder_is_read_once_and_only_the_newest_runs_are_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import taskplane.budget as budget_module

    monkeypatch.setattr(budget_module, "OWNERS_KEPT", 2)
    reads: list[str] = []
    holders = {"nested": "root", "root": "root"}

    def read(run: str) -> str | None:
        reads.append(run)
        return holders.get(run)

    owners = BudgetOwners(read)
    assert [owners(run) for run in ("nested", "nested", "plain", "plain")] == [
        "root",
        "root",
        "",
        "",
    ]
    assert reads == ["nested", "plain"]
    owners("root")  # a third run: the oldest ("nested") is forgotten
    assert owners("nested") == "root"
    assert reads == ["nested", "plain", "root", "nested"]
