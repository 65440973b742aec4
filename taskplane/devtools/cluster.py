"""Start and stop local worker processes (demo, tests, benchmarks).

Each worker is a real ``celery worker`` process, on the gevent pool unless
told otherwise (as ``taskplane worker`` runs it); it gets its settings
through ``TASKPLANE_*`` environment variables. Only processes
started here are stopped here, by PID.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

READY_TIMEOUT_S = 30.0


@dataclass
class WorkerProcess:
    """A worker this module started."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def stop(self, timeout_s: float = 15.0) -> None:
        """Warm shutdown (finish running tasks), then SIGKILL if it lingers."""
        if not self.alive():
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def worker_env(settings_env: Mapping[str, str], *, root: Path | None = None) -> dict[str, str]:
    """The environment of a worker: ours, plus *settings_env*, with *root* importable."""
    env = dict(os.environ)
    env.update(settings_env)
    if root is not None:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
    return env


def start_worker(
    settings_env: Mapping[str, str],
    *,
    concurrency: int = 8,
    name: str | None = None,
    log_dir: Path,
    root: Path | None = None,
    loglevel: str = "WARNING",
    extra_args: tuple[str, ...] = (),
    app_module: str = "taskplane.celery_app",
    pool: str = "gevent",
    wrapper: Sequence[str] = (),
) -> WorkerProcess:
    """Start one ``celery worker`` process of *app_module* on *pool* (gevent or threads).

    *wrapper* is a command the worker runs under, e.g. ``ip netns exec NAME``
    to run it in a network namespace; stopping the worker signals its whole
    process group, the wrapper included.
    """
    name = name or f"w{uuid.uuid4().hex[:6]}"
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    cmd = [
        *wrapper,
        sys.executable,
        "-m",
        "celery",
        "-A",
        app_module,
        "worker",
        "-P",
        pool,
        "-c",
        str(concurrency),
        "-n",
        f"{name}@%h",
        "--without-gossip",
        "--without-mingle",
        "--loglevel",
        loglevel,
        *extra_args,
    ]
    env = worker_env(settings_env, root=root)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    return WorkerProcess(name, proc, log_path, dict(settings_env))


def wait_ready(
    workers: list[WorkerProcess], app_ping: object, timeout_s: float = READY_TIMEOUT_S
) -> None:
    """Wait until every worker answers a Celery ping (``app.control.ping``)."""
    deadline = time.monotonic() + timeout_s
    wanted = {w.name for w in workers}
    seen: set[str] = set()
    while time.monotonic() < deadline:
        for w in workers:
            if not w.alive():
                raise RuntimeError(f"worker {w.name} exited:\n{w.log()[-3000:]}")
        replies = app_ping(timeout=0.5)  # type: ignore[operator]
        for reply in replies or []:
            for key in reply:
                seen.add(key.split("@", 1)[0])
        if wanted <= seen:
            return
    raise RuntimeError(f"workers {sorted(wanted - seen)} not ready after {timeout_s}s")
