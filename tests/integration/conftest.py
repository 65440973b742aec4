"""A real cluster for integration tests: Redis, two worker processes, an engine.

The broker and taskplane's state use two other databases of the test Redis
(13 and 14 beside the default test database 15), so tests that flush the
test database never disturb the workers. Plan ids
are unique per test, so nothing needs flushing here.

With ``TASKPLANE_TEST_REDIS_CLUSTER=1`` (``make test-cluster``) the cluster's
state lives on a Redis Cluster of three masters this session starts (on
``TASKPLANE_TEST_CLUSTER_PORTS``, else free ports) and stops, and RabbitMQ is
its broker, on a queue of this session's own; the test functions' counters
stay in the test Redis (``Cluster.state_url``). Tests marked ``single_redis``
are skipped there.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from taskplane import ExecutionEngine, Settings
from taskplane.config import DEFAULT_QUEUE
from taskplane.devtools import redis_cluster, redis_server
from taskplane.devtools.cluster import WorkerProcess, start_worker, wait_ready
from tests.support import rabbitmq_url, require_rabbitmq

ROOT = Path(__file__).resolve().parents[2]
LOG_DIR = ROOT / ".run" / "test-workers"
TRACKING_DB = ROOT / ".run" / f"test-tracking-{uuid.uuid4().hex[:8]}.db"
#: The variable the workers read the test API key from, and its value (fresh per session,
#: so tests can scan Redis, events, logs and results for it).
TEST_API_KEY_ENV = "TASKPLANE_TEST_OPENAI_KEY"
TEST_API_KEY = f"sk-test-{uuid.uuid4().hex}"


CLUSTER_DIR = ROOT / ".run" / "test-redis-cluster"
ON_REDIS_CLUSTER = os.environ.get("TASKPLANE_TEST_REDIS_CLUSTER") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not ON_REDIS_CLUSTER:
        return
    skip = pytest.mark.skip(
        reason="needs one Redis (TASKPLANE_TEST_REDIS_CLUSTER=1 runs a cluster)"
    )
    for item in items:
        if item.get_closest_marker("single_redis"):
            item.add_marker(skip)


def drop_queue(engine: ExecutionEngine) -> None:
    """Delete the engine's own broker queue (a session's, on a RabbitMQ others may share)."""
    with engine.app.connection_for_write() as conn:
        conn.default_channel.queue_delete(engine.settings.queue)


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """A Redis Cluster of three masters, started for this session and stopped after it."""
    ports = [int(p) for p in os.environ.get("TASKPLANE_TEST_CLUSTER_PORTS", "").split(",") if p]
    url = redis_cluster.start(CLUSTER_DIR, ports or None)
    try:
        yield url
    finally:
        redis_cluster.stop(CLUSTER_DIR)


@dataclass
class Cluster:
    """What the integration tests talk to."""

    env: dict[str, str]
    settings: Settings
    engine: ExecutionEngine
    workers: list[WorkerProcess]
    state_url: str

    def start_worker(self, **overrides: str) -> WorkerProcess:
        """One more worker with the cluster's settings (plus *overrides*)."""
        env = {**self.env, **overrides}
        worker = start_worker(env, concurrency=8, log_dir=LOG_DIR, root=ROOT)
        wait_ready([worker], self.engine.app.control.ping)
        self.workers.append(worker)
        return worker


def cluster_dbs(redis_url: str) -> tuple[int, int]:
    """Broker and state databases: ``TASKPLANE_TEST_CLUSTER_DBS=broker,state`` if set, else
    derived from the test database, so suites can run side by side."""
    explicit = os.environ.get("TASKPLANE_TEST_CLUSTER_DBS")
    if explicit:
        broker, state = (int(part) for part in explicit.split(","))
        return broker, state
    test_db = int(urlsplit(redis_url).path.strip("/") or 0)
    if test_db == 15:
        return 13, 14
    return (test_db + 4) % 16, (test_db + 8) % 16


def cluster_env(redis_url: str) -> dict[str, str]:
    broker_db, state_db = cluster_dbs(redis_url)
    return {
        "TASKPLANE_REDIS_URL": redis_server.with_db(redis_url, state_db),
        "TASKPLANE_BROKER_URL": redis_server.with_db(redis_url, broker_db),
        "TASKPLANE_FUNCTION_MODULES": "examples.functions,tests.functions",
        "TASKPLANE_RETRY_CONFIG__INITIAL_DELAY": "50",
        "TASKPLANE_DATABASE_URL": f"sqlite:///{TRACKING_DB}",
        "TASKPLANE_VISIBILITY_TIMEOUT_S": "20",
        "TASKPLANE_REDELIVERY_SWEEP_S": "1",
        "TASKPLANE_DEFAULT_TIMEOUT": "5000",
        "TASKPLANE_PATTERNS_DIR": str(ROOT / "tests" / "patterns"),
        TEST_API_KEY_ENV: TEST_API_KEY,
    }


@pytest.fixture(scope="session")
def cluster(redis_url: str, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    env = cluster_env(redis_url)
    counters = env["TASKPLANE_REDIS_URL"]  # the test functions' own bookkeeping
    if ON_REDIS_CLUSTER:
        broker = rabbitmq_url()
        require_rabbitmq(broker)
        env["TASKPLANE_REDIS_URL"] = request.getfixturevalue("redis_cluster_url")
        env["TASKPLANE_BROKER_URL"] = broker
        env["TASKPLANE_QUEUE"] = f"taskplane-test-{uuid.uuid4().hex[:8]}"
    settings = Settings(
        queue=env.get("TASKPLANE_QUEUE", DEFAULT_QUEUE),
        redis_url=env["TASKPLANE_REDIS_URL"],
        broker_url=env["TASKPLANE_BROKER_URL"],
        function_modules=["examples.functions", "tests.functions"],
        visibility_timeout_s=20,
        redelivery_sweep_s=1,
        default_timeout=5000,
        database_url=env["TASKPLANE_DATABASE_URL"],
        retry_config={"initial_delay": 50},
        patterns_dir=env["TASKPLANE_PATTERNS_DIR"],
    )
    engine = ExecutionEngine(settings)
    workers = [
        start_worker(env, concurrency=8, name=f"tw{i}", log_dir=LOG_DIR, root=ROOT)
        for i in range(2)
    ]
    try:
        wait_ready(workers, engine.app.control.ping)
        yield Cluster(env, settings, engine, workers, counters)
    finally:
        for worker in workers:
            worker.stop()
        if ON_REDIS_CLUSTER:
            drop_queue(engine)
        engine.close()
        for path in TRACKING_DB.parent.glob(TRACKING_DB.name + "*"):
            path.unlink(missing_ok=True)


def own_broker(cluster: Cluster, offset: int) -> dict[str, str]:
    """Settings (as environment variables) of a broker only a worker started with them uses.

    Another database of the test Redis as broker; on a Redis Cluster run, another queue.
    """
    if ON_REDIS_CLUSTER:
        return {"TASKPLANE_QUEUE": f"{cluster.settings.queue}-{offset}"}
    broker_url = str(cluster.settings.broker_url)
    broker_db = (int(broker_url.rsplit("/", 1)[1]) - offset) % 16
    return {"TASKPLANE_BROKER_URL": redis_server.with_db(broker_url, broker_db)}


def own_settings(cluster: Cluster, env: dict[str, str]) -> Settings:
    """The cluster's settings with the broker of :func:`own_broker`'s *env*."""
    update = {"broker_url": env.get("TASKPLANE_BROKER_URL", cluster.settings.broker_url)}
    update["queue"] = env.get("TASKPLANE_QUEUE", cluster.settings.queue)
    return Settings(**{**cluster.settings.model_dump(), **update})


@pytest.fixture
def engine(cluster: Cluster) -> ExecutionEngine:
    return cluster.engine


@pytest.fixture
def uid() -> str:
    """A fresh id for plan ids and counter keys."""
    return uuid.uuid4().hex[:10]


@pytest.fixture(scope="session")
def rabbit_cluster(cluster: Cluster) -> Iterator[Cluster]:
    """The same cluster with RabbitMQ as its broker: two more workers, another engine.

    Redis stays the result backend and holds plan state, cache, limits and events.
    On a Redis Cluster run the cluster already has RabbitMQ as its broker: it is the same.
    """
    if ON_REDIS_CLUSTER:
        yield cluster
        return
    broker = rabbitmq_url()
    require_rabbitmq(broker)
    queue = f"taskplane-test-{uuid.uuid4().hex[:8]}"  # this RabbitMQ may be shared
    env = {**cluster.env, "TASKPLANE_BROKER_URL": broker, "TASKPLANE_QUEUE": queue}
    settings = cluster.settings.model_copy(update={"broker_url": broker, "queue": queue})
    engine = ExecutionEngine(settings)
    workers = [
        start_worker(env, concurrency=8, name=f"rw{i}", log_dir=LOG_DIR, root=ROOT)
        for i in range(2)
    ]
    try:
        wait_ready(workers, engine.app.control.ping)
        yield Cluster(env, settings, engine, workers, cluster.state_url)
    finally:
        for worker in workers:
            worker.stop()
        drop_queue(engine)
        engine.close()
