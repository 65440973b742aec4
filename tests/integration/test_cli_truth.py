"""``taskplane run`` against the test cluster: counts, streaming, and the cases that explain.

Final counts come from the recorded results; ``--stream`` prints each result
as it is recorded; a plan nobody consumes says no worker consumed the queue;
running a plan id again says so and names ``--id``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import redis
from typer.testing import CliRunner

from taskplane.cli import app
from tests.integration.conftest import Cluster

pytestmark = pytest.mark.integration


@pytest.fixture
def cli(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    for name, value in cluster.env.items():
        monkeypatch.setenv(name, value)
    return CliRunner()


def write_plan(tmp_path: Path, plan: dict[str, Any]) -> Path:
    path = tmp_path / f"{plan['id']}.json"
    path.write_text(json.dumps(plan))
    return path


def fn(task_id: str, target: str, **payload: Any) -> dict[str, Any]:
    return {"id": task_id, "type": "function", "target": target, "payload": payload}


def test_counts_are_those_of_the_recorded_results(cli: CliRunner, tmp_path: Path, uid: str) -> None:
    cached = {"metadata": {"cache": True}}
    tasks = [
        fn("f1", "fail"),
        fn("f2", "fail"),
        {**fn("c1", "score", value=f"{uid}-1", confidence=0.95), **cached},
        {**fn("c2", "score", value=f"{uid}-2", confidence=0.95), **cached},
    ]
    plan = write_plan(tmp_path, {"id": f"counts-{uid}", "strategy": "allSettled", "tasks": tasks})
    warm = cli.invoke(app, ["run", str(plan)])
    assert warm.exit_code == 0, warm.stderr
    assert "4/4 done · 2 succeeded · 2 failed · 0 cancelled · 0 cached" in warm.stderr
    hits = cli.invoke(app, ["run", str(plan), "--id", f"counts-again-{uid}"])
    assert hits.exit_code == 0, hits.stderr
    assert "4/4 done · 2 succeeded · 2 failed · 0 cancelled · 2 cached" in hits.stderr


def test_stream_prints_results_as_they_finish(cli: CliRunner, tmp_path: Path, uid: str) -> None:
    tasks = [fn("slow", "sleep", ms=700), fn("fast", "sleep", ms=10)]
    plan = write_plan(tmp_path, {"id": f"stream-{uid}", "tasks": tasks})
    as_lines = cli.invoke(app, ["run", str(plan), "--stream", "--json"])
    assert as_lines.exit_code == 0, as_lines.stderr
    streamed = [json.loads(line) for line in as_lines.stdout.strip().splitlines()]
    assert [r["taskId"] for r in streamed] == ["fast", "slow"]
    human = cli.invoke(app, ["run", str(plan), "--stream", "--id", f"stream-h-{uid}"])
    lines = human.stdout.strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["fast", "slow"]
    assert all("success" in line for line in lines)


def test_a_plan_nobody_consumes_says_so_and_a_rerun_names_id(
    cli: CliRunner,
    redis_client: redis.Redis,
    redis_url: str,
    tmp_path: Path,
    uid: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the test database as broker: no worker listens there, and it is flushed afterwards
    monkeypatch.setenv("TASKPLANE_BROKER_URL", redis_url)
    tasks = [fn("a", "noop")]
    plan = write_plan(tmp_path, {"id": f"lonely-{uid}", "timeout": 300, "tasks": tasks})
    first = cli.invoke(app, ["run", str(plan)])
    assert first.exit_code == 1
    assert "no worker consumed the 'taskplane' queue" in first.stderr
    assert "taskplane worker" in first.stderr
    again = cli.invoke(app, ["run", str(plan), "--json"])
    assert again.exit_code == 1
    assert f"plan lonely-{uid} already ran (timeout)" in again.stderr
    assert "--id" in again.stderr
    assert [r["status"] for r in json.loads(again.stdout)] == ["timeout"]
