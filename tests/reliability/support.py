"""Clusters for the reliability suite: worker processes and an engine on a private Redis.

Every scenario gets workers started with exactly the settings it needs (as
``TASKPLANE_*`` variables) and an engine built from the same variables, so
what a worker does and what the test expects cannot drift apart.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taskplane import ExecutionEngine, Settings
from taskplane.config import ENV_PREFIX
from taskplane.devtools.cluster import WorkerProcess, start_worker, wait_ready
from tests.reliability.redisproc import PrivateRedis

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = ROOT / ".run" / "reliability"
LOG_DIR = RUN_DIR / "logs"
FIGURES = RUN_DIR / "figures.json"

#: Threads per worker process in every scenario.
WORKER_THREADS = 8


def cluster_env(redis: PrivateRedis, *, broker_db: int = 0, state_db: int = 1) -> dict[str, str]:
    """Settings every reliability worker shares, as ``TASKPLANE_*`` variables."""
    tag = uuid.uuid4().hex[:8]
    return {
        "TASKPLANE_REDIS_URL": redis.url(state_db),
        "TASKPLANE_BROKER_URL": redis.url(broker_db),
        "TASKPLANE_FUNCTION_MODULES": "examples.functions,tests.functions",
        "TASKPLANE_DATABASE_URL": f"sqlite:///{RUN_DIR / f'tracking-{tag}.db'}",
        "TASKPLANE_RETRY_CONFIG__INITIAL_DELAY": "50",
        "TASKPLANE_DEFAULT_TIMEOUT": "5000",
        "TASKPLANE_VISIBILITY_TIMEOUT_S": "20",
        "TASKPLANE_REDELIVERY_SWEEP_S": "1",
        "TASKPLANE_PATTERNS_DIR": str(ROOT / "tests" / "patterns"),
    }


def settings_from_env(env: Mapping[str, str]) -> Settings:
    """The :class:`Settings` a worker builds from *env* (``__`` nests, as in the environment)."""
    values: dict[str, Any] = {}
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX) :].lower().split("__")
        slot = values
        for part in path[:-1]:
            slot = slot.setdefault(part, {})
        slot[path[-1]] = value
    return Settings(**values)


@dataclass
class Cluster:
    """Workers and an engine sharing one set of settings."""

    redis: PrivateRedis
    env: dict[str, str]
    engine: ExecutionEngine
    workers: list[WorkerProcess] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return self.engine.settings

    @property
    def state_url(self) -> str:
        return self.env["TASKPLANE_REDIS_URL"]

    def start_worker(
        self,
        name: str,
        *,
        loglevel: str = "WARNING",
        concurrency: int = WORKER_THREADS,
        env: Mapping[str, str] | None = None,
        wrapper: Sequence[str] = (),
    ) -> WorkerProcess:
        """One more worker with the cluster's settings (and *env* over them), under *wrapper*."""
        worker = start_worker(
            {**self.env, **(env or {})},
            concurrency=concurrency,
            name=name,
            log_dir=LOG_DIR,
            root=ROOT,
            loglevel=loglevel,
            wrapper=wrapper,
        )
        self.workers.append(worker)
        return worker

    def logs(self, since: dict[str, int] | None = None) -> str:
        """Every worker's log, concatenated; only what followed *since* (see :meth:`log_marks`)."""
        since = since or {}
        return "\n".join(worker.log()[since.get(worker.name, 0) :] for worker in self.workers)

    def log_marks(self) -> dict[str, int]:
        """How long each worker's log is now."""
        return {worker.name: len(worker.log()) for worker in self.workers}


@contextmanager
def running_cluster(
    redis: PrivateRedis,
    *,
    workers: int = 2,
    name: str = "rw",
    loglevel: str = "WARNING",
    broker_db: int = 0,
    state_db: int = 1,
    **overrides: str,
) -> Iterator[Cluster]:
    """Start *workers* worker processes and an engine; stop them all afterwards.

    *overrides* are extra ``TASKPLANE_*`` variables for workers and engine alike.
    """
    env = {**cluster_env(redis, broker_db=broker_db, state_db=state_db), **overrides}
    engine = ExecutionEngine(settings_from_env(env))
    cluster = Cluster(redis, env, engine)
    try:
        for index in range(workers):
            cluster.start_worker(f"{name}{index}-{uuid.uuid4().hex[:4]}", loglevel=loglevel)
        wait_ready(cluster.workers, engine.app.control.ping, timeout_s=60)
        yield cluster
    finally:
        for worker in cluster.workers:
            worker.stop()
        engine.close()
        tracking = env["TASKPLANE_DATABASE_URL"].removeprefix("sqlite:///")
        for path in Path(tracking).parent.glob(Path(tracking).name + "*"):
            path.unlink(missing_ok=True)


@dataclass
class Exit:
    """A worker that exited on its own, as a process supervisor saw it."""

    name: str
    returncode: int | None
    after_s: float


class Supervisor:
    """Restarts workers that exit, as ``restart: unless-stopped`` or systemd would.

    Args:
        cluster: Whose workers to watch; replacements join ``cluster.workers``.
        interval_s: How often to look.
    """

    def __init__(self, cluster: Cluster, *, interval_s: float = 0.5) -> None:
        self.cluster = cluster
        self.interval_s = interval_s
        self.exits: list[Exit] = []
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def _watch(self) -> None:
        while not self._stop.wait(self.interval_s):
            for worker in list(self.cluster.workers):
                if worker.alive() or any(e.name == worker.name for e in self.exits):
                    continue
                after = time.monotonic() - self._started
                self.exits.append(Exit(worker.name, worker.process.returncode, after))
                self.cluster.start_worker(
                    f"{worker.name.split('-')[0]}r{len(self.exits)}-{uuid.uuid4().hex[:4]}"
                )

    def __enter__(self) -> Supervisor:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def rss_kib(pid: int) -> int:
    """Resident set size of process *pid* (``VmRSS`` in /proc), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def record_figures(scenario: str, figures: dict[str, Any]) -> None:
    """Add what a scenario measured to the suite's figures file (read by RELIABILITY.md)."""
    RUN_DIR.mkdir(parents=True, exist_ok=True)
    data = json.loads(FIGURES.read_text()) if FIGURES.exists() else {}
    data[scenario] = figures
    FIGURES.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


OUTCOME_EVENTS = ("task:completed", "task:failed")


class Outcomes:
    """task:completed / task:failed events of one plan, per task id (an ``engine.on`` handler)."""

    def __init__(self, plan_id: str) -> None:
        self.plan_id = plan_id
        self.by_task: dict[str, int] = {}
        self.lock = threading.Lock()

    def __call__(self, event: dict[str, Any]) -> None:
        data = event["data"]
        if data.get("planId") == self.plan_id and event["type"] in OUTCOME_EVENTS:
            with self.lock:
                self.by_task[data["taskId"]] = self.by_task.get(data["taskId"], 0) + 1
