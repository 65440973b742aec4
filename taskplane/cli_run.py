"""``taskplane run``: progress, streaming and a summary that come from the recorded results.

Progress follows the run's outcomes as they are recorded (``as_completed``),
not events, so the counts shown are the counts stored: a cache hit or a
failure is counted from its envelope. A plan id that already names a run is
said so, with how to run the file again (``--id``); a run that timed out
before any task started says that no worker consumes the queue.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from taskplane.cli_support import console, err
from taskplane.engine import ExecutionEngine
from taskplane.errors import PlanFailedError
from taskplane.models import ExecutionPlan, ExecutionResult, TaskStatus
from taskplane.plan import RunRecord
from taskplane.tasks.app import DEFAULT_QUEUE

#: Longest result or error text in one streamed line.
STREAM_TEXT_CHARS = 120


def tally(results: Iterable[ExecutionResult]) -> Counter[str]:
    """Counts by outcome: ``done``, ``succeeded``, ``failed`` (failure or timeout),
    ``cancelled`` and ``cached``."""
    counts: Counter[str] = Counter()
    for r in results:
        counts["done"] += 1
        if r.status is TaskStatus.SUCCESS:
            counts["succeeded"] += 1
        elif r.status is TaskStatus.CANCELLED:
            counts["cancelled"] += 1
        else:
            counts["failed"] += 1
        if r.metadata.get("cached"):
            counts["cached"] += 1
    return counts


def summary_line(plan_id: str, total: int, counts: Counter[str]) -> str:
    """``plan p: 4/4 done · 2 succeeded · 2 failed · 0 cancelled · 2 cached``."""
    return (
        f"plan {plan_id}: {counts['done']}/{total} done · {counts['succeeded']} succeeded · "
        f"{counts['failed']} failed · {counts['cancelled']} cancelled · {counts['cached']} cached"
    )


def stream_line(result: ExecutionResult) -> str:
    """One human line per finished task."""
    status = result.status.value + (" (cached)" if result.metadata.get("cached") else "")
    conf = "" if result.confidence is None else f" confidence={result.confidence:.2f}"
    shown = result.error if result.error else json.dumps(result.result, default=str)
    return (
        f"{result.task_id}: {status}{conf} {result.execution_time:.0f}ms "
        f"{(shown or '')[:STREAM_TEXT_CHARS]}"
    )


def earlier_run_note(record: RunRecord | None, plan_id: str) -> str | None:
    """What to tell a user whose plan id already names a run (None for a new id)."""
    if record is None:
        return None
    if record.ended:
        return (
            f"plan {plan_id} already ran ({record.state}); showing that run's results. "
            f"Pass --id NEW_ID to run the file again."
        )
    return f"plan {plan_id} is already running; following that run (--id NEW_ID runs another)"


def no_worker_hint(record: RunRecord | None) -> str | None:
    """For a run that timed out before any task started: nobody consumes the queue."""
    if record is None or record.state != "timeout" or record.any_started:
        return None
    return (
        f"no task of this plan ever started: no worker consumed the {DEFAULT_QUEUE!r} queue. "
        f"Start one with `taskplane worker` (same TASKPLANE_REDIS_URL / TASKPLANE_BROKER_URL)."
    )


def run_plan(
    engine: ExecutionEngine, plan: ExecutionPlan, *, quiet: bool, stream: bool, as_json: bool
) -> tuple[list[ExecutionResult], Counter[str], str]:
    """Submit *plan* and follow it to its end.

    Returns:
        What the plan returned (every envelope, in task order, when it
        failed), the counts over every recorded envelope, and why the plan
        failed ("" when it did not).
    """
    note = earlier_run_note(engine.store.record(plan.id), plan.id)
    if note:
        err.print(note, markup=False, highlight=False, soft_wrap=True)
    handle = engine.submit(plan)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn(
            "{task.completed}/{task.total} done · {task.fields[failed]} failed · "
            "{task.fields[cached]} cached"
        ),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
        transient=True,
    )
    counts: Counter[str] = Counter()
    with progress:
        bar = progress.add_task(f"plan {plan.id}", total=len(plan.tasks), failed=0, cached=0)
        for result in handle.as_completed():
            counts += tally([result])
            if stream:
                _print_streamed(result, as_json=as_json)
            progress.update(
                bar, completed=counts["done"], failed=counts["failed"], cached=counts["cached"]
            )
    failure = ""
    try:
        returned = handle.wait()
    except PlanFailedError as exc:
        returned, failure = list(exc.results), str(exc)
        hint = no_worker_hint(engine.store.record(plan.id))
        if hint:
            failure = f"{failure}; {hint}"
    recorded = [r for r in engine.store.results(plan.id, len(plan.tasks)) if r is not None]
    return returned, tally(recorded), failure


def _print_streamed(result: ExecutionResult, *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(result.to_json_dict()), flush=True)
    else:
        console.print(stream_line(result), markup=False, highlight=False, soft_wrap=True)


def results_json(results: list[ExecutionResult]) -> str:
    """Every envelope, camelCase, as one JSON array."""
    return json.dumps([r.to_json_dict() for r in results], indent=2)
