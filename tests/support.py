"""Small helpers shared by the integration and reliability tests."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from kombu import Connection

DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"


#: How long :func:`wait_until` waits unless told (s).
WAIT_S = 5.0


def wait_until(
    predicate: Callable[[], Any], *, timeout_s: float = WAIT_S, interval_s: float = 0.02
) -> bool:
    """Poll *predicate* until it is true or *timeout_s* passes; returns its last value.

    Tests wait on what they are about to assert, never for a fixed time::

        assert wait_until(lambda: handle.status()["running"] == 1)
    """
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return bool(value)
        time.sleep(interval_s)


def rabbitmq_url() -> str:
    """RabbitMQ for the broker tests: ``TASKPLANE_TEST_RABBITMQ_URL``, else guest on 5672."""
    return os.environ.get("TASKPLANE_TEST_RABBITMQ_URL", DEFAULT_RABBITMQ_URL)


def require_rabbitmq(url: str) -> None:
    """Fail (in CI) or skip (elsewhere, with the reason) unless RabbitMQ answers at *url*."""
    try:
        with Connection(url, connect_timeout=2) as conn:
            conn.ensure_connection(max_retries=1)
    except Exception as exc:  # kombu raises the transport's own errors
        reason = f"RabbitMQ is not reachable at {url} (TASKPLANE_TEST_RABBITMQ_URL): {exc}"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)


@contextmanager
def monitored(url: str) -> Iterator[list[str]]:
    """The commands Redis at *url* runs while the block runs (``MONITOR``), as text."""
    client = redis.Redis.from_url(url)
    commands: list[str] = []
    stop = threading.Event()

    def watch(monitor: Any) -> None:
        for command in monitor.listen():
            if stop.is_set():
                return
            commands.append(command["command"])

    try:
        with client.monitor() as monitor:
            watcher = threading.Thread(target=watch, args=(monitor,), daemon=True)
            watcher.start()
            try:
                yield commands
            finally:
                stop.set()
                client.ping()  # one more command, so the watcher sees the stop
                watcher.join(5)
    finally:
        client.close()
    assert commands, "MONITOR saw nothing"


def rec(task_id: str, cluster: Any, key: str, **payload: Any) -> dict[str, Any]:
    """A task that counts its calls under *key* in Redis."""
    return {
        "id": task_id,
        "type": "function",
        "target": "tests.record",
        "payload": {"redis_url": cluster.state_url, "key": key, **payload},
    }


def counter(cluster: Any, key: str, what: str = "calls") -> int:
    client = redis.Redis.from_url(cluster.state_url, decode_responses=True)
    try:
        return int(client.get(f"{key}:{what}") or 0)
    finally:
        client.close()


def cli_runner() -> Any:
    """typer's CliRunner with stderr kept apart from stdout, on every click version.

    click 8.2 always keeps them apart and dropped ``mix_stderr``; older clicks
    (the minimum versions' check) mix them unless told not to.
    """
    from typer.testing import CliRunner

    try:
        return CliRunner(mix_stderr=False)  # type: ignore[call-arg]
    except TypeError:
        return CliRunner()
