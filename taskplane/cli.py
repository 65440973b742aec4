"""The ``taskplane`` command.

Settings come from ``TASKPLANE_*`` environment variables (see README).
Errors print one line (``error: …``) on stderr and exit 1: a bad plan file
names the field, an unreachable Redis names its URL.
"""

from __future__ import annotations

import json
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Column, Table

from taskplane.cli_support import (
    DEFAULT_STATS_SINCE,
    TaskplaneGroup,
    console,
    engine_session,
    err,
    fail,
    parse_duration,
    read_plan_file,
    results_table,
    stats_table,
)
from taskplane.config import load_settings
from taskplane.errors import PlanFailedError, TaskplaneError, ValidationError
from taskplane.models import ExecutionResult, parse_plan

if TYPE_CHECKING:
    pass


app = typer.Typer(
    cls=TaskplaneGroup,
    help="taskplane: a data plane for AI-agent work on Celery and Redis.",
    no_args_is_help=True,
)
agents_app = typer.Typer(help="Register, list, check and remove agents.", no_args_is_help=True)
cache_app = typer.Typer(help="Look at or clear the result cache.", no_args_is_help=True)
app.add_typer(agents_app, name="agents")
app.add_typer(cache_app, name="cache")


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
def flower(
    port: int = typer.Option(5555),
    address: str = typer.Option(
        "127.0.0.1", help="Interface to listen on (0.0.0.0 in a container)."
    ),
    basic_auth: str = typer.Option(
        None, envvar="FLOWER_BASIC_AUTH", help="user:password; required beyond localhost."
    ),
) -> None:
    """Start Flower against taskplane's app (every task, its arguments and its worker)."""
    from taskplane.celery_app import app as celery

    if address not in ("127.0.0.1", "localhost", "::1") and not basic_auth:
        raise ValidationError(
            f"--basic-auth (or FLOWER_BASIC_AUTH) is required when Flower listens on {address}"
        )
    argv = ["flower", f"--port={port}", f"--address={address}"]
    if basic_auth:
        argv.append(f"--basic-auth={basic_auth}")
    celery.start(argv)


@app.command()
def run(
    plan_file: Path,
    wait: bool = typer.Option(True, "--wait/--no-wait"),
    as_json: bool = typer.Option(False, "--json", help="Print results as JSON."),
    plan_id: str = typer.Option(
        None, "--id", help="Run under this plan id instead of the file's (an id names one run)."
    ),
) -> None:
    """Run a plan from a JSON file, with live progress.

    A plan id names one run: running a file whose id already ran returns that
    run's results; pass --id to run it again under a new id.
    """
    data = read_plan_file(plan_file, plan_id=plan_id)
    try:
        plan = parse_plan(data)
    except ValidationError as exc:
        raise ValidationError(f"{plan_file}: {exc}", exc.errors) from exc
    with engine_session(needs_broker=True) as engine:
        if not wait:
            handle = engine.submit(plan)
            console.print(f"submitted plan {handle.id} ({len(plan.tasks)} tasks)")
            return
        results, failure = _run_with_progress(engine, plan, quiet=as_json)
        if as_json:
            print(json.dumps([r.to_json_dict() for r in results], indent=2))
        else:
            console.print(results_table(results))
        if failure:
            fail(failure)


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
        TextColumn(
            "{task.completed}/{task.total} done · {task.fields[failed]} failed · "
            "{task.fields[cached]} cached"
        ),
        TimeElapsedColumn(),
        console=err,
        disable=quiet,
    )
    handle = engine.submit(plan)
    failure = ""
    with progress:
        bar = progress.add_task(f"plan {plan.id}", total=len(plan.tasks), failed=0, cached=0)
        while True:
            progress.update(
                bar, completed=counts["done"], failed=counts["failed"], cached=counts["cached"]
            )
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
    with engine_session() as engine:
        info = engine.store.status(plan_id)
        if not info:
            raise TaskplaneError(f"no plan {plan_id} (unknown or expired)")
        console.print_json(json.dumps(info))


@app.command()
def cancel(plan_id: str) -> None:
    """Cancel a running plan."""
    from taskplane.engine import PlanHandle

    with engine_session() as engine:
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

    with engine_session() as engine:
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
    with engine_session() as engine:
        console.print_json(json.dumps(engine.cache.stats()))


@cache_app.command("clear")
def cache_clear() -> None:
    """Remove every cached result."""
    with engine_session() as engine:
        engine.cache.clear()
        console.print("cache cleared")


@agents_app.command("add")
def agents_add(
    agent_id: str,
    endpoint: str,
    protocol: str = typer.Option("http", help="http, grpc, openai, a2a or mcp."),
    capability: Annotated[
        list[str] | None,
        typer.Option("--capability", "-c", help="What the agent can do (repeat for several)."),
    ] = None,
    model: str | None = typer.Option(None, help="openai: the model name."),
    api_key_env: str | None = typer.Option(
        None, help="openai: the environment variable the workers read the API key from."
    ),
    system: str | None = typer.Option(None, help="openai: a system prompt."),
    json_reply: bool = typer.Option(False, "--json-reply", help="openai: ask for a JSON object."),
    logprobs: bool = typer.Option(False, help="openai: ask for token log-probabilities."),
    stream: bool = typer.Option(False, help="openai: stream the reply."),
    tool: str | None = typer.Option(None, help="mcp: the tool to call."),
    policy: str | None = typer.Option(None, help="The whole policy as a JSON object."),
) -> None:
    """Register (or re-register) an agent for every worker; its health is checked first."""
    fields: dict[str, Any] = {}
    if policy:
        try:
            fields = json.loads(policy)
        except ValueError as exc:
            fail(f"--policy is not JSON: {exc}")
    options = {"model": model, "apiKeyEnv": api_key_env, "system": system, "tool": tool}
    fields.update({key: value for key, value in options.items() if value is not None})
    if json_reply:
        fields["json"] = True
    if logprobs:
        fields["logprobs"] = True
    if stream:
        fields["stream"] = True
    with engine_session() as engine:
        info = engine.register_agent(
            agent_id, endpoint, protocol, capability or [], policy=fields or None
        )
    health = "healthy" if info.healthy else f"NOT healthy ({info.health_message})"
    console.print(
        f"registered agent {info.agent_id} at {info.endpoint} ({info.protocol}): {health}",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )


@agents_app.command("list")
def agents_list(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """Every registered agent, as a table."""
    with engine_session() as engine:
        agents = engine.list_agents()
    if as_json:
        print(json.dumps([a.to_json_dict() for a in agents], indent=2))
        return
    if not agents:
        console.print("no agents registered")
        return
    table = Table(
        Column("agent", no_wrap=True),
        "protocol",
        Column("endpoint", no_wrap=True),
        "capabilities",
        "policy",
        "health",
        "registered (UTC)",
    )
    for a in agents:
        health = {True: "healthy", False: "unhealthy", None: "unchecked"}[a.healthy]
        when = datetime.fromtimestamp(a.registered_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        policy = ", ".join(f"{k}={v}" for k, v in a.policy.to_json_dict().items())
        table.add_row(
            a.agent_id, a.protocol, a.endpoint, ", ".join(a.capabilities), policy, health, when
        )
    console.print(table)


@agents_app.command("remove")
def agents_remove(agent_id: str) -> None:
    """Unregister an agent (its tasks then fail with "not found")."""
    with engine_session() as engine:
        removed = engine.unregister_agent(agent_id)
    if not removed:
        fail(f"no agent {agent_id} is registered")
    console.print(f"removed agent {agent_id}", markup=False, highlight=False)


@agents_app.command("health")
def agents_health(
    agent_id: str,
    timeout_s: float = typer.Option(2.0, "--timeout", help="Seconds to wait for the agent."),
) -> None:
    """Ask a registered agent for its health now; exit 1 unless it is healthy."""
    with engine_session() as engine:
        report = engine.proxy.health(agent_id, timeout_s=timeout_s)
    line = f"agent {agent_id}: {report.status}" + (f" ({report.message})" if report.message else "")
    if not report.healthy:
        fail(line)
    console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def stats(
    agent_id: str,
    pattern: str = typer.Option(None, "--pattern", "-p", help="Only this pattern's executions."),
    since: str = typer.Option(DEFAULT_STATS_SINCE, help="How far back: 90s, 30m, 24h, 7d."),
    plot: Annotated[
        Path | None, typer.Option("--plot", help="Also draw confidence over time to a PNG.")
    ] = None,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Executions, mean confidence, success rate, mean time and trend of an agent."""
    since_s = parse_duration(since)
    with engine_session(needs_redis=False) as engine:
        now = time.time()
        summary = engine.tracker.get_agent_stats(
            agent_id, time_range=(now - since_s, now), pattern_name=pattern
        )
        written = None
        if plot is not None:
            from taskplane.tracking.plot import plot_history

            written = plot_history(engine.tracker, agent_id, plot, since_s=since_s)
    if as_json:
        print(json.dumps(summary, indent=2))
    else:
        console.print(stats_table(summary, since=since, pattern=pattern))
    if written is not None:
        err.print(f"wrote {written}", markup=False, highlight=False)


@app.command()
def demo() -> None:
    """Run the whole data plane on this machine: Redis, workers, agents, plans."""
    from taskplane.demo import run_demo

    run_demo(console if console.is_terminal else Console(width=140))


def main() -> None:
    """Entry point of the ``taskplane`` command."""
    try:
        app()
    except TaskplaneError as exc:  # raised outside a command (e.g. by the demo's setup)
        err.print(f"error: {exc}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
