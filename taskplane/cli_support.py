"""Helpers of the ``taskplane`` command: one-line errors, backend checks, tables, parsing."""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import redis
import typer
from rich.console import Console
from rich.table import Table
from typer.core import TyperGroup

from taskplane.config import Settings, load_settings
from taskplane.errors import BackendError, ConfigurationError, TaskplaneError, ValidationError
from taskplane.models import ExecutionResult, redact_credentials

if TYPE_CHECKING:
    from taskplane.engine import ExecutionEngine

#: File name of Celery beat's schedule in its directory.
BEAT_SCHEDULE_FILE = "celerybeat-schedule"
#: How far back ``taskplane stats`` looks unless told otherwise.
DEFAULT_STATS_SINCE = "24h"
#: Seconds per unit of a duration such as ``30m`` or ``7d``.
DURATION_UNITS_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")

#: Line width when output goes to a pipe or a file: wide enough that nothing is wrapped.
PIPE_WIDTH = 100_000


def make_console(*, stderr: bool = False) -> Console:
    """A console that wraps to a terminal's width, and never wraps in a pipe or file."""
    probe = Console(stderr=stderr)
    if probe.is_terminal:
        return probe
    return Console(stderr=stderr, width=PIPE_WIDTH, soft_wrap=True)


console = make_console()
err = make_console(stderr=True)


def fail(message: str) -> NoReturn:
    """Print *message* as one ``error:`` line on stderr and exit 1."""
    err.print(f"error: {message}", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(1)


def redact(url: str) -> str:
    """*url* with any password replaced by ``***`` (safe to print)."""
    return redact_credentials(url)


class TaskplaneGroup(TyperGroup):
    """The command group: turns taskplane and Redis errors into one line and exit code 1."""

    def invoke(self, ctx: Any) -> Any:  # typer's own click Context
        try:
            return super().invoke(ctx)
        except TaskplaneError as exc:
            fail(str(exc))
        except redis.RedisError as exc:
            url = redact(configured_redis_url())
            fail(f"cannot reach Redis at {url} (TASKPLANE_REDIS_URL): {exc}")


def configured_redis_url() -> str:
    try:
        return load_settings().redis_url
    except TaskplaneError:
        return "?"


def check_backends(settings: Settings, *, broker: bool = False) -> None:
    """Ping Redis (and, with *broker*, a separate broker) once, naming the URL if one is down.

    Raises:
        BackendError: Redis or the broker does not answer.
    """
    from taskplane.redisio import redis_client

    client = redis_client(settings.redis_url, fast=True)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise BackendError(
            f"cannot reach Redis at {redact(settings.redis_url)} (TASKPLANE_REDIS_URL): {exc}"
        ) from exc
    finally:
        client.close()
    if broker and settings.broker_url and settings.broker_url != settings.redis_url:
        from kombu import Connection

        try:
            with Connection(settings.broker_url, connect_timeout=2) as conn:
                conn.ensure_connection(max_retries=1)
        except Exception as exc:  # kombu raises each transport's own errors
            raise BackendError(
                f"cannot reach the broker at {redact(settings.broker_url)} "
                f"(TASKPLANE_BROKER_URL): {exc}"
            ) from exc


@contextmanager
def engine_session(
    *, needs_redis: bool = True, needs_broker: bool = False
) -> Iterator[ExecutionEngine]:
    """An engine from the environment, closed afterwards; backends checked first when needed."""
    from taskplane.engine import ExecutionEngine

    settings = load_settings()
    if needs_redis:
        check_backends(settings, broker=needs_broker)
    engine = ExecutionEngine(settings)
    try:
        yield engine
    finally:
        engine.close()


def beat_schedule_path(settings: Settings, *, environ: Mapping[str, str]) -> Path:
    """Where ``taskplane beat`` keeps its schedule, its directory created.

    ``TASKPLANE_BEAT_SCHEDULE`` when set, else ``$XDG_CACHE_HOME/taskplane/``
    (``~/.cache/taskplane/``), else — when that cannot be created — a
    ``taskplane-beat`` directory in the system's temporary directory.

    Raises:
        ConfigurationError: The configured file's directory cannot be created.
    """
    if settings.beat_schedule:
        path = Path(settings.beat_schedule).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigurationError(
                f"TASKPLANE_BEAT_SCHEDULE: cannot create {path.parent}: {exc.strerror or exc}"
            ) from exc
        return path
    cache = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    for directory in (Path(cache) / "taskplane", Path(tempfile.gettempdir()) / "taskplane-beat"):
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        return directory / BEAT_SCHEDULE_FILE
    raise ConfigurationError(
        "no writable directory for the beat schedule: set TASKPLANE_BEAT_SCHEDULE"
    )


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``90s``, ``30m``, ``24h``, ``7d`` or ``2w`` (bare = s).

    Raises:
        ValidationError: *text* is not such a duration.
    """
    match = _DURATION.match(text)
    if not match or float(match.group(1)) <= 0:
        raise ValidationError(
            f"--since: expected a positive duration such as 30m, 24h or 7d, got {text!r}"
        )
    return float(match.group(1)) * DURATION_UNITS_S[match.group(2) or "s"]


def results_table(results: list[ExecutionResult]) -> Table:
    table = Table("task", "status", "confidence", "ms", "retries", "result / error")
    for r in results:
        shown = r.error if r.error else json.dumps(r.result, default=str)
        cached = " (cached)" if r.metadata.get("cached") else ""
        conf = "" if r.confidence is None else f"{r.confidence:.2f}"
        table.add_row(
            r.task_id,
            r.status.value + cached,
            conf,
            f"{r.execution_time:.0f}",
            str(r.retries),
            (shown or "")[:80],
        )
    return table


def read_plan_file(path: Path, *, plan_id: str | None = None) -> dict[str, Any]:
    """The plan object in a JSON file, with its id replaced by *plan_id* when given.

    Raises:
        ValidationError: The file cannot be read, is not JSON or not an object.
    """
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise ValidationError(f"cannot read plan file {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ValidationError(f"plan file {path} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValidationError(
            f"plan file {path}: expected a JSON object, got {type(data).__name__}"
        )
    if plan_id:
        data["id"] = plan_id
    return data


def stats_table(summary: dict[str, Any], *, since: str, pattern: str | None) -> Table:
    scope = f"last {since}" + (f", pattern {pattern}" if pattern else "")
    table = Table("metric", "value", title=f"{summary['agentId']} ({scope})", title_justify="left")
    total = summary["totalExecutions"]
    table.add_row("executions", str(total))
    if total:
        table.add_row("mean confidence", f"{summary['avgConfidence']:.3f}")
        table.add_row("success rate", f"{summary['successRate']:.1%}")
        table.add_row("mean execution time", f"{summary['avgExecutionTime']:.0f} ms")
        if summary.get("totalTokens"):
            table.add_row("tokens used", f"{summary['totalTokens']:,}")
            table.add_row("mean tokens per call", f"{summary['avgTokens']:.0f}")
        table.add_row("confidence trend", f"{summary['confidenceTrend']:+.4f} / h")
    return table
