"""``taskplane worker-health`` against the test cluster and against nothing."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from taskplane.devtools.redis_server import free_port
from tests.integration.conftest import ROOT, Cluster

pytestmark = pytest.mark.integration


def health(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "taskplane.cli", "worker-health", "--timeout", "3", *args],
        env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def test_a_running_worker_is_healthy(cluster: Cluster) -> None:
    node = f"{cluster.workers[0].name}@{socket.gethostname()}"
    proc = health(cluster.env, "--node", node)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "healthy"


def test_an_unknown_worker_is_not(cluster: Cluster) -> None:
    proc = health(cluster.env, "--node", "nobody@nowhere")
    assert proc.returncode == 1
    assert "worker nobody@nowhere did not answer" in proc.stderr


def test_unreachable_redis_and_broker_fail_in_one_line() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    proc = health({"TASKPLANE_REDIS_URL": url, "TASKPLANE_BROKER_URL": ""})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: cannot reach Redis at ")
    assert "cannot reach the broker" in lines[0] and "hunter2" not in lines[0]
