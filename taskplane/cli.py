"""The ``taskplane`` command.

Settings come from ``TASKPLANE_*`` environment variables (see README).
Errors print one line and exit non-zero.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from taskplane.config import load_settings
from taskplane.errors import PlanFailedError, TaskplaneError
from taskplane.models import ExecutionResult, parse_plan

app = typer.Typer(help="taskplane: a data plane for AI-agent work on Celery and Redis.")
agents_app = typer.Typer(help="Register, list and remove agents.")
cache_app = typer.Typer(help="Look at or clear the result cache.")
app.add_typer(agents_app, name="agents")
app.add_typer(cache_app, name="cache")

console = Console()
err = Console(stderr=True)


def _engine() -> Any:
    from taskplane.engine import ExecutionEngine

    return ExecutionEngine(load_settings())


def _results_table(results: list[ExecutionResult]) -> Table:
    table = Table("task", "status", "confidence", "ms", "retries", "result / error")
    for r in results:
        shown = r.error if r.error else json.dumps(r.result, default=str)
        cached = " (cached)" if r.metadata.get("cached") else ""
        conf = "" if r.confidence is None else f"{r.confidence:.2f}"
        table.add_row(
            r.task_id, r.status.value + cached, conf, f"{r.execution_time:.0f}", str(r.retries),
            (shown or "")[:80],
        )
    return table


@app.command()
def worker(
    concurrency: int = typer.Option(None, help="Threads (default: TASKPLANE_WORKER_CONCURRENCY)."),
    loglevel: str = typer.Option("INFO"),
    name: str = typer.Option(None, help="Worker name (default: celery@host)."),
) -> None:
    """Start a worker on a threads pool sized for I/O-bound agent calls."""
    from taskplane.celery_app import app as celery

    settings = load_settings()
    argv = ["worker", "-P", "threads", "-c", str(concurrency or settings.worker_concurrency)]
    argv += ["--loglevel", loglevel]
    if name:
        argv += ["-n", name]
    sys.path.insert(0, str(Path.cwd()))
    celery.worker_main(argv)


@app.command()
def beat(loglevel: str = typer.Option("INFO")) -> None:
    """Start Celery beat: anomaly checks every checkIntervalMs, tracking pruning hourly."""
    from taskplane.celery_app import app as celery

    celery.start(["beat", "--loglevel", loglevel, "-s", ".run/celerybeat-schedule"])


@app.command()
def flower(port: int = typer.Option(5555), basic_auth: str = typer.Option(None)) -> None:
    """Start Flower against taskplane's app (set --basic-auth user:pass beyond localhost)."""
    from taskplane.celery_app import app as celery

    argv = ["flower", f"--port={port}", "--address=127.0.0.1"]
    if basic_auth:
        argv.append(f"--basic-auth={basic_auth}")
    celery.start(argv)


@app.command()
def run(
    plan_file: Path,
    wait: bool = typer.Option(True, "--wait/--no-wait"),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
) -> None:
    """Run a plan from a JSON file, with live progress."""
    try:
        data = json.loads(plan_file.read_text())
    except (OSError, ValueError) as exc:
        raise TaskplaneError(f"cannot read plan {plan_file}: {exc}") from exc
    plan = parse_plan(data)
    with _engine() as engine:
        if not wait:
            handle = engine.submit(plan)
            console.print(f"submitted plan {handle.id} ({len(plan.tasks)} tasks)")
            return
        results, failure = _run_with_progress(engine, plan, quiet=as_json)
        if as_json:
            print(json.dumps([r.to_json_dict() for r in results], indent=2))
        else:
            console.print(_results_table(results))
        if failure:
            err.print(f"[red]{failure}[/red]")
            raise typer.Exit(1)


def _run_with_progress(engine: Any, plan: Any, *, quiet: bool) -> tuple[list[ExecutionResult], str]:
    counts = {"done": 0, "failed": 0, "cached": 0}

    def on_event(event: dict[str, Any]) -> None:
        if event["data"].get("planId") != plan.id:
            return
        kind = event["type"]
        if kind == "task:completed":
            counts["done"] += 1
        elif kind == "task:failed":
            counts["done"] += 1
            counts["failed"] += 1
        elif kind == "task:cache-hit":
            counts["cached"] += 1

    engine.on("*", on_event)
    progress = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} done · {task.fields[failed]} failed · "
                   "{task.fields[cached]} cached"),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
    )
    handle = engine.submit(plan)
    failure = ""
    with progress:
        bar = progress.add_task(f"plan {plan.id}", total=len(plan.tasks), failed=0, cached=0)
        while True:
            progress.update(bar, completed=counts["done"], failed=counts["failed"],
                            cached=counts["cached"])
            try:
                results = handle.wait(timeout=0.2)
                break
            except PlanFailedError as exc:
                results, failure = list(exc.results), str(exc)
                break
            except TimeoutError:
                continue
        progress.update(bar, completed=len(plan.tasks))
    return results, failure


@app.command()
def status(plan_id: str) -> None:
    """Show a plan run's state and task counts."""
    with _engine() as engine:
        info = engine.store.status(plan_id)
        if not info:
            raise TaskplaneError(f"no plan {plan_id} (unknown or expired)")
        console.print_json(json.dumps(info))


@app.command()
def cancel(plan_id: str) -> None:
    """Cancel a running plan."""
    from taskplane.engine import PlanHandle

    with _engine() as engine:
        PlanHandle(engine, plan_id).cancel()
        console.print(f"cancelled plan {plan_id}")


@app.command()
def events(
    follow: bool = typer.Option(False, "--follow", "-f"),
    event_type: str = typer.Option(None, "--type", "-t"),
    count: int = typer.Option(50, help="How many recent events to show first."),
) -> None:
    """Print recent events; with --follow, keep printing new ones."""
    from taskplane.events import format_event

    with _engine() as engine:
        for event in engine.events.recent(count, event_type):
            console.print(format_event(event), highlight=False)
        if not follow:
            return
        engine.on(event_type or "*", lambda e: console.print(format_event(e), highlight=False))
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


@cache_app.command("stats")
def cache_stats() -> None:
    """Entries, hits, misses, hit rate and evictions."""
    with _engine() as engine:
        console.print_json(json.dumps(engine.cache.stats()))


@cache_app.command("clear")
def cache_clear() -> None:
    """Remove every cached result."""
    with _engine() as engine:
        engine.cache.clear()
        console.print("cache cleared")


@app.command()
def demo() -> None:
    """Run the whole data plane on this machine: Redis, workers, agents, plans."""
    from taskplane.demo import run_demo

    run_demo(console)


def main() -> None:
    """Entry point: run the CLI, turning taskplane errors into one line and exit code 1."""
    import redis

    try:
        app()
    except TaskplaneError as exc:
        err.print(f"error: {exc}")
        sys.exit(1)
    except redis.ConnectionError as exc:
        err.print(f"error: cannot reach Redis ({load_settings().redis_url}): {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
