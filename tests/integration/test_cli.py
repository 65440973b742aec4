"""The ``taskplane`` command against the test cluster: plans, agents, stats, errors.

Commands run in-process through typer's CliRunner with the cluster's
``TASKPLANE_*`` settings in the environment; the unreachable-Redis case runs
the real command in a subprocess to check what a user sees.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from taskplane import TaskStatus
from taskplane.cli import app
from taskplane.devtools.redis_server import free_port
from tests.agents import GrpcAgentServer, HttpAgentServer
from tests.integration.conftest import ROOT, Cluster
from tests.support import wait_until

pytestmark = pytest.mark.integration

PLANS = ROOT / "examples" / "plans"


@pytest.fixture
def cli(cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> CliRunner:
    """A runner whose commands see the cluster's settings."""
    for name, value in cluster.env.items():
        monkeypatch.setenv(name, value)
    return CliRunner()


def run_json(cli: CliRunner, *args: str) -> Any:
    result = cli.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_run_parallel_example_plan(cli: CliRunner, uid: str) -> None:
    results = run_json(cli, "run", str(PLANS / "parallel.json"), "--id", f"cli-par-{uid}")
    by_id = {r["taskId"]: r for r in results}
    assert [r["taskId"] for r in results] == ["sum", "scored", "nap", "echoed"]
    assert all(r["status"] == "success" for r in results), results
    assert by_id["sum"]["result"] == 5
    assert by_id["scored"]["confidence"] == 0.92


def test_run_sequential_example_plan_passes_previous(cli: CliRunner, uid: str) -> None:
    results = run_json(cli, "run", str(PLANS / "sequential.json"), "--id", f"cli-seq-{uid}")
    assert [r["status"] for r in results] == ["success"] * 3
    assert results[1]["result"]["previous"]["result"] == 42
    assert results[2]["result"] == "pipeline done"


def test_run_prints_a_table_without_json(cli: CliRunner, uid: str) -> None:
    result = cli.invoke(app, ["run", str(PLANS / "parallel.json"), "--id", f"cli-tab-{uid}"])
    assert result.exit_code == 0, result.stderr
    assert "sum" in result.stdout and "success" in result.stdout


def test_agents_example_plan_with_http_and_grpc_agents(cli: CliRunner, uid: str) -> None:
    with HttpAgentServer(confidence=0.9) as http_agent, GrpcAgentServer(confidence=0.8) as grpc:
        for args in (
            ["toy", http_agent.endpoint],
            ["toy-grpc", grpc.endpoint, "--protocol", "grpc"],
        ):
            assert cli.invoke(app, ["agents", "add", *args]).exit_code == 0
        try:
            results = run_json(cli, "run", str(PLANS / "agents.json"), "--id", f"cli-ag-{uid}")
        finally:
            cli.invoke(app, ["agents", "remove", "toy"])
            cli.invoke(app, ["agents", "remove", "toy-grpc"])
    assert [r["status"] for r in results] == ["success"] * 3, results
    assert [r["confidence"] for r in results[:2]] == [0.9, 0.8]
    assert [r["metadata"]["agentId"] for r in results[:2]] == ["toy", "toy-grpc"]
    assert http_agent.requests or results[0]["metadata"]["cached"]  # confident: cached on reruns


def test_bad_plan_file_names_the_field(cli: CliRunner, tmp_path: Path) -> None:
    plan = tmp_path / "bad.json"
    plan.write_text(
        json.dumps({"id": "bad", "tasks": [{"id": "a", "type": "bogus", "target": "x"}]})
    )
    result = cli.invoke(app, ["run", str(plan)])
    assert result.exit_code == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ")
    assert "tasks.0.type" in lines[0] and "bad.json" in lines[0]


def test_plan_file_that_is_not_json_is_one_line(cli: CliRunner, tmp_path: Path) -> None:
    plan = tmp_path / "broken.json"
    plan.write_text("{not json")
    result = cli.invoke(app, ["run", str(plan)])
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert "not valid JSON" in result.stderr


def test_agents_add_list_health_remove_round_trip(cli: CliRunner, uid: str) -> None:
    agent_id = f"cli-{uid}"
    with HttpAgentServer() as agent:
        added = cli.invoke(app, ["agents", "add", agent_id, agent.endpoint, "-c", "b", "-c", "a"])
        assert added.exit_code == 0, added.stderr
        assert f"registered agent {agent_id}" in added.stdout and "healthy" in added.stdout

        listed = {a["agentId"]: a for a in run_json(cli, "agents", "list")}
        assert listed[agent_id]["endpoint"] == agent.endpoint
        assert listed[agent_id]["capabilities"] == ["b", "a"]
        assert listed[agent_id]["healthy"] is True
        table = cli.invoke(app, ["agents", "list"])
        assert table.exit_code == 0 and agent_id in table.stdout and "http" in table.stdout

        health = cli.invoke(app, ["agents", "health", agent_id])
        assert health.exit_code == 0 and "healthy" in health.stdout
        agent.healthy = False
        sick = cli.invoke(app, ["agents", "health", agent_id])
        assert sick.exit_code == 1 and "unhealthy" in sick.stderr

    removed = cli.invoke(app, ["agents", "remove", agent_id])
    assert removed.exit_code == 0 and f"removed agent {agent_id}" in removed.stdout
    assert agent_id not in {a["agentId"] for a in run_json(cli, "agents", "list")}
    again = cli.invoke(app, ["agents", "remove", agent_id])
    assert again.exit_code == 1 and "no agent" in again.stderr


def test_agents_add_rejects_a_bad_protocol(cli: CliRunner, uid: str) -> None:
    result = cli.invoke(
        app, ["agents", "add", f"x-{uid}", "http://127.0.0.1:1", "--protocol", "ftp"]
    )
    assert result.exit_code == 1
    assert "protocol" in result.stderr and len(result.stderr.strip().splitlines()) == 1


def test_health_of_an_unknown_agent_fails(cli: CliRunner, uid: str) -> None:
    result = cli.invoke(app, ["agents", "health", f"ghost-{uid}"])
    assert result.exit_code == 1 and f"ghost-{uid}" in result.stderr


def test_stats_table_json_and_plot(
    cli: CliRunner, cluster: Cluster, uid: str, tmp_path: Path
) -> None:
    agent_id = f"st-{uid}"
    with HttpAgentServer(confidence=0.7) as agent:
        agent.usage = {"inputTokens": 100, "outputTokens": 20}  # 120 tokens a call
        cluster.engine.register_agent(agent_id, agent.endpoint)
        tasks = [
            {
                "id": f"s{i}",
                "type": "agent",
                "target": agent_id,
                "payload": {"i": i},
                "metadata": {"cache": False, "pattern": "p1" if i < 4 else "p2"},
            }
            for i in range(6)
        ]
        results = cluster.engine.execute_parallel({"id": f"st-{uid}", "tasks": tasks})
        assert all(r.status is TaskStatus.SUCCESS for r in results)
    tracker = cluster.engine.tracker
    assert wait_until(
        lambda: tracker.get_agent_stats(agent_id)["totalExecutions"] >= 6, timeout_s=10
    )

    table = cli.invoke(app, ["stats", agent_id])
    assert table.exit_code == 0, table.stderr
    assert "executions" in table.stdout and " 6 " in table.stdout
    assert "0.700" in table.stdout and "100.0%" in table.stdout
    assert "tokens used" in table.stdout and " 720 " in table.stdout

    summary = run_json(cli, "stats", agent_id, "--pattern", "p1", "--since", "1h")
    assert summary["totalExecutions"] == 4
    assert (summary["totalTokens"], summary["avgTokens"]) == (480, 120.0)

    png = tmp_path / "conf.png"
    plotted = cli.invoke(app, ["stats", agent_id, "--since", "30m", "--plot", str(png)])
    assert plotted.exit_code == 0, plotted.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_stats_rejects_a_bad_duration(cli: CliRunner) -> None:
    result = cli.invoke(app, ["stats", "a1", "--since", "soon"])
    assert result.exit_code == 1 and "--since" in result.stderr


def test_unreachable_redis_is_one_line_naming_the_url() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    env = {**os.environ, "TASKPLANE_REDIS_URL": url, "PYTHONPATH": str(ROOT)}
    env.pop("TASKPLANE_BROKER_URL", None)
    proc = subprocess.run(
        [sys.executable, "-m", "taskplane.cli", "agents", "list"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot reach Redis at " + url)
