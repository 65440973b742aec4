"""The ``taskplane`` command.

Settings come from ``TASKPLANE_*`` environment variables (see README).
Errors print one line (``error: …``) on stderr and exit 1: a bad plan file
names the field, an unreachable Redis names its URL.
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from taskplane.cli_agents import agent_state, agents_table
from taskplane.cli_run import earlier_run_note, results_json, run_plan, summary_line
from taskplane.cli_support import (
    DEFAULT_STATS_SINCE,
    TaskplaneGroup,
    beat_schedule_path,
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
from taskplane.errors import ConfigurationError, TaskplaneError, ValidationError
from taskplane.events.names import EVENT_TYPES
from taskplane.models import parse_plan
from taskplane.plan import PlanState

#: Plain help (click's): flags show no value placeholder, options show theirs.
HELP_MODE = None

app = typer.Typer(
    cls=TaskplaneGroup,
    help="taskplane: a data plane for AI-agent work on Celery and Redis.",
    no_args_is_help=True,
    rich_markup_mode=HELP_MODE,
)
agents_app = typer.Typer(
    help="Register, list, check and remove agents.",
    no_args_is_help=True,
    rich_markup_mode=HELP_MODE,
)
cache_app = typer.Typer(
    help="Look at or clear the result cache.", no_args_is_help=True, rich_markup_mode=HELP_MODE
)
app.add_typer(agents_app, name="agents")
app.add_typer(cache_app, name="cache")


@app.command()
def worker(
    concurrency: int = typer.Option(
        None, help="Calls in flight in this process (default: TASKPLANE_WORKER_CONCURRENCY, 1000)."
    ),
    pool: str = typer.Option(
        None, help="gevent (default) or threads (default: TASKPLANE_WORKER_POOL)."
    ),
    loglevel: str = typer.Option("INFO", metavar="LEVEL", help="Celery log level."),
    name: str = typer.Option(None, help="Worker name (default: celery@host)."),
) -> None:
    """Start a worker: a gevent pool holding a thousand agent calls in flight by default."""
    from taskplane.tasks.pool import POOLS

    settings = load_settings()
    chosen = pool or settings.worker_pool
    if chosen not in POOLS:
        raise typer.BadParameter(f"--pool must be one of {', '.join(POOLS)}, not {chosen!r}")
    argv = [sys.executable, "-m", "celery", "-A", "taskplane.celery_app", "worker"]
    argv += ["-P", chosen, "-c", str(concurrency or settings.worker_concurrency)]
    argv += ["--loglevel", loglevel]
    if name:
        argv += ["-n", name]
    # Celery's own entry point: it patches the standard library for gevent before
    # anything else is imported, which no function called from here could still do
    os.execv(sys.executable, argv)


@app.command("worker-health")
def worker_health(
    node: str = typer.Option(
        None, help="Also ping this worker (e.g. celery@$HOSTNAME) through the broker."
    ),
    timeout: float = typer.Option(5.0, min=0.1, help="Seconds each check may take."),
) -> None:
    """Exit 0 when the worker's broker and Redis answer (and NODE pings back); else 1."""
    from taskplane.observability.health import worker_problems
    from taskplane.tasks.app import create_app

    settings = load_settings()
    problems = worker_problems(create_app(settings), settings, node=node, timeout_s=timeout)
    if problems:
        fail("; ".join(problems))
    console.print("healthy", markup=False, highlight=False)


@app.command()
def beat(
    loglevel: str = typer.Option("INFO", metavar="LEVEL", help="Celery log level."),
) -> None:
    """Start Celery beat: anomaly checks every checkIntervalMs, tracking pruning hourly.

    Run exactly one beat per deployment. Its schedule file is
    TASKPLANE_BEAT_SCHEDULE, else ~/.cache/taskplane/celerybeat-schedule.
    """
    from taskplane.celery_app import app as celery

    schedule = beat_schedule_path(load_settings(), environ=os.environ)
    err.print(f"beat schedule: {schedule}", markup=False, highlight=False, soft_wrap=True)
    celery.start(["beat", "--loglevel", loglevel, "-s", str(schedule)])


@app.command()
def flower(
    port: int = typer.Option(5555, help="Port to listen on."),
    address: str = typer.Option(
        "127.0.0.1", help="Interface to listen on (0.0.0.0 in a container)."
    ),
    basic_auth: str = typer.Option(
        None, envvar="FLOWER_BASIC_AUTH", help="user:password; required beyond localhost."
    ),
) -> None:
    """Start Flower against taskplane's app (every task, its arguments and its worker).

    Flower is an extra: pip install 'taskplane[flower]'.
    """
    from taskplane.celery_app import app as celery

    if address not in ("127.0.0.1", "localhost", "::1") and not basic_auth:
        raise ValidationError(
            f"--basic-auth (or FLOWER_BASIC_AUTH) is required when Flower listens on {address}"
        )
    if importlib.util.find_spec("flower") is None:
        raise ConfigurationError("Flower is not installed: pip install 'taskplane[flower]'")
    argv = ["flower", f"--port={port}", f"--address={address}"]
    if basic_auth:
        argv.append(f"--basic-auth={basic_auth}")
    celery.start(argv)


@app.command()
def run(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN.json", help="The plan, as JSON.")],
    wait: bool = typer.Option(
        True, "--wait/--no-wait", help="Wait for the results (--no-wait: submit and exit)."
    ),
    stream: bool = typer.Option(False, "--stream", help="Print each task's result as it finishes."),
    as_json: bool = typer.Option(
        False, "--json", help="Print results as JSON (JSON lines with --stream)."
    ),
    plan_id: str = typer.Option(
        None,
        "--id",
        metavar="ID",
        help="Run under this plan id instead of the file's (an id names one run).",
    ),
) -> None:
    """Run a plan from a JSON file, with live progress.

    A plan id names one run: running a file whose id already ran shows that
    run's results (and says so); pass --id to run it again under a new id.
    The final counts are those of the recorded results.
    """
    data = read_plan_file(plan_file, plan_id=plan_id)
    try:
        plan = parse_plan(data)
    except ValidationError as exc:
        raise ValidationError(f"{plan_file}: {exc}", exc.errors) from exc
    with engine_session(needs_broker=True) as engine:
        if not wait:
            note = earlier_run_note(engine.store.record(plan.id), plan.id)
            handle = engine.submit(plan)
            console.print(note or f"submitted plan {handle.id} ({len(plan.tasks)} tasks)")
            return
        results, counts, failure = run_plan(
            engine, plan, quiet=as_json or stream, stream=stream, as_json=as_json
        )
    if not stream:
        if as_json:
            print(results_json(results))
        else:
            console.print(results_table(results))
    err.print(summary_line(plan.id, len(plan.tasks), counts), markup=False, highlight=False)
    if failure:
        fail(failure)


@app.command()
def status(
    plan_id: str = typer.Argument(..., metavar="PLAN_ID", help="The run to look at."),
) -> None:
    """Show a plan run's state and task counts."""
    with engine_session() as engine:
        info = engine.store.status(plan_id)
        if not info:
            raise TaskplaneError(f"no plan {plan_id} (unknown or expired)")
        console.print_json(json.dumps(info))


@app.command()
def cancel(
    plan_id: str = typer.Argument(..., metavar="PLAN_ID", help="The run to cancel."),
) -> None:
    """Cancel a running plan: its unfinished tasks come back cancelled.

    Exits 1 when there is no such plan; says so when it had already finished.
    """
    with engine_session() as engine:
        before = engine.store.record(plan_id)
        if before is None:
            fail(f"no plan {plan_id} (unknown or expired)")
        if before.ended:
            console.print(
                f"plan {plan_id} had already finished ({before.state}); nothing to cancel",
                markup=False,
                highlight=False,
            )
            return
        engine.waiter.cancel(plan_id)
        after = engine.store.record(plan_id)
        state = after.state if after is not None else "expired"
    if state == PlanState.CANCELLED.value:
        console.print(f"cancelled plan {plan_id}", markup=False, highlight=False)
    else:
        console.print(
            f"plan {plan_id} finished ({state}) before the cancel reached it",
            markup=False,
            highlight=False,
        )


@app.command()
def events(
    follow: bool = typer.Option(
        False, "--follow", "-f", help="Keep printing new events until interrupted."
    ),
    event_type: str = typer.Option(
        None, "--type", "-t", metavar="TYPE", help=f"Only this type: {', '.join(EVENT_TYPES)}."
    ),
    count: int = typer.Option(50, help="How many recent events to show first."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """Print recent events; with --follow, keep printing new ones."""
    from taskplane.events import format_event

    if event_type is not None and event_type not in EVENT_TYPES:
        raise ValidationError(
            f"--type: unknown event type {event_type!r}; valid types: {', '.join(EVENT_TYPES)}"
        )

    def show(event: dict[str, Any]) -> None:
        if as_json:
            print(json.dumps(event, default=str), flush=True)
        else:
            console.print(format_event(event), markup=False, highlight=False, soft_wrap=True)

    with engine_session() as engine:
        shown = engine.events.recent(count, event_type)
        for event in shown:
            show(event)
        if not follow:
            return
        # go on right after the last one shown: nothing in between is missed or repeated
        engine.on(event_type or "*", show, since=shown[-1]["id"] if shown else None)
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
    agent_id: str = typer.Argument(..., metavar="ID", help="The id tasks name as target."),
    endpoint: str = typer.Argument(
        ...,
        metavar="ENDPOINT",
        help="http(s)://host:port for HTTP, host:port for gRPC, a base URL otherwise.",
    ),
    protocol: str = typer.Option(
        "http", metavar="PROTOCOL", help="http, grpc, openai, a2a or mcp."
    ),
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
    rpm: int | None = typer.Option(
        None, help="At most this many calls per minute to this agent (policy maxRequests)."
    ),
    tpm: int | None = typer.Option(
        None, help="At most this many tokens per minute to this agent (policy maxTokens)."
    ),
    quota: str | None = typer.Option(
        None, help="A registered quota this agent also draws from (see `agents quota`)."
    ),
    max_in_flight: int | None = typer.Option(
        None, help="At most this many calls in flight to this agent, cluster-wide."
    ),
    timeout: int | None = typer.Option(
        None, help="One call's timeout in ms, for tasks that set none (policy timeout)."
    ),
    max_retries: int | None = typer.Option(
        None, help="Retries for tasks that set none (policy maxRetries)."
    ),
    failure_threshold: int | None = typer.Option(
        None, help="Failures within the monitoring period that open its circuit."
    ),
    reset_timeout: int | None = typer.Option(
        None, help="How long its open circuit fails fast before a trial call, ms."
    ),
    policy: str | None = typer.Option(None, help="The whole policy as a JSON object."),
) -> None:
    """Register (or re-register) an agent for every worker; its health is checked first."""
    fields: dict[str, Any] = {}
    if policy:
        try:
            fields = json.loads(policy)
        except ValueError as exc:
            fail(f"--policy is not JSON: {exc}")
    options = {
        "model": model,
        "apiKeyEnv": api_key_env,
        "system": system,
        "tool": tool,
        "quota": quota,
        "maxInFlight": max_in_flight,
        "timeout": timeout,
        "maxRetries": max_retries,
        "failureThreshold": failure_threshold,
        "resetTimeout": reset_timeout,
    }
    fields.update({key: value for key, value in options.items() if value is not None})
    if rpm is not None:
        fields.update(maxRequests=rpm, windowMs=60000)
    if tpm is not None:
        fields.update(maxTokens=tpm, windowMs=60000)
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


@agents_app.command("quota")
def agents_quota(
    name: str = typer.Argument(..., metavar="NAME", help="The name agents' --quota gives."),
    rpm: int | None = typer.Option(
        None, help="At most this many calls per minute, over all its agents."
    ),
    tpm: int | None = typer.Option(
        None, help="At most this many tokens per minute, over all its agents."
    ),
) -> None:
    """Register (or change) a quota several agents share, cluster-wide (--rpm, --tpm or both)."""
    with engine_session() as engine:
        made = engine.register_quota(name, max_requests=rpm, max_tokens=tpm, window_ms=60000)
    limits = [f"{made.max_requests} calls"] if made.max_requests is not None else []
    limits += [f"{made.max_tokens} tokens"] if made.max_tokens is not None else []
    console.print(
        f"quota {made.name}: {' and '.join(limits)} per {made.window_ms / 1000:g}s",
        markup=False,
        highlight=False,
    )


@agents_app.command("list")
def agents_list(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    check: bool = typer.Option(False, "--check", help="Ask every agent for its health now."),
    timeout_s: float = typer.Option(
        2.0, "--timeout", metavar="SECONDS", help="How long each health check may take."
    ),
) -> None:
    """Every registered agent: breaker state, rate-limit usage, health.

    Health is what the check at registration found, unless --check asks now.
    """
    with engine_session() as engine:
        rows = [
            agent_state(engine, agent, check=check, timeout_s=timeout_s)
            for agent in engine.list_agents()
        ]
    if as_json:
        print(json.dumps(rows, indent=2))
    elif not rows:
        console.print("no agents registered")
    else:
        console.print(agents_table(rows))


@agents_app.command("remove")
def agents_remove(
    agent_id: str = typer.Argument(..., metavar="ID", help="The agent to unregister."),
) -> None:
    """Unregister an agent (its tasks then fail with "not found")."""
    with engine_session() as engine:
        removed = engine.unregister_agent(agent_id)
    if not removed:
        fail(f"no agent {agent_id} is registered")
    console.print(f"removed agent {agent_id}", markup=False, highlight=False)


@agents_app.command("health")
def agents_health(
    agent_id: str = typer.Argument(..., metavar="ID", help="The agent to ask."),
    timeout_s: float = typer.Option(
        2.0, "--timeout", metavar="SECONDS", help="Seconds to wait for the agent."
    ),
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
    agent_id: str = typer.Argument(..., metavar="AGENT", help="The agent's id."),
    pattern: str = typer.Option(
        None, "--pattern", "-p", metavar="PATTERN", help="Only this pattern's executions."
    ),
    since: str = typer.Option(
        DEFAULT_STATS_SINCE, metavar="DURATION", help="How far back: 90s, 30m, 24h, 7d."
    ),
    plot: Annotated[
        Path | None,
        typer.Option("--plot", metavar="FILE.png", help="Also draw confidence over time to a PNG."),
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
    if not summary["totalExecutions"]:
        scope = f" of pattern {pattern}" if pattern else ""
        fail(f"no executions{scope} recorded for agent {agent_id} in the last {since}")
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
