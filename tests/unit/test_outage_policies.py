"""How long workers and clients ride through a Redis outage, and the Celery/kombu shims."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import redis
from redis.exceptions import BusyLoadingError

from taskplane.config import Settings
from taskplane.redisio import REDIS_OUTAGE_S, outage_retry
from taskplane.tasks.app import BROKER_CONNECT_TIMEOUT_S, BROKER_SOCKET_TIMEOUT_S, celery_config
from taskplane.tasks.canvas import publish_retry_policy
from taskplane.tasks.shims import (
    CONSUMER,
    RECONNECT_MAX_S,
    RECONNECT_START_S,
    RECONNECT_STEP_S,
    Consumer,
)

ROOT = Path(__file__).resolve().parents[2]
#: kombu's server-side BRPOP timeout (s): a reply comes within it, so a command may wait longer.
BRPOP_TIMEOUT_S = 1


def test_outage_retry_covers_the_outage_and_retries_connection_errors_only() -> None:
    retry = outage_retry()
    backoff = retry._backoff
    total = sum(backoff.compute(n) for n in range(1, retry._retries + 1))
    assert REDIS_OUTAGE_S <= total < REDIS_OUTAGE_S + 1.5
    assert max(backoff.compute(n) for n in range(1, retry._retries + 1)) <= 1.0
    assert retry._supported_errors == (redis.ConnectionError,)
    assert issubclass(BusyLoadingError, redis.ConnectionError)  # LOADING is retried too


def test_a_successors_publish_retries_through_the_outage() -> None:
    policy = publish_retry_policy()
    pauses, pause = [], policy["interval_start"]
    for _ in range(int(policy["max_retries"])):
        pauses.append(pause)
        pause = min(pause + policy["interval_step"], policy["interval_max"])
    assert REDIS_OUTAGE_S <= sum(pauses) < REDIS_OUTAGE_S + 1.5


def test_a_silent_redis_broker_fails_commands_and_connects_instead_of_hanging() -> None:
    options = celery_config(Settings())["broker_transport_options"]
    assert options["socket_timeout"] == BROKER_SOCKET_TIMEOUT_S > BRPOP_TIMEOUT_S
    assert options["socket_connect_timeout"] == BROKER_CONNECT_TIMEOUT_S
    amqp = celery_config(Settings(broker_url="amqp://guest:guest@127.0.0.1:5672//"))
    assert "socket_timeout" not in amqp["broker_transport_options"]


def test_workers_use_taskplanes_consumer() -> None:
    assert celery_config(Settings())["worker_consumer"] == CONSUMER


def test_the_settings_queue_is_the_celery_default_queue() -> None:
    assert celery_config(Settings())["task_default_queue"] == "taskplane"
    assert celery_config(Settings(queue="blue"))["task_default_queue"] == "blue"


class FakeConnection:
    def __init__(self) -> None:
        self.calls: list[dict[str, Any]] = []

    def ensure_connection(self, *args: Any, **kwargs: Any) -> FakeConnection:
        self.calls.append(kwargs)
        return self


def test_the_consumer_reconnects_after_short_pauses() -> None:
    consumer = object.__new__(Consumer)
    conf = SimpleNamespace(
        broker_connection_retry_on_startup=True,
        broker_connection_retry=True,
        broker_connection_max_retries=100,
    )
    consumer.app = SimpleNamespace(conf=conf)
    consumer.first_connection_attempt = False
    consumer.broker_connection_retry_attempt = 0
    conn = FakeConnection()
    assert consumer.ensure_connected(conn) is conn
    (kwargs,) = conn.calls
    assert kwargs["interval_start"] == RECONNECT_START_S
    assert kwargs["interval_step"] == RECONNECT_STEP_S
    assert kwargs["interval_max"] == RECONNECT_MAX_S
    assert "ensure_connection" not in vars(conn)  # the instance is left as it was


PROBE = textwrap.dedent(
    """
    import sys
    sys.argv = ["celery", "worker", "-P", "gevent"]
    from celery import maybe_patch_concurrency
    maybe_patch_concurrency()  # what `celery -P gevent` does first
    import time
    import kombu.utils.functional as f
    before = f.sleep is time.sleep
    from taskplane.tasks.app import create_app
    from taskplane.config import Settings
    create_app(Settings())
    print(before, f.sleep is time.sleep)
    """
)


def probe(code: str) -> list[str]:
    """The words *code* prints, run in a fresh interpreter."""
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        check=True,
    )
    return done.stdout.split()


def test_kombu_sleep_cooperates() -> None:
    out = probe(PROBE)
    # the second word must hold; when the first does too, upstream fixed it and the shim can go
    assert out[1] == "True", out


SHARED_BACKEND_PROBE = textwrap.dedent(
    """
    import sys
    sys.argv = ["celery", "worker", "-P", "gevent"]
    from celery import maybe_patch_concurrency
    maybe_patch_concurrency()  # what `celery -P gevent` does first
    import gevent
    from celery.signals import worker_init
    from taskplane.config import Settings
    from taskplane.tasks.app import create_app

    class Worker:  # what worker_init sends: the worker, which names its app
        def __init__(self, app):
            self.app = app

    def backends(app):
        return {id(g.get()) for g in [gevent.spawn(lambda: app.backend) for _ in range(3)]}

    client, worker, other = (create_app(Settings()) for _ in range(3))
    worker_init.send(sender=Worker(worker))
    print(len(backends(client)), len(backends(worker)), len(backends(other)))
    """
)


def test_a_workers_greenlets_share_one_backend_and_a_clients_do_not() -> None:
    out = probe(SHARED_BACKEND_PROBE)
    # a client's greenlets each keep their own (Celery's default: when that is one backend,
    # Celery caches it per process itself and the shim can go); a worker's share one, and
    # only the app whose worker started changes
    assert out == ["3", "1", "3"], out


KOMBU_CLIENT_PROBE = textwrap.dedent(
    """
    import redis
    import kombu.transport.redis as kr
    from taskplane.tasks.shims import reuse_kombu_clients

    def channel():
        made = object.__new__(kr.Channel)
        made._pool, made._async_pool = redis.ConnectionPool(), redis.ConnectionPool()
        made.Client = redis.Redis
        return made

    def same(ch):
        return ch._create_client() is ch._create_client()

    a, b = channel(), channel()
    before = same(a)
    installed, again = reuse_kombu_clients(), reuse_kombu_clients()
    first = a._create_client()
    reused = same(a) and first is not b._create_client()
    a._pool = redis.ConnectionPool()  # what a reconnect does
    fresh = a._create_client()
    print(before, installed, again, reused, fresh is not first, fresh.connection_pool is a._pool,
          a._create_client(asynchronous=True) is not fresh)
    """
)


def test_kombus_channels_reuse_one_client_per_pool() -> None:
    out = probe(KOMBU_CLIENT_PROBE)
    # the first word False: kombu builds a client a call (when True, the shim can go)
    assert out == ["False", "True", "False", "True", "True", "True", "True"], out


def test_the_green_loop_reads_the_event_connection_without_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import celery.worker.loops as loops

    from taskplane.tasks.shims import drain_event_connection_at_once

    asked: list[float | None] = []

    class EventConnection:
        def drain_events(self, timeout: float | None = None) -> None:
            asked.append(timeout)

    monkeypatch.setattr(loops, "_quick_drain", loops._quick_drain)  # restored after the test
    assert drain_event_connection_at_once()
    assert not drain_event_connection_at_once()  # installed once
    loops._quick_drain(EventConnection())
    assert asked == [0]
