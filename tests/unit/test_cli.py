"""The ``taskplane`` command says true things: each case through typer's CliRunner.

Commands run in-process against the test Redis (database 15, flushed around
each test) and a private SQLite tracking file; nothing here waits for a
worker (running plans is in ``tests/integration/test_cli_truth.py``).
"""

from __future__ import annotations

import importlib.util
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import typer
from typer.testing import CliRunner

from taskplane import ExecutionResult, Settings, TaskStatus
from taskplane.cli import app
from taskplane.cli_run import no_worker_hint, summary_line, tally
from taskplane.cli_support import PIPE_WIDTH, beat_schedule_path
from taskplane.engine import ExecutionEngine
from taskplane.errors import TransportError
from taskplane.events import EVENT_TYPES, RedisEventBus
from taskplane.keys import agent_window_key
from taskplane.models import ExecutionTask
from taskplane.plan import (
    AllSettled,
    Mode,
    PlanLayout,
    PlanState,
    RedisRunStore,
    RunRecord,
    RunStore,
)
from taskplane.proxy.limiter import RedisLimiterBackend, Window
from tests.support import cli_runner


@pytest.fixture
def cli(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[CliRunner]:
    for name in ("TASKPLANE_BROKER_URL", "TASKPLANE_KEY_PREFIX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TASKPLANE_REDIS_URL", redis_url)
    monkeypatch.setenv("TASKPLANE_DATABASE_URL", f"sqlite:///{tmp_path / 'tracking.db'}")
    yield cli_runner()


@pytest.fixture
def store(redis_client: redis.Redis) -> RunStore:
    return RedisRunStore(redis_client)


def record_run(store: RunStore, plan_id: str, *, ended: PlanState | None = None) -> None:
    tasks = [ExecutionTask(id="a", type="function", target="noop")]
    store.create(plan_id, tasks, PlanLayout(AllSettled(), Mode.WINDOW, (0,), 1), time.time() + 60)
    if ended is not None:
        store.end(plan_id, ended)


def envelope(task_id: str, status: TaskStatus, *, cached: bool = False) -> ExecutionResult:
    return ExecutionResult(task_id=task_id, status=status, metadata={"cached": cached})


# -- cancel -------------------------------------------------------------------


def test_cancel_of_an_unknown_plan_fails(cli: CliRunner) -> None:
    result = cli.invoke(app, ["cancel", "no-such-plan"])
    assert result.exit_code == 1
    assert "no plan no-such-plan" in result.stderr and "cancelled" not in result.stdout


def test_cancel_of_a_finished_plan_says_it_had_finished(cli: CliRunner, store: RunStore) -> None:
    record_run(store, "done-plan", ended=PlanState.COMPLETED)
    result = cli.invoke(app, ["cancel", "done-plan"])
    assert result.exit_code == 0
    assert "had already finished (completed)" in result.stdout
    assert store.meta("done-plan")["state"] == "completed"


def test_cancel_of_a_running_plan_cancels_it(cli: CliRunner, store: RunStore) -> None:
    record_run(store, "live-plan")
    result = cli.invoke(app, ["cancel", "live-plan"])
    assert result.exit_code == 0 and "cancelled plan live-plan" in result.stdout
    assert store.meta("live-plan")["state"] == "cancelled"
    assert store.results("live-plan", 1)[0].status is TaskStatus.CANCELLED  # type: ignore[union-attr]


# -- run ----------------------------------------------------------------------


def test_final_counts_come_from_the_results() -> None:
    results = [
        envelope("f1", TaskStatus.FAILURE),
        envelope("f2", TaskStatus.FAILURE),
        envelope("c1", TaskStatus.SUCCESS, cached=True),
        envelope("c2", TaskStatus.SUCCESS, cached=True),
        envelope("t", TaskStatus.TIMEOUT),
        envelope("x", TaskStatus.CANCELLED),
    ]
    line = summary_line("p", 6, tally(results))
    assert line == ("plan p: 6/6 done · 2 succeeded · 3 failed · 1 cancelled · 2 cached")


def test_no_worker_hint_only_when_nothing_started() -> None:
    def run(state: str, **more: str) -> RunRecord | None:
        fields = {"state": state, "rule": "all", "n": "1", "deadline": "1.0", **more}
        return RunRecord.parse("p", fields)

    assert no_worker_hint(run("timeout")) is not None
    assert no_worker_hint(run("timeout", **{"started:0": "1"})) is None
    assert no_worker_hint(run("failed")) is None
    assert no_worker_hint(None) is None


# -- stats, events ------------------------------------------------------------


def test_stats_of_an_agent_without_executions_fails(cli: CliRunner) -> None:
    result = cli.invoke(app, ["stats", "nosuch"])
    assert result.exit_code == 1
    assert "no executions recorded for agent nosuch in the last 24h" in result.stderr


def test_events_of_an_unknown_type_fail_naming_the_valid_ones(cli: CliRunner) -> None:
    result = cli.invoke(app, ["events", "--type", "nonsense"])
    assert result.exit_code == 1
    assert "nonsense" in result.stderr
    assert all(name in result.stderr for name in EVENT_TYPES)


def publish(redis_client: redis.Redis, count: int) -> None:
    bus = RedisEventBus(redis_client)
    for i in range(count):
        bus.publish("task:completed", {"taskId": f"t{i}", "planId": "p" * 90, "confidence": 0.5})


def test_events_json_lines(cli: CliRunner, redis_client: redis.Redis) -> None:
    publish(redis_client, 3)
    result = cli.invoke(app, ["events", "--json"])
    assert result.exit_code == 0, result.stderr
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["data"]["taskId"] for e in events] == ["t0", "t1", "t2"]


def test_events_are_not_wrapped_in_a_pipe(cli: CliRunner, redis_client: redis.Redis) -> None:
    publish(redis_client, 3)
    result = cli.invoke(app, ["events", "--type", "task:completed"])
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and all(len(line) > 100 for line in lines)
    assert PIPE_WIDTH > 1000


# -- agents -------------------------------------------------------------------


def test_agents_list_shows_breaker_limiter_and_a_fresh_check(
    cli: CliRunner, redis_url: str, redis_client: redis.Redis
) -> None:
    with ExecutionEngine(Settings(redis_url=redis_url)) as engine:
        engine.register_agent("a1", "http://127.0.0.1:9", check_health=False)
    limiter = RedisLimiterBackend(redis_client)
    for _ in range(2):
        limiter.reserve(
            [Window(agent_window_key("a1"), 100, 60000)],
            member=uuid.uuid4().hex,
            later=uuid.uuid4().hex,
            now_ms=time.time() * 1000,
            horizon_ms=0,
        )
    listed = json.loads(cli.invoke(app, ["agents", "list", "--json"]).stdout)
    assert listed[0]["breaker"] == "closed"
    assert listed[0]["rateLimit"] == {"used": 2, "limit": 100, "windowMs": 60000}
    assert listed[0]["healthy"] is None and listed[0]["healthAt"] == "registration"
    checked = json.loads(cli.invoke(app, ["agents", "list", "--json", "--check"]).stdout)
    assert checked[0]["healthy"] is False and checked[0]["healthAt"] == "now"
    table = cli.invoke(app, ["agents", "list"]).stdout
    assert "closed" in table and "2/100 per 60s" in table

    made = cli.invoke(app, ["agents", "quota", "team", "--rpm", "50", "--tpm", "9000"])
    assert made.exit_code == 0 and "quota team: 50 calls and 9000 tokens per 60s" in made.stdout
    added = cli.invoke(
        app,
        [
            "agents",
            "add",
            "a2",
            "http://127.0.0.1:9",
            "--rpm",
            "500",
            "--quota",
            "team",
            "--max-in-flight",
            "20",
            "--tpm",
            "200000",
        ],
    )
    assert added.exit_code == 0, added.stdout
    rows = {
        row["agentId"]: row
        for row in json.loads(cli.invoke(app, ["agents", "list", "--json"]).stdout)
    }
    policy = rows["a2"]["policy"]
    assert (policy["maxRequests"], policy["windowMs"], policy["quota"]) == (500, 60000, "team")
    assert rows["a2"]["rateLimit"] == {"used": 0, "limit": 500, "windowMs": 60000}
    assert rows["a2"]["tokenLimit"] == {"used": 0, "limit": 200000, "windowMs": 60000}
    assert rows["a2"]["quotaUsage"] == {
        "quota": "team",
        "requests": {"used": 0, "limit": 50, "windowMs": 60000},
        "tokens": {"used": 0, "limit": 9000, "windowMs": 60000},
    }
    assert rows["a2"]["inFlight"] == {"held": 0, "limit": 20}
    shown = cli.invoke(app, ["agents", "list"]).stdout
    assert "tokens 0/200000 per 60s" in shown and "in flight 0/20" in shown
    assert "quota team 0/50 per 60s, 0/9000 per 60s tokens" in shown
    unknown = cli.invoke(app, ["agents", "add", "a3", "http://127.0.0.1:9", "--quota", "ghost"])
    assert unknown.exit_code != 0 and "policy.quota" in unknown.stderr
    cli.invoke(app, ["agents", "remove", "a2"])

    with ExecutionEngine(Settings(redis_url=redis_url)) as engine:  # five failures: open
        for _ in range(5):
            engine.proxy.breaker.record(
                engine.proxy.breaker.before_call("a1"), TransportError("down")
            )
    opened = json.loads(cli.invoke(app, ["agents", "list", "--json"]).stdout)
    assert opened[0]["breaker"] == "open"


# -- help, beat -----------------------------------------------------------------


def commands(group: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every leaf command under *group* (typer's own click or click itself)."""
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from commands(command, f"{prefix}{name} ")
        else:
            yield f"{prefix}{name}", command


def test_the_command_tree_is_walked() -> None:
    names = {name for name, _ in commands(typer.main.get_command(app))}
    assert {"run", "cancel", "agents list", "agents add", "cache stats", "beat"} <= names


@pytest.mark.parametrize(
    ("name", "command"),
    list(commands(typer.main.get_command(app))),
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_every_option_has_help_and_flags_show_no_value(name: str, command: Any) -> None:
    for param in command.params:
        assert getattr(param, "help", None), f"{name}: {param.name} has no help"
    page = cli_runner().invoke(app, [*name.split(), "--help"]).stdout
    assert "<bool>" not in page, name


def test_beat_schedule_defaults_under_the_user_cache(tmp_path: Path) -> None:
    path = beat_schedule_path(Settings(), environ={"XDG_CACHE_HOME": str(tmp_path / "c")})
    assert path == tmp_path / "c" / "taskplane" / "celerybeat-schedule"
    assert path.parent.is_dir()


def test_beat_schedule_setting_wins_and_its_directory_is_made(tmp_path: Path) -> None:
    wanted = tmp_path / "deep" / "er" / "beat"
    path = beat_schedule_path(Settings(beat_schedule=str(wanted)), environ={})
    assert path == wanted and wanted.parent.is_dir()


def test_flower_beyond_localhost_needs_a_password_even_if_the_variable_is_empty(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compose passes FLOWER_BASIC_AUTH="" when it is unset: Flower must refuse, saying why."""
    monkeypatch.setenv("FLOWER_BASIC_AUTH", "")
    result = cli.invoke(app, ["flower", "--address", "0.0.0.0"])
    assert result.exit_code == 1
    assert "FLOWER_BASIC_AUTH" in result.stderr and "0.0.0.0" in result.stderr


def test_flower_without_the_extra_says_how_to_install_it(
    cli: CliRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "flower" else real(name, *a)
    )
    result = cli.invoke(app, ["flower"])
    assert result.exit_code == 1 and "pip install 'taskplane[flower]'" in result.stderr
