"""The reliability suite: real Redis servers, real workers, faults on purpose.

It runs only when ``TASKPLANE_RELIABILITY=1`` (``make reliability``); a
plain ``make test`` does not collect it (see ``tests/conftest.py``).
``TASKPLANE_RELIABILITY_SHORT=1`` runs a smaller load and fewer generated
inputs, for CI.

Every scenario starts its own private ``redis-server`` processes (append-only
file on, random ports, state under ``.run/reliability``) and its own worker
processes, so it never touches a shared Redis and can restart or measure its
server freely. Each test records what it measured in
``.run/reliability/figures.json``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.reliability.redisproc import PrivateRedis
from tests.reliability.support import FIGURES, RUN_DIR, Cluster, running_cluster

HERE = Path(__file__).resolve().parent
ENABLED = os.environ.get("TASKPLANE_RELIABILITY") == "1"
SHORT = os.environ.get("TASKPLANE_RELIABILITY_SHORT") == "1"

#: Breaker reset timeout of the main cluster's workers, so half-open comes quickly (ms).
BREAKER_RESET_MS = 1500


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="reliability suite: set TASKPLANE_RELIABILITY=1")
    for item in items:
        if HERE in Path(str(item.path)).resolve().parents:
            item.add_marker(pytest.mark.reliability)
            if not ENABLED:
                item.add_marker(skip)


def pytest_sessionstart(session: pytest.Session) -> None:
    if ENABLED:
        FIGURES.unlink(missing_ok=True)


def fresh_dir(name: str) -> Path:
    """An empty state directory for one private Redis."""
    path = RUN_DIR / name
    shutil.rmtree(path, ignore_errors=True)
    return path


@pytest.fixture(scope="session")
def main_redis() -> Iterator[PrivateRedis]:
    with PrivateRedis(fresh_dir("redis-main")) as server:
        yield server


@pytest.fixture(scope="session")
def cluster(main_redis: PrivateRedis) -> Iterator[Cluster]:
    """Two workers and an engine on the main private Redis; breakers reset after 1.5 s."""
    with running_cluster(
        main_redis,
        workers=2,
        name="main",
        TASKPLANE_CIRCUIT_BREAKER__RESET_TIMEOUT=str(BREAKER_RESET_MS),
    ) as running:
        yield running


@pytest.fixture
def uid() -> str:
    return uuid.uuid4().hex[:10]
